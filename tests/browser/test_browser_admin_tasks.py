"""The admin page's tasks in real Chromium: the task switcher drives every panel and the URL
keeps the choice, a round's per-class accuracy, editing a task and the server's refusal
shown by the form, a new task from the form and from a JSON file."""

from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import expect

from browser_helpers import admin_login
from webfl.core.tasks import Task
from webfl.server.engine import RunConfig
from webfl.server.store import RoundRecord, Store

pytestmark = pytest.mark.browser

HEART = {
    "name": "heart", "title": "Heart disease", "kind": "tabular", "features": ["age", "chol"],
    "label": "target", "classes": ["healthy", "sick", "unsure"], "model": {"type": "mlp", "hidden": []},
    "scaling": {"mean": [50, 200], "std": [10, 40]},
}


def _seed(data_dir) -> None:
    """A stored task with one committed round, federated-evaluated with per-class accuracy."""
    task = Task.from_json(HEART)
    whole = Store(data_dir / "webfl.sqlite3")
    whole.save_task(task.name, task.to_json())
    store = whole.scoped(task.name, task.model)
    run_id = store.start_run(RunConfig.from_json({"rounds": 1}).to_dict())
    record = RoundRecord(1, run_id, 1, 0.75, 0.6, 3, 100, 100, 1.0, time.time(), eval_source="federated",
                         eval_examples=40, eval_volunteers=2, class_accuracy=[0.9, 0.5, None])
    store.commit_round(record, task.build_model().init(0))
    store.end_run(run_id, "completed")
    whole.close()


