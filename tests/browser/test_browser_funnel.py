"""The admin page in real Chromium at 390 px: the waiting hint, the open round's funnel
while one update has been rejected, the refused updates, and the committed round's funnel
in its history row. Volunteers are the protocol's own Python clients."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect
from test_server import Client

from browser_helpers import admin_login
from webfl.core.tasks import get_task

pytestmark = pytest.mark.browser

SIZE = get_task("mnist", "softmax").build_model().size


def test_the_admin_page_shows_the_hint_and_the_funnel_of_a_round_with_a_rejected_update(browser, serve):
    server = serve("--model", "softmax")
    context = browser.new_context(viewport={"width": 390, "height": 800})
    try:
        admin = context.new_page()
        admin_login(admin, server)
        honest = Client(server)
        honest.join()
        server.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=30, what="1 ready volunteer")
        config = {"rounds": 1, "clients_per_round": 2, "select_timeout_s": 600, "deadline_s": 60, "max_examples": 500}
        assert server.api("POST", "/api/rounds", config)[0] == 202

        hint = admin.get_by_test_id("waiting-hint")
        expect(hint).to_be_visible()
        expect(hint).to_contain_text("1 of 2 wanted are ready; starting with 1 in")
        expect(admin.get_by_test_id("open-funnel-box")).to_be_hidden()

        nan = Client(server)
        nan.join()
        expect(hint).to_be_hidden()
        funnel = admin.get_by_test_id("open-funnel")
        expect(funnel).to_be_visible()
        expect(admin.get_by_test_id("funnel-selected")).to_have_text("2")

        assert honest.update(honest.recv("task").fields, np.full(SIZE, 1e-3, np.float32), n=2000).type == "accept"
        bad = np.zeros(SIZE, np.float32)
        bad[7] = np.nan
        assert nan.update(nan.recv("task").fields, bad).type == "reject"
        # The round is still open (the rejected volunteer may still send a valid update).
        expect(admin.get_by_test_id("funnel-reported")).to_have_text("2")
        expect(admin.get_by_test_id("funnel-accepted")).to_have_text("1")
        expect(admin.get_by_test_id("funnel-details")).to_contain_text("rejected: NaN or Inf 1")
        expect(admin.get_by_test_id("funnel-details")).to_contain_text("1 capped at 500 examples")
        expect(admin.get_by_test_id("rejections")).to_have_text("NaN or Inf 1")
        # Each bar is a meter named by its step, with the number as text beside it.
        accepted = funnel.get_by_role("meter", name="accepted")
        expect(accepted).to_have_js_property("value", 1)

        for client in (honest, nan):
            client.send("ready", num_examples=100)
        row = admin.get_by_test_id("history-row")
        expect(row).to_have_count(1)
        expect(row).to_contain_text("2 selected → 2 trained → 2 reported → 1 accepted")
        expect(row).to_contain_text("rejected: NaN or Inf 1")
        expect(row).to_contain_text("largest update 100.0 % of the weight")
        expect(admin.get_by_test_id("open-funnel-box")).to_be_hidden()
        expect(admin.get_by_test_id("abandoned-empty")).to_be_visible()
        assert admin.evaluate("() => document.documentElement.scrollWidth") <= 390
    finally:
        context.close()
