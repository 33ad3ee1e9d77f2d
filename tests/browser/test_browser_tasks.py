"""A tab at /t/breast-cancer: the task's page picks a CSV of the task's columns, trains a
round, and the round gets a federated evaluation from the volunteers' holdouts."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from browser_helpers import wait_state
from webfl.build.paths import DATASETS_DIR
from webfl.core.tasks import BUILT_IN

pytestmark = pytest.mark.browser


def test_a_tab_trains_a_tabular_task_and_its_round_is_evaluated_on_the_devices(context, serve, tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(BUILT_IN["breast-cancer"].to_json()))
    server = serve("--task", "mnist", "--task-file", str(tasks))
    rows = (DATASETS_DIR / "breast-cancer.csv").read_text().splitlines()
    mine = tmp_path / "my-patients.csv"
    mine.write_text("\n".join(rows[:201]) + "\n")  # the header and 200 rows

    page = context.new_page()
    page.goto(server.url)
    expect(page.get_by_test_id("task-list").locator("a")).to_have_count(2)
    page.get_by_test_id("task-list").get_by_role("link", name="Breast cancer diagnosis").click()
    page.wait_for_url("**/t/breast-cancer")
    expect(page.get_by_test_id("csv-columns")).to_contain_text("mean radius")
    page.get_by_test_id("csv-file").set_input_files(str(mine))
    page.get_by_test_id("join").click()
    wait_state(page, "idle")
    expect(page.get_by_test_id("data-source")).to_contain_text("my-patients.csv")

    def status() -> dict:
        code, body = server.api("GET", "/api/tasks/breast-cancer/status")
        assert code == 200, body
        return body

    for _ in range(300):
        if status()["volunteers"]["ready"] == 1:
            break
        page.wait_for_timeout(100)
    assert server.status()["connected"] == 0  # MNIST's own count: the tab trains breast cancer
    # Two rounds: the tab trains round 1 and, idle once its update is in, evaluates model 1.
    code, body = server.api("POST", "/api/tasks/breast-cancer/rounds", {"rounds": 1, "clients_per_round": 1, "deadline_s": 60})
    assert code == 202, body
    for _ in range(600):
        history = status()["history"]
        if history and history[0]["eval_volunteers"]:
            break
        page.wait_for_timeout(100)
    (entry,) = history
    assert entry["participants"] == 1 and entry["eval_source"] == "federated"
    assert entry["eval_examples"] == 40 and 0 <= entry["accuracy"] <= 1  # 20% of 200 rows, never trained on