def test_the_switcher_the_per_class_accuracy_and_the_task_forms(context, serve, tmp_path):
    _seed(tmp_path / "data0")  # the data dir serve() gives its first server
    server = serve("--model", "softmax")
    admin = context.new_page()
    admin_login(admin, server)
    switcher = admin.get_by_role("combobox", name="Task", exact=True)
    expect(switcher).to_have_value("mnist")  # the default task first
    listed = server.api("GET", "/api/tasks")[1]["tasks"]
    assert len(listed) == 2
    expect(switcher.locator("option")).to_have_text([f"{t['title']} ({t['name']})" for t in listed])
    expect(admin.get_by_test_id("history-empty")).to_be_visible()  # MNIST has no rounds here

    # Choosing heart (by keyboard: the switcher is a labelled native select) moves every
    # panel to it, and the URL keeps it across a reload.
    order = [t["name"] for t in listed]
    switcher.focus()
    admin.keyboard.press("ArrowUp" if order.index("heart") < order.index("mnist") else "ArrowDown")
    expect(switcher).to_have_value("heart")
    expect(admin.get_by_test_id("history-row")).to_have_count(1)
    assert admin.url.endswith("#task=heart")
    expect(admin.get_by_test_id("download-model")).to_have_attribute("href", "/api/tasks/heart/model?format=npz")
    expect(admin.get_by_test_id("run-row")).to_have_count(1)
    rows = admin.get_by_test_id("class-row")
    expect(rows).to_have_count(3)
    assert rows.all_inner_texts() == ["healthy\t90.0 %\t", "sick\t50.0 %\t", "unsure\tno examples\t"]
    expect(admin.get_by_test_id("class-accuracy-about")).to_contain_text("Round 1: 75.0 % overall, federated over 40")
    admin.reload()
    expect(admin.get_by_role("combobox", name="Task", exact=True)).to_have_value("heart")
    expect(admin.get_by_test_id("class-row")).to_have_count(3)
    expect(admin.get_by_test_id("task-facts")).to_contain_text("2 feature column(s)")

    # Edit: what the model does not depend on changes; the server's refusal is shown by the form.
    admin.get_by_test_id("edit-task").click()
    expect(admin.get_by_test_id("tf-name")).to_have_value("heart")
    expect(admin.get_by_test_id("tf-classes")).to_have_value("healthy\nsick\nunsure")
    admin.get_by_test_id("tf-title").fill("Heart disease, edited")
    admin.get_by_test_id("tf-epochs").fill("4")
    admin.get_by_test_id("task-save").click()
    expect(admin.get_by_test_id("task-result")).to_have_text("Task heart saved.")
    expect(admin.get_by_test_id("task-summary")).to_contain_text("Heart disease, edited")
    definition = server.api("GET", "/api/tasks/heart")[1]
    assert definition["title"] == "Heart disease, edited" and definition["training"]["epochs"] == 4
    assert definition["scaling"] == HEART["scaling"]  # kept: the same columns
    expect(admin.get_by_test_id("cfg-local_epochs")).to_have_value("4")  # the launch form uses the task's defaults
    admin.get_by_test_id("edit-task").click()
    admin.get_by_test_id("tf-features").fill("age\nchol\nbp")
    admin.get_by_test_id("task-save").click()
    error = admin.get_by_test_id("task-error")
    expect(error).to_contain_text("1 committed round(s)")
    expect(admin.get_by_test_id("task-form")).to_be_visible()  # kept open to fix or cancel
    assert server.api("GET", "/api/tasks/heart")[1]["features"] == ["age", "chol"]
    admin.get_by_test_id("task-cancel").click()

    # A new image task from the form, by keyboard from the first field.
    admin.get_by_test_id("new-task").click()
    expect(admin.get_by_test_id("tf-name")).to_be_focused()
    admin.keyboard.type("shapes")
    admin.get_by_test_id("tf-title").fill("Shapes")
    admin.get_by_test_id("tf-kind").select_option("image")
    expect(admin.get_by_test_id("tf-features")).to_be_hidden()
    admin.get_by_test_id("tf-width").fill("16")
    admin.get_by_test_id("tf-height").fill("16")
    admin.get_by_test_id("tf-classes").fill("circle\nsquare")
    admin.get_by_test_id("tf-model").select_option("cnn")
    admin.get_by_test_id("tf-conv").fill("4, 8")
    admin.get_by_test_id("tf-dense").fill("")
    admin.get_by_test_id("task-save").click()
    expect(admin.get_by_test_id("task-result")).to_have_text("Task shapes created.")
    expect(admin.get_by_role("combobox", name="Task", exact=True)).to_have_value("shapes")
    assert admin.url.endswith("#task=shapes")
    shapes = server.api("GET", "/api/tasks/shapes")[1]
    assert (shapes["kind"], shapes["width"], shapes["model"]) == ("image", 16, {"type": "cnn", "conv": [4, 8], "kernel": 3, "dense": []})
    expect(admin.get_by_test_id("history-empty")).to_be_visible()

    # The same name again: the server's 409 reason next to the form.
    admin.get_by_test_id("new-task").click()
    admin.get_by_test_id("tf-name").fill("shapes")
    admin.get_by_test_id("tf-title").fill("Again")
    admin.get_by_test_id("tf-classes").fill("a\nb")
    admin.get_by_test_id("tf-features").fill("x")
    admin.get_by_test_id("tf-label").fill("y")
    admin.get_by_test_id("task-save").click()
    expect(error).to_contain_text("Not created: a task named 'shapes' exists already")
    admin.get_by_test_id("task-cancel").click()

    # A JSON file of a list: the good entry is created, the bad one named with the reason.
    files = [{**HEART, "name": "lungs", "title": "Lungs"}, {**HEART, "name": "bad", "kind": "sound"}]
    admin.get_by_test_id("task-file").set_input_files(
        files=[{"name": "tasks.json", "mimeType": "application/json", "buffer": json.dumps(files).encode()}]
    )
    expect(error).to_contain_text("tasks.json [1]: not created: kind: 'sound'")
    expect(admin.get_by_role("combobox", name="Task", exact=True)).to_have_value("lungs")
    assert sorted(t["name"] for t in server.api("GET", "/api/tasks")[1]["tasks"]) == ["heart", "lungs", "mnist", "shapes"]
