"""A run that ends early reaches the page: "the run has finished", and why."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from browser_helpers import join, wait_state

pytestmark = pytest.mark.browser


def test_a_run_stopped_by_the_operator_mid_training_shows_the_finished_text_within_a_batch(context, serve):
    """The local job (100 epochs of one-example batches) takes minutes; the stop's status frame is read between two batches
    (not after the job), so the page says so within seconds and no update is sent."""
    server = serve()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    join(page, server.url)
    code, body = server.api("POST", "/api/rounds", {"rounds": 4, "clients_per_round": 1, "min_updates": 1, "local_epochs": 100,
                                                   "batch_size": 1, "deadline_s": 600})
    assert code == 202, body
    wait_state(page, "training")
    expect(page.get_by_test_id("round")).to_have_text("round 1 of 4")
    expect(page.get_by_test_id("finished")).to_be_hidden()
    assert server.api("POST", "/api/rounds/stop")[1] == {"stopped": True}
    # Seconds, not the minutes the whole job would take (a batch is a millisecond or so).
    expect(page.locator("body")).to_have_attribute("data-run", "finished", timeout=15_000)
    expect(page.get_by_test_id("finished")).to_be_visible()
    expect(page.get_by_test_id("round")).to_have_text(re.compile(r"^the run has finished \(stopped by the operator, 0 of 4 rounds\)$"))
    # The job stopped part-way and ended without an update: the volunteer is ready again.
    epoch = re.match(r"Epoch (\d+) of 100 ", page.get_by_test_id("train-label").text_content())
    assert epoch and int(epoch[1]) < 100, page.get_by_test_id("train-label").text_content()
    status = server.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=15, what="the stopped volunteer's ready")
    assert status["volunteers"]["training"] == 0 and status["history"] == []
    assert problems == []
