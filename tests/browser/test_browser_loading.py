"""The loading bar counts bytes per stage, as the server announced them."""

from __future__ import annotations

import json
import urllib.request

import pytest
from playwright.sync_api import expect

from browser_helpers import wait_state

pytestmark = pytest.mark.browser


def test_the_loading_bar_counts_each_stages_bytes_and_a_second_visit_says_how_long_it_took(context, serve):
    server = serve()
    announced = json.loads(urllib.request.urlopen(server.url + "/api/config").read())["downloads"]
    totals = {stage: sum(files.values()) for stage, files in announced.items() if files}  # no kernel without clang
    page = context.new_page()
    page.goto(server.url)
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("load-note")).to_contain_text("First visit: about 9")
    expect(page.get_by_test_id("load-note")).to_contain_text("later visits are faster")
    wait_state(page, "idle")
    stages = page.get_by_test_id("load-stages").locator("li")
    expect(stages).to_have_count(len(totals))
    got = {li.get_attribute("data-stage"): (int(li.get_attribute("data-done")), int(li.get_attribute("data-total"))) for li in stages.all()}
    assert got == {stage: (total, total) for stage, total in totals.items()}
    bar = page.get_by_test_id("load-progress")
    assert int(bar.get_attribute("data-done")) == int(bar.get_attribute("data-total")) == sum(totals.values()) > 5_000_000
    expect(page.get_by_test_id("load-note")).to_contain_text(f"of {sum(totals.values()) / 1e6:.2f} MB")
    page.close()

    again = context.new_page()
    again.goto(server.url)
    again.get_by_test_id("join").click()
    expect(again.get_by_test_id("load-note")).to_contain_text("Last time this took")
    wait_state(again, "idle")
