"""Helpers for the browser tests: Chromium flags, a third-party site, page actions.

In a module of their own (not conftest.py) so test files can import them by a name
that no other test directory uses.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from servers import TOKEN, ServerProcess, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Several tabs train at once in one test; hidden tabs must not be throttled.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

#: Pyodide + NumPy start-up on a busy 2-core machine, with margin.
LOAD_TIMEOUT_MS = 90_000


class HostSite:
    """A third-party site on its own origin (a loopback port) serving fixed pages."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = self.pages.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        # A class attribute, so pages can be set after the site (and its origin) exists.
        Handler.pages = dict(pages)
        self.handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def set_pages(self, pages: dict[str, str]) -> None:
        self.handler.pages = dict(pages)

    def url(self, path: str = "/") -> str:
        return self.origin + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def admin_login(page, server: ServerProcess, token: str = TOKEN) -> None:
    page.goto(server.url + "/admin")
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()


def join(page, url: str, *, wait: bool = True) -> None:
    """Open the volunteer page, consent, and (by default) wait until it is ready for rounds."""
    page.goto(url)
    page.get_by_test_id("join").click()
    if wait:
        wait_state(page, "idle")


def wait_state(page, *states: str, timeout: float = LOAD_TIMEOUT_MS) -> str:
    """Wait until the page's ``data-testid=state`` shows one of ``states`` (or fail on error)."""
    wanted = list(states)
    page.wait_for_function(
        """(wanted) => {
            const el = document.querySelector('[data-testid="state"]');
            return el && (wanted.includes(el.dataset.state) || el.dataset.state === "error");
        }""",
        arg=wanted,
        timeout=timeout,
    )
    state = page.get_by_test_id("state").text_content()
    if state not in wanted:
        raise AssertionError(f"page went to {state!r}: {page.get_by_test_id('error').text_content()}")
    return state
