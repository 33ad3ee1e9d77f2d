"""The embed widget on other sites: an allowed origin trains, a disallowed one is refused."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from browser_helpers import wait_state

pytestmark = pytest.mark.browser


def host_page(server_url: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><title>A blog about digits</title></head>
<body>
  <h1>A blog about digits</h1>
  <p>Readers can help train a model:</p>
  <script src="{server_url}/embed.js" data-task="mnist"></script>
</body></html>"""


def framing_page(server_url: str) -> str:
    # Skips embed.js and frames /embed directly: only the CSP can stop this.
    return f'<!doctype html><title>sneaky</title><iframe src="{server_url}/embed?task=mnist"></iframe>'


def test_widget_on_an_allowed_site_completes_a_round(context, serve, host_site):
    # The server must know the allowed site's origin before it starts, so take its port first.
    site = host_site({})
    server = serve("--embed-origins", site.origin)
    site.set_pages({"/": host_page(server.url)})

    page = context.new_page()
    page.goto(site.url("/"))
    frame_element = page.get_by_test_id("embed-frame")
    expect(frame_element).to_be_visible()
    frame = frame_element.element_handle().content_frame()
    frame.wait_for_url(server.url + "/embed?task=mnist")  # the iframe may still be about:blank
    frame.get_by_test_id("join").click()
    wait_state(frame, "idle")

    code, body = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(frame.get_by_test_id("rounds-done")).to_have_text("1", timeout=60_000)
    # A volunteer's round counts once its update is accepted; the commit follows.
    history = server.wait_for(lambda s: len(s["history"]) == 1, timeout=30, what="the round committed")["history"]
    assert len(history) == 1 and history[0]["participants"] == 1
    # The host page's own script cannot reach into the widget (another origin).
    reach = page.evaluate("() => { try { return document.querySelector('[data-webfl-embed]').shadowRoot.querySelector('iframe').contentWindow.document.title } catch (e) { return e.name } }")
    assert reach == "SecurityError"


def test_widget_on_a_disallowed_site_is_refused(context, serve, host_site):
    allowed, other = host_site({}), host_site({})
    server = serve("--embed-origins", allowed.origin)
    other.set_pages({"/": host_page(server.url), "/frame": framing_page(server.url)})

    page = context.new_page()
    page.goto(other.url("/"))
    refusal = page.get_by_test_id("embed-refused")
    expect(refusal).to_contain_text("is not allowed to embed")
    expect(refusal).to_contain_text(other.origin)
    expect(page.get_by_test_id("embed-frame")).to_have_count(0)

    # Framing /embed without the script: the browser enforces frame-ancestors.
    page.goto(other.url("/frame"))
    page.wait_for_timeout(1500)
    embedded = [f for f in page.frames if f != page.main_frame]
    assert embedded and not embedded[0].url.startswith(server.url)


def test_widget_for_a_task_without_demo_data_asks_for_the_volunteers_file_and_tries_the_model(context, serve, host_site, tmp_path):
    import json

    from webfl.build.paths import DATASETS_DIR
    from webfl.core.stats import feature_stats, scaling_from_stats
    from webfl.core.tasks import BUILT_IN

    rows = (DATASETS_DIR / "breast-cancer.csv").read_text().splitlines()
    bc = BUILT_IN["breast-cancer"]
    task = bc.with_scaling(*scaling_from_stats(feature_stats(bc.parse_csv("\n".join(rows)).x)))
    (tmp_path / "task.json").write_text(json.dumps(task.to_json()))
    mine = tmp_path / "mine.csv"
    mine.write_text("\n".join(rows[:81]) + "\n")
    site = host_site({})
    server = serve("--task-file", str(tmp_path / "task.json"), "--embed-origins", site.origin)
    site.set_pages({"/": f'<!doctype html><title>clinic</title><body><script src="{server.url}/embed.js" data-task="breast-cancer"></script></body>'})

    page = context.new_page()
    page.goto(site.url("/"))
    frame = page.get_by_test_id("embed-frame").element_handle().content_frame()
    frame.wait_for_url(server.url + "/embed?task=breast-cancer")
    expect(frame.get_by_test_id("data-demo")).to_have_count(0)
    expect(frame.locator(".lede")).to_contain_text("examples you choose below")
    frame.get_by_test_id("join").click()  # no file yet: nothing starts
    expect(frame.get_by_test_id("csv-file")).to_have_attribute("aria-invalid", "true")
    expect(frame.get_by_test_id("state")).to_have_text("consent")
    frame.get_by_test_id("csv-file").set_input_files(str(mine))
    frame.get_by_test_id("join").click()
    wait_state(frame, "idle")
    expect(frame.get_by_test_id("data-source")).to_contain_text("mine.csv (80 examples")
    frame.get_by_test_id("predict-file").set_input_files(str(mine))
    expect(frame.get_by_test_id("predict-summary")).to_have_text("80 rows predicted.")
    expect(frame.get_by_test_id("predictions").locator("tbody tr")).to_have_count(80)
