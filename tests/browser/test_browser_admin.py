"""The admin page in real Chromium: the launch form built from /api/run-settings (its
defaults are the API's), presets, Advanced, keyboard and 390 px, runs with their end
status, the run column and run markers, the download links, a SecAgg round's stage."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect
from test_operator import seed_history
from test_server import Client

from browser_helpers import admin_login
from webfl.core.tasks import get_task
from webfl.server.engine import RunConfig
from webfl.server.privacy import Accountant, DPSettings
from webfl.server.store import RoundRecord, Store

pytestmark = pytest.mark.browser

FORM_VALUES = """() => Object.fromEntries([...document.querySelector('[data-testid="launch-form"]').elements]
    .filter((e) => e.name).map((e) => [e.name, e.value]))"""


def _typed(values: dict[str, str], settings: list[dict]) -> dict:
    """The form's strings as the API types them (what the page sends)."""
    kinds = {s["name"]: s["type"] for s in settings}

    def typed(kind: str, v: str) -> object:
        if kind == "json":
            return json.loads(v) if v.strip() else None
        return v if kind == "string" else (int(v) if kind == "integer" else float(v))

    return {k: typed(kinds[k], v) for k, v in values.items()}


def test_the_launch_form_has_every_setting_with_the_api_s_defaults_and_its_presets_are_valid(context, serve):
    server = serve("--model", "softmax")
    code, body = server.api("GET", "/api/run-settings")
    assert code == 200
    settings = body["settings"]
    admin = context.new_page()
    admin_login(admin, server)
    expect(admin.get_by_test_id("launch")).to_be_enabled()

    # Every RunConfig field is in the form, with the API's default: the form sends the API's default run.
    values = admin.evaluate(FORM_VALUES)
    assert set(values) == {s["name"] for s in settings}
    assert RunConfig.from_json(_typed(values, settings)) == RunConfig()
    assert values["local_epochs"] == "2"
    # Every input has a label; the rarely used ones are under a closed Advanced section.
    assert admin.evaluate("""() => [...document.querySelector('[data-testid="launch-form"]').elements]
        .filter((e) => e.name).every((e) => e.labels.length === 1 && e.labels[0].textContent.trim().length > 0)""")
    advanced = admin.get_by_test_id("advanced")
    assert advanced.get_attribute("open") is None
    expect(admin.get_by_test_id("cfg-buffer_size")).to_be_hidden()

    presets = admin.get_by_test_id("presets").get_by_role("button")
    names = presets.all_text_contents()
    assert names == ["Quick demo", "Robust", "Low bandwidth", "Async"]
    for i in range(len(names)):
        presets.nth(i).click()
        chosen = admin.evaluate(FORM_VALUES)
        # Each preset is a run the API accepts, and changes something.
        config = RunConfig.from_json(_typed(chosen, settings))
        assert config != RunConfig(), names[i]
        expect(admin.get_by_test_id("launch-result")).to_contain_text(names[i])

    # Keyboard: a preset by Enter, then Advanced opened from its summary by Enter.
    admin.get_by_test_id("reset-defaults").click()
    admin.get_by_role("button", name="Async").focus()
    admin.keyboard.press("Enter")
    chosen = admin.evaluate(FORM_VALUES)
    assert (chosen["mode"], chosen["buffer_size"], chosen["local_epochs"]) == ("fedbuff", "5", "2")  # others stay default
    assert advanced.get_attribute("open") is not None  # the preset set Advanced settings: they are shown
    admin.get_by_test_id("reset-defaults").click()
    assert admin.evaluate(FORM_VALUES) == values
    admin.evaluate("""() => { document.querySelector('[data-testid="advanced"]').open = false; }""")
    admin.locator("summary").focus()
    admin.keyboard.press("Enter")
    expect(admin.get_by_test_id("cfg-buffer_size")).to_be_visible()

    # An out-of-bounds value is refused by the form before it reaches the API.
    admin.get_by_test_id("cfg-local_epochs").fill("1000")
    admin.get_by_test_id("launch").click()
    assert admin.evaluate("() => document.querySelector('[name=local_epochs]').validity.rangeOverflow")
    assert server.status()["run"] is None

    # Launched with "Quick demo" and no volunteer: the API got the preset over the defaults.
    admin.get_by_role("button", name="Quick demo").click()
    admin.get_by_test_id("launch").click()
    expect(admin.get_by_test_id("launch-result")).to_contain_text("Run 1 started")
    run = server.status()["run"]["config"]
    assert (run["rounds"], run["clients_per_round"], run["local_epochs"], run["batch_size"]) == (3, 3, 1, 32)
    expect(admin.get_by_test_id("stop")).to_be_enabled()
    admin.get_by_test_id("stop").click()
    # Stopped, not "finished": the store's end status is shown in the live view and the runs table.
    expect(admin.get_by_test_id("run-status")).to_contain_text("stopped by the operator")
    row = admin.get_by_test_id("run-row").first
    expect(row).to_have_attribute("data-status", "stopped")
    expect(row).to_contain_text("0 of 3")


