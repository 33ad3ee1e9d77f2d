"""The model on the volunteer's device, in Chromium: "try the model" on an unlabelled CSV
(checked against the same model run natively), personalisation's two accuracies,
predictions after the server is gone (in the open tab, and in a tab opened offline from
the kept model), and the drawing pad of a 28x28 task."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
from playwright.sync_api import expect

from browser_helpers import wait_state
from servers import TOKEN
from webfl.build.paths import DATASETS_DIR
from webfl.core.evaluation import holdout_split
from webfl.core.predict import personalise, predict
from webfl.core.stats import feature_stats, scaling_from_stats
from webfl.core.tasks import BUILT_IN, Task

pytestmark = pytest.mark.browser


def global_params(server, task: str) -> np.ndarray:
    req = urllib.request.Request(f"{server.url}/api/tasks/{task}/model", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        with np.load(io.BytesIO(resp.read()), allow_pickle=False) as f:
            return f["params"]


def percent(p: float) -> str:
    return f"{100 * p:.1f} %"


def assert_table(table, native, classes) -> None:
    """The page's table shows the native model's classes and probabilities (shown to 0.1 %)."""
    shown = [r.locator("th, td").all_text_contents() for r in table.locator("tbody tr").all()]
    assert len(shown) == native.probabilities.shape[0]
    for i, cells in enumerate(shown):
        k = int(native.predicted[i])
        assert cells[:2] == [str(i + 1), classes[k]]
        figures = [float(c.removesuffix(" %")) for c in cells[2:]]
        # Pyodide's float32 and a native BLAS may differ in the last bits: a rounding apart at most.
        np.testing.assert_allclose(figures, 100 * native.probabilities[i, [k, *range(len(classes))]], atol=0.051)


def test_a_tab_predicts_personalises_and_keeps_predicting_without_the_server(context, serve, tmp_path):
    rows = (DATASETS_DIR / "breast-cancer.csv").read_text().splitlines()
    bc = BUILT_IN["breast-cancer"]
    pooled = bc.parse_csv("\n".join(rows))
    mean, std = scaling_from_stats(feature_stats(pooled.x))
    task = bc.with_scaling(mean, std)  # no statistics step: the tab gets a usable model at once
    (tmp_path / "task.json").write_text(json.dumps(task.to_json()))
    server = serve("--task-file", str(tmp_path / "task.json"))
    mine = tmp_path / "mine.csv"
    mine.write_text("\n".join(rows[:151]) + "\n")  # the header and 150 labelled rows to train on
    header = rows[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "diagnosis"][::-1]  # no label, columns reversed
    unlabelled = [",".join(line.split(",")[i] for i in keep) for line in [rows[0], *rows[300:312]]]
    ask = tmp_path / "ask.csv"
    ask.write_text("\n".join(unlabelled) + "\n")

    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server.url}/t/breast-cancer")
    # Once the service worker controls the tab, a reload puts the page and its scripts in its cache.
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    page.reload()
    page.get_by_test_id("csv-file").set_input_files(str(mine))
    page.get_by_test_id("join").click()
    wait_state(page, "idle")
    expect(page.get_by_test_id("predict-model")).to_contain_text("current global model (version 0)")

    page.get_by_test_id("predict-file").set_input_files(str(ask))
    expect(page.get_by_test_id("predict-summary")).to_have_text("12 rows predicted.")
    params = global_params(server, "breast-cancer")
    native = predict(task.build_model(), params, task.parse_unlabelled_csv("\n".join(unlabelled)))
    table = page.get_by_test_id("predictions")
    expect(table.locator("tbody tr")).to_have_count(12)
    head = table.locator("thead th").all_text_contents()
    assert head == ["Row", "Predicted", "Probability", "malignant", "benign"]
    assert_table(table, native, task.classes)

    bad = tmp_path / "bad.csv"
    bad.write_text(unlabelled[0] + "\n" + unlabelled[1].replace(unlabelled[1].split(",")[2], "abc", 1) + "\n")
    page.get_by_test_id("predict-file").set_input_files(str(bad))
    expect(page.get_by_test_id("predict-problem")).to_contain_text(f"line 2, column '{header[keep[2]]}'")
    expect(page.get_by_test_id("state")).to_have_text("idle")  # a bad input changes nothing else

    # Personalise: the same fine-tune natively, on the same split of the same rows.
    page.get_by_test_id("personalise").click()
    data = task.parse_csv("\n".join(rows[:151]))
    train, holdout = holdout_split(len(data), task.holdout, 0)
    mine_native = personalise(task, params, 0, (data.x[train], data.y[train]), (data.x[holdout], data.y[holdout]), seed=0)
    expect(page.get_by_test_id("personal-accuracy")).to_have_text(f"{percent(mine_native.personal_sums.accuracy)} on your 30 kept-aside examples")
    expect(page.get_by_test_id("global-accuracy")).to_contain_text(percent(mine_native.global_sums.accuracy))
    page.get_by_test_id("predict-which").select_option("personal")
    page.get_by_test_id("predict-file").set_input_files(str(ask))
    expect(page.get_by_test_id("predict-summary")).to_have_text("12 rows predicted.")
    assert_table(table, predict(task.build_model(), mine_native.params, task.parse_unlabelled_csv(ask.read_text())), task.classes)

    # The last model is kept on the device, and the tab predicts with no server at all.
    kept = page.evaluate(
        """(key) => new Promise((resolve, reject) => {
            const open = indexedDB.open("webfl");
            open.onerror = () => reject(open.error);
            open.onsuccess = () => {
                const get = open.result.transaction("models").objectStore("models").get(key);
                get.onsuccess = () => resolve(get.result ? JSON.parse(get.result.meta) : null);
            };
        })""",
        f"breast-cancer/{task.model}",
    )
    assert kept is not None and kept["version"] == 0 and kept["definition"]["name"] == "breast-cancer"
    server.stop()
    expect(page.get_by_test_id("state")).not_to_have_text("idle", timeout=15_000)
    page.get_by_test_id("predict-which").select_option("global")
    page.get_by_test_id("predict-file").set_input_files(str(mine))  # a label column is ignored
    expect(page.get_by_test_id("predict-summary")).to_have_text("150 rows predicted.")
    assert not errors, errors

    # A tab opened with the server gone: the page and runtime from the service worker's
    # cache, the configuration and the last model from IndexedDB.
    offline = context.new_page()
    offline.goto(f"{server.url}/t/breast-cancer")
    offline.get_by_test_id("csv-file").set_input_files(str(mine))
    offline.get_by_test_id("join").click()
    expect(offline.get_by_test_id("predict-model")).to_contain_text("kept on this device (version 0)", timeout=60_000)
    offline.get_by_test_id("predict-file").set_input_files(str(ask))
    expect(offline.get_by_test_id("predict-summary")).to_have_text("12 rows predicted.")
    assert_table(offline.get_by_test_id("predictions"), native, task.classes)
    expect(offline.get_by_test_id("state")).to_have_text("reconnecting")


def test_the_drawing_pad_of_a_28x28_task_predicts(context, serve):
    server = serve()  # MNIST with its demo shards
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server.url)
    page.get_by_test_id("join").click()
    wait_state(page, "idle")
    pad = page.get_by_test_id("pad")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    assert box["width"] <= 390
    page.get_by_test_id("pad-predict").click()
    expect(page.get_by_test_id("predict-problem")).to_have_text("Draw something on the pad first.")
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.5 * w, y + 0.2 * h)
    page.mouse.down()
    for t in np.linspace(0, 1, 12):
        page.mouse.move(x + 0.5 * w, y + (0.2 + 0.6 * t) * h)
    page.mouse.up()
    page.get_by_test_id("pad-predict").focus()
    page.keyboard.press("Enter")
    table = page.get_by_test_id("predictions")
    expect(table.locator("tbody tr")).to_have_count(1)
    cells = table.locator("tbody tr th, tbody tr td").all_text_contents()
    assert cells[0] == "drawing.png" and cells[1] in [str(d) for d in range(10)]
    probabilities = [float(c.removesuffix(" %")) for c in cells[3:]]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 100) < 1
    assert cells[2] == f"{max(probabilities):.1f} %" and probabilities[int(cells[1])] == max(probabilities)
    page.get_by_test_id("pad-clear").focus()
    page.keyboard.press("Enter")
    page.get_by_test_id("pad-predict").click()
    expect(page.get_by_test_id("predict-problem")).to_have_text("Draw something on the pad first.")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    assert not errors, errors
