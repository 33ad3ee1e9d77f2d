"""Volunteer tabs and the admin page, together, in a real Chromium."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from browser_helpers import admin_login, join, wait_state

pytestmark = pytest.mark.browser


def launch(admin, **settings) -> None:
    """Fill the admin page's launch form and submit it."""
    for name, value in settings.items():
        admin.get_by_test_id(f"cfg-{name}").fill(str(value))
    admin.get_by_test_id("launch").click()


def test_three_tabs_and_the_admin_page_run_three_rounds(context, serve):
    server = serve()
    tabs = [context.new_page() for _ in range(3)]
    for tab in tabs:
        join(tab, server.url, wait=False)
    for tab in tabs:
        wait_state(tab, "idle")

    admin = context.new_page()
    admin_login(admin, server)
    admin.get_by_test_id("connected").filter(has_text="3").wait_for()
    launch(admin, rounds=3, clients_per_round=3, min_updates=3, local_epochs=1, batch_size=32, lr=0.1, deadline_s=60, select_timeout_s=10)

    rows = admin.get_by_test_id("history-row")
    expect(rows).to_have_count(3, timeout=120_000)
    expect(admin.get_by_test_id("chart")).to_have_attribute("data-points", "3")

    history = server.status()["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert all(h["participants"] == 3 for h in history), history
    accuracy = [h["accuracy"] for h in history]
    assert accuracy[0] > 0.5 and accuracy[-1] > accuracy[0], accuracy
    # The table shows what the server committed, newest first.
    assert rows.first.get_attribute("data-round") == "3"
    assert f"{100 * accuracy[-1]:.1f} %" in rows.first.text_content()

    for tab in tabs:
        # Every tab took part in every round and drew the global accuracy.
        expect(tab.get_by_test_id("rounds-done")).to_have_text("3")
        expect(tab.get_by_test_id("chart")).to_have_attribute("data-points", "3")
        expect(tab.get_by_test_id("local-accuracy")).to_have_text(re.compile(r"^\d+\.\d %$"))
        expect(tab.get_by_test_id("state")).to_have_text("idle")


def test_a_tab_closed_mid_round_does_not_stall_it(context, serve):
    server = serve()
    leaver, stayer = context.new_page(), context.new_page()
    for tab in (leaver, stayer):
        join(tab, server.url, wait=False)
    for tab in (leaver, stayer):
        wait_state(tab, "idle")
    server.wait_for(lambda s: s["volunteers"]["ready"] == 2, timeout=30, what="2 ready volunteers")
    # With the WebAssembly kernel an epoch takes a fraction of a second: the leaver trains
    # long and lightly enough to be seen training before it leaves.
    leaver.get_by_test_id("cpu-level").select_option("light")

    deadline_s = 45
    code, body = server.api(
        "POST", "/api/rounds",
        {"rounds": 1, "clients_per_round": 2, "min_updates": 1, "local_epochs": 20, "batch_size": 10, "deadline_s": deadline_s,
         "select_timeout_s": 10},
    )
    assert code == 202, body
    started = time.monotonic()
    wait_state(leaver, "training", timeout=30_000)
    leaver.close()

    status = server.wait_for(lambda s: len(s["history"]) == 1, timeout=deadline_s + 30, what="the round to commit")
    # Committed with the one who stayed as soon as its update was in: the leaver's
    # socket closed, so the server did not wait for the deadline.
    assert status["history"][0]["participants"] == 1
    assert time.monotonic() - started < deadline_s
    expect(stayer.get_by_test_id("rounds-done")).to_have_text("1")


def test_pause_resume_and_leave(context, serve):
    server = serve()
    page = context.new_page()
    join(page, server.url)
    server.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=30, what="a ready volunteer")

    page.get_by_test_id("pause").click()
    wait_state(page, "paused")
    server.wait_for(lambda s: s["volunteers"]["paused"] == 1, timeout=10, what="the volunteer paused")
    assert page.get_by_test_id("pause").text_content() == "Resume"

    page.get_by_test_id("pause").click()
    wait_state(page, "idle")
    server.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=10, what="the volunteer ready again")

    page.get_by_test_id("leave").click()
    wait_state(page, "left")
    server.wait_for(lambda s: s["connected"] == 0, timeout=10, what="the volunteer gone")


def test_a_tab_reconnects_after_the_server_restarts(context, serve, tmp_path):
    from servers import start_server

    server = serve()
    page = context.new_page()
    join(page, server.url)
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    wait_state(page, "reconnecting", timeout=15_000)
    expect(page.get_by_test_id("connection")).to_contain_text("retrying in")

    # Same data dir and port: the model and history survive, the tab finds it again.
    restarted = start_server(server.data_dir, port=port)
    try:
        wait_state(page, "idle", timeout=60_000)
        restarted.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=30, what="the tab back and ready")
        code, body = restarted.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
        assert code == 202, body
        expect(page.get_by_test_id("rounds-done")).to_have_text("1", timeout=60_000)
    finally:
        restarted.stop()


RECORD_STATES = """
window.__states = [];
document.addEventListener("DOMContentLoaded", () => {
  const badge = document.querySelector('[data-testid="state"]');
  new MutationObserver(() => window.__states.push(badge.dataset.state)).observe(badge, { attributes: true });
});
"""


def test_surplus_tabs_honour_the_servers_wait_and_come_back(context, serve):
    server = serve()
    context.add_init_script(RECORD_STATES)
    tabs = [context.new_page() for _ in range(2)]
    for tab in tabs:
        join(tab, server.url, wait=False)
    for tab in tabs:
        wait_state(tab, "idle")
    server.wait_for(lambda s: s["volunteers"]["ready"] == 2, timeout=30, what="2 ready volunteers")

    # One volunteer a round, two ready: the other is told to come back later.
    code, body = server.api("POST", "/api/rounds", {"rounds": 2, "clients_per_round": 1, "local_epochs": 1, "max_wait_s": 2, "deadline_s": 60})
    assert code == 202, body
    server.wait_for(lambda s: len(s["history"]) == 2, timeout=90, what="2 rounds")
    states = [tab.evaluate("() => window.__states") for tab in tabs]
    assert any("waiting" in s for s in states), states
    # Whoever waited came back by itself.
    for tab in tabs:
        wait_state(tab, "idle", timeout=30_000)
    server.wait_for(lambda s: s["connected"] == 2, timeout=30, what="both tabs connected again")