def test_runs_rounds_with_their_run_markers_and_downloads_at_390_px(browser, serve, tmp_path):
    seed_history(tmp_path / "data0", "softmax")  # the data dir serve() gives its first server
    server = serve("--model", "softmax")
    context = browser.new_context(viewport={"width": 390, "height": 800}, accept_downloads=True)
    try:
        admin = context.new_page()
        admin_login(admin, server)
        rows = admin.get_by_test_id("history-row")
        expect(rows).to_have_count(3)
        assert [r.get_attribute("data-run") for r in rows.all()] == ["2", "1", "1"]  # newest first
        expect(rows.first.locator("td").nth(1)).to_have_text("2")
        runs = admin.get_by_test_id("run-row")
        expect(runs).to_have_count(2)
        expect(runs.nth(0)).to_have_attribute("data-status", "completed")
        expect(runs.nth(1)).to_have_attribute("data-status", "stopped")
        expect(runs.nth(1)).to_contain_text("stopped by the operator")
        expect(runs.nth(1)).to_contain_text("2 of 5")
        expect(admin.get_by_test_id("run-status")).to_contain_text("completed")
        chart = admin.get_by_test_id("chart")
        expect(chart).to_have_attribute("data-points", "3")
        expect(chart).to_have_attribute("data-markers", "run 1,run 2")
        expect(admin.get_by_test_id("privacy-panel")).to_be_hidden()  # no dp run: no privacy chart

        # Nothing wider than the phone's screen, apart from tables, which scroll in their box.
        assert admin.evaluate("() => document.documentElement.scrollWidth") <= 390

        with admin.expect_download() as info:
            admin.get_by_test_id("download-history-csv").click()
        lines = info.value.path().read_text().splitlines()
        assert lines[0].startswith("round,run_id,") and len(lines) == 4
        with admin.expect_download() as info:
            admin.get_by_test_id("download-onnx").click()
        assert info.value.suggested_filename == "webfl-mnist-softmax-v3.onnx"
        assert info.value.path().stat().st_size > 784 * 10 * 4
    finally:
        context.close()


