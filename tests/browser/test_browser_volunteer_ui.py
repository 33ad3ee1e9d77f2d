"""What a volunteer sees, in Chromium: the widget on a phone, the run's progress and end, locales, consent."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from browser_helpers import join, wait_state

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


def host_page(server_url: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta name="viewport" content="width=device-width, initial-scale=1"><title>digits</title></head>
<body style="margin: 8px"><h1>A blog about digits</h1>
<script src="{server_url}/embed.js" data-task="mnist" data-height="200"></script></body></html>"""


def in_viewport(box, width: float, height: float) -> bool:
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height


def test_the_widget_grows_to_its_content_so_pause_and_leave_show_on_a_phone(browser, serve, host_site):
    site = host_site({})
    server = serve("--embed-origins", site.origin)
    site.set_pages({"/": host_page(server.url)})
    context = browser.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        page.goto(site.url("/"))
        iframe = page.get_by_test_id("embed-frame")
        frame = iframe.element_handle().content_frame()
        frame.wait_for_url(server.url + "/embed?task=mnist")
        frame.get_by_test_id("join").click()
        wait_state(frame, "idle")
        # The frame followed its content: it is taller than the 200 px it started with,
        # and nothing inside it needs scrolling.
        expect(iframe).not_to_have_attribute("style", re.compile(r"height: 200px"))
        # The content keeps growing after idle (the model arrives, "try the model" shows):
        # each growth is reported, and the frame catches up.
        # Checked as one snapshot of the page, so content growing between two reads cannot
        # pass one check and fail the next: nothing scrolls inside the frame, and Pause and
        # Leave lie within its box on the host page.
        fits = """([frameTop, frameHeight]) => document.documentElement.scrollHeight <= window.innerHeight + 1
            && ["pause", "leave"].every((id) => {
                 const r = document.querySelector(`[data-testid="${id}"]`).getBoundingClientRect();
                 return frameTop + r.bottom <= frameTop + frameHeight + 1 && r.right <= window.innerWidth;
               })"""
        deadline = time.monotonic() + 10
        while True:
            frame_box = iframe.bounding_box()
            if frame.evaluate(fits, [frame_box["y"], frame_box["height"]]):
                break
            assert time.monotonic() < deadline, ("the frame never fitted its content", frame_box)
            time.sleep(0.1)
        for control in ("pause", "leave"):
            box = frame.get_by_test_id(control).bounding_box()  # page coordinates
            assert box["x"] + box["width"] <= PHONE["width"], (control, box)
    finally:
        context.close()


def test_on_a_phone_join_is_above_the_fold_and_the_status_takes_focus(browser, serve):
    server = serve()
    context = browser.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        page.goto(server.url)
        assert in_viewport(page.get_by_test_id("join").bounding_box(), **PHONE)
        page.get_by_test_id("join").click()
        expect(page.get_by_test_id("state")).to_be_focused()
        page.wait_for_function("() => document.querySelector('[data-stage=status]').getBoundingClientRect().top < 100")
    finally:
        context.close()


def test_a_run_shows_its_rounds_and_its_end_without_console_errors(context, serve):
    server = serve()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    join(page, server.url)
    code, body = server.api("POST", "/api/rounds", {"rounds": 2, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(page.locator("body")).to_have_attribute("data-run", "finished", timeout=90_000)
    expect(page.get_by_test_id("finished")).to_be_visible()
    expect(page.get_by_test_id("round")).to_have_text("the run has finished (2 of 2 rounds)")
    history = server.status()["history"]
    expect(page.get_by_test_id("run-accuracy")).to_have_text(f"{100 * history[-1]['accuracy']:.1f} % after round 2")
    expect(page.get_by_test_id("chart")).to_have_attribute("data-points", "2")
    assert problems == []


def test_a_c_locale_does_not_break_the_chart(browser, serve):
    server = serve()
    context = browser.new_context()
    # As WebKit reports it under LANG=C: uPlot's Intl.NumberFormat("C") would throw.
    context.add_init_script("Object.defineProperty(Navigator.prototype, 'language', { get: () => 'C' })")
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        assert page.evaluate("() => { try { new Intl.NumberFormat(navigator.language); return 'ok' } catch (e) { return e.name } }") == "RangeError"
        join(page, server.url)
        expect(page.get_by_test_id("chart")).to_have_attribute("data-points", "0")
        expect(page.locator('[data-part="chart"]')).to_be_visible()
        assert errors == []
    finally:
        context.close()


def test_consent_is_remembered_and_can_be_withdrawn(context, serve):
    server = serve()
    page = context.new_page()
    join(page, server.url)
    page.get_by_test_id("leave").click()
    page.reload()
    expect(page.get_by_test_id("consent-remembered")).to_contain_text("You agreed to take part on")
    page.get_by_test_id("withdraw").click()
    expect(page.get_by_test_id("consent-remembered")).to_have_text("Consent withdrawn; this browser keeps nothing of it.")
    assert page.evaluate("() => localStorage.getItem('webfl.consent')") is None
    page.reload()
    expect(page.get_by_test_id("consent-remembered")).to_be_hidden()


def test_a_tab_that_does_not_train_follows_the_run_from_the_commits_notices(context, serve):
    """A paused tab gets each commit as one notice carrying the newest history entry only:
    its round text and chart still move round by round, and end as the server's history."""
    server = serve()
    trainer, watcher = context.new_page(), context.new_page()
    join(trainer, server.url)
    join(watcher, server.url)
    watcher.get_by_test_id("pause").click()
    wait_state(watcher, "paused")
    server.wait_for(lambda s: s["volunteers"]["ready"] == 1 and s["volunteers"]["paused"] == 1, timeout=30, what="one ready, one paused")
    # What the chart and the round text show, change by change (rounds may be quicker than polling).
    watcher.evaluate("""() => {
        const seen = (window.__seen = { points: [], rounds: [] });
        const chart = document.querySelector('[data-testid="chart"]'), round = document.querySelector('[data-testid="round"]');
        const note = () => {
            if (seen.points.at(-1) !== chart.dataset.points) seen.points.push(chart.dataset.points);
            if (seen.rounds.at(-1) !== round.textContent) seen.rounds.push(round.textContent);
        };
        new MutationObserver(note).observe(document.body, { subtree: true, attributes: true, childList: true, characterData: true });
    }""")
    code, body = server.api("POST", "/api/rounds", {"rounds": 3, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(watcher.locator("body")).to_have_attribute("data-run", "finished", timeout=90_000)
    history = server.status()["history"]
    expect(watcher.get_by_test_id("chart")).to_have_attribute("data-points", "3")
    expect(watcher.get_by_test_id("run-accuracy")).to_have_text(f"{100 * history[-1]['accuracy']:.1f} % after round 3")
    expect(watcher.get_by_test_id("round")).to_have_text("the run has finished (3 of 3 rounds)")
    seen = watcher.evaluate("() => window.__seen")
    # One point a commit, from the notices (the run's end, a full status, would jump to 3).
    assert seen["points"][-3:] == ["1", "2", "3"], seen
    assert "1 of 3 rounds done; waiting for the next" in seen["rounds"] and "2 of 3 rounds done; waiting for the next" in seen["rounds"], seen
