"""A run that ends early reaches the page: "the run has finished", and why."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from browser_helpers import join, wait_state

pytestmark = pytest.mark.browser


def test_a_run_stopped_by_the_operator_mid_round_shows_the_finished_text(context, serve):
    server = serve()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    join(page, server.url)
    # Rounds of long local training, stopped while the first one trains.
    code, body = server.api("POST", "/api/rounds", {"rounds": 4, "clients_per_round": 1, "min_updates": 1, "local_epochs": 20,
                                                   "batch_size": 10, "deadline_s": 300})
    assert code == 202, body
    wait_state(page, "training")
    expect(page.get_by_test_id("round")).to_have_text("round 1 of 4")
    expect(page.get_by_test_id("finished")).to_be_hidden()
    assert server.api("POST", "/api/rounds/stop")[1] == {"stopped": True}
    expect(page.locator("body")).to_have_attribute("data-run", "finished", timeout=90_000)
    expect(page.get_by_test_id("finished")).to_be_visible()
    # The update of the round that trained may have landed before the stop.
    expect(page.get_by_test_id("round")).to_have_text(re.compile(r"^the run has finished \(stopped by the operator, [01] of 4 rounds\)$"))
    assert problems == []