def test_a_dp_run_shows_epsilon_clip_and_clipped_by_round_and_its_guarantee(context, serve, tmp_path):
    # A finished dp run of 2 rounds in the store, with its accountant's state as a commit leaves it.
    task = get_task("mnist", "softmax")
    whole = Store(tmp_path / "data0" / "webfl.sqlite3")
    store = whole.scoped(task.name, task.model)
    config = RunConfig.from_json({"rounds": 2, "clients_per_round": 4, "dp": {"noise_multiplier": 2, "clip": 0.5}})
    run_id = store.start_run(config.to_dict())
    accountant = Accountant()
    for r in (1, 2):
        accountant.charge(config.dp.mechanism)
        # Round 1 as a secure-aggregation round records it: the fraction clipped is unknown.
        privacy = {"epsilon": accountant.epsilon(1e-5), "clip": 0.5, "clipped_fraction": 0.25 * r if r == 2 else None}
        record = RoundRecord(r, run_id, r, 0.5, 1.0, 4, 10, 10, 1.0, time.time(), eval_source="server", privacy=privacy)
        store.commit_round(record, task.build_model().init(0), {"privacy": accountant.state()})
    store.end_run(run_id, "completed")
    whole.close()
    task_total = accountant.epsilon(1e-5)

    server = serve("--model", "softmax")
    admin = context.new_page()
    admin_login(admin, server)
    rows = admin.get_by_test_id("history-row")
    expect(rows).to_have_count(2)
    newest = rows.first.locator("td")
    expect(newest.nth(9)).to_have_text(f"{task_total:.3f}")
    expect(newest.nth(10)).to_have_text("0.5000")
    expect(newest.nth(11)).to_have_text("50.0 %")
    expect(rows.nth(1).locator("td").nth(11)).to_have_text("not known under secure aggregation")
    expect(admin.get_by_test_id("privacy")).to_have_text("—")  # no run in this process yet
    expect(admin.get_by_test_id("privacy-panel")).to_be_visible()
    expect(admin.get_by_test_id("privacy-chart")).to_have_attribute("data-points", "2")

    admin.locator("summary").click()
    dp = admin.get_by_test_id("cfg-dp")
    dp.fill('{"noise_multiplier": 2, "clip": 0}')  # the API's reason comes back
    admin.get_by_test_id("launch").click()
    expect(admin.get_by_test_id("launch-result")).to_contain_text("dp.clip")
    dp.fill("{not json")  # refused by the form itself
    admin.get_by_test_id("launch").click()
    assert admin.evaluate("() => document.querySelector('[name=dp]').validity.customError")
    dp.fill('{"noise_multiplier": 2, "clip": 0.5, "max_epsilon": 50}')
    admin.get_by_test_id("launch").click()
    expect(admin.get_by_test_id("launch-result")).to_contain_text("started")
    assert server.status()["run"]["config"]["dp"]["max_epsilon"] == 50
    shown = admin.get_by_test_id("privacy")
    expect(shown).to_contain_text("ε = 0.000 of at most 50 at δ = 0.00001 after 0 round(s)")
    expect(shown).to_contain_text(f"task total ε = {task_total:.3f}")
    admin.get_by_test_id("stop").click()


def test_the_open_round_panel_shows_a_secagg_rounds_stage_survivors_and_deadline_at_390_px(browser, serve):
    """Five hand-driven volunteers never advertise keys, so the round stays in its first
    stage until its 30 s deadline: the page shows that stage in words, then hides the row."""
    server = serve()
    clients = [Client(server) for _ in range(5)]
    for c in clients:
        c.join()
    context = browser.new_context(viewport={"width": 390, "height": 800})
    try:
        admin = context.new_page()
        admin_login(admin, server)
        expect(admin.get_by_test_id("secagg-row")).to_be_hidden()
        body = {"rounds": 1, "clients_per_round": 5, "min_updates": 3, "deadline_s": 60, "secagg": {"clip": 1.0, "stage_s": 30}}
        code, answer = server.api("POST", "/api/rounds", body)
        assert code == 202, answer
        stage = admin.get_by_test_id("secagg-stage")
        expect(stage).to_have_text(re.compile(
            r"^stage advertise \(volunteers advertise their public keys\): 5 of 5 volunteers still in, stage ends in (\d|[12]\d)(\.\d)? s$"),
            timeout=20_000)
        expect(admin.get_by_test_id("secagg-row")).to_be_visible()
        assert admin.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert server.api("POST", "/api/rounds/stop")[1] == {"stopped": True}
        expect(admin.get_by_test_id("secagg-row")).to_be_hidden(timeout=10_000)
    finally:
        context.close()
        for c in clients:
            c.ws.close()
