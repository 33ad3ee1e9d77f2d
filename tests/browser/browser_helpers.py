"""Helpers for the browser tests: Chromium flags, a third-party site, page actions.

In a module of their own (not conftest.py) so test files can import them by a name
that no other test directory uses.
"""

from __future__ import annotations

import socket
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


class LossyProxy:
    """A TCP proxy in front of a server whose WebSockets can be made to lose what the browser sends.

    ``cut_websockets()`` makes every WebSocket open at that moment swallow the browser's
    bytes from then on (the frames leave the browser and never arrive), like a network
    that dies under a tab; connections opened later pass normally.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.websockets: list[dict] = []
        self.swallowed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_websockets(self) -> None:
        for conn in self.websockets:
            conn["cut"] = True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is down (a test restarts it): refused, as it would be directly
                client.close()
                continue
            conn = {"cut": False}
            threading.Thread(target=self._pump, args=(client, upstream, conn, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: dict, from_browser: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_browser and b"upgrade: websocket" in data[:4096].lower() and conn not in self.websockets:
                    self.websockets.append(conn)
                if from_browser and conn["cut"]:
                    self.swallowed += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()


def read_record(page, store: str, key: str = "mnist/2nn"):
    """The IndexedDB record the worker keeps in ``store`` (see web/static/worker/records.js), or None."""
    return page.evaluate(
        """async ([store, key]) => {
            const db = await new Promise((ok, ko) => { const r = indexedDB.open("webfl"); r.onsuccess = () => ok(r.result); r.onerror = () => ko(r.error); });
            try {
                if (!db.objectStoreNames.contains(store)) return null;
                const record = await new Promise((ok) => { const r = db.transaction(store).objectStore(store).get(key); r.onsuccess = () => ok(r.result); });
                if (!record) return null;
                const out = {};
                for (const [k, v] of Object.entries(record)) out[k] = v instanceof Uint8Array ? v.length : v;
                return out;
            } finally { db.close(); }
        }""",
        [store, key],
    )


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


# Loads Pyodide, NumPy and the core wheel into the page from its server (as the worker
# does) and returns what the Python code's last expression gives, or fails in time.
_PYODIDE_RUN = """async ([code, timeoutMs]) => {
  const run = async () => {
    const config = await (await fetch("/api/config")).json();
    const base = new URL(config.pyodide.index_url, location.href).href;
    const { loadPyodide } = await import(base + "pyodide.mjs");
    const py = await loadPyodide({ indexURL: base });
    const failed = [];
    const onError = (e) => failed.push(String(e));
    await py.loadPackage(config.numpy.url ? new URL(config.numpy.url, location.href).href : config.numpy.name, { errorCallback: onError });
    await py.loadPackage(new URL(config.core.url, location.href).href, { errorCallback: onError });
    if (failed.length) throw new Error(failed.join("; "));
    return py.runPython(code);
  };
  const late = new Promise((_, ko) => setTimeout(() => ko(new Error("Pyodide did not load in time")), timeoutMs));
  return Promise.race([late, run()]);
}"""


def run_in_pyodide(browser, server_url: str, code: str, timeout_ms: int = LOAD_TIMEOUT_MS):
    """Run ``code`` in Pyodide in a page of ``server_url``; the value of its last line comes back.

    The pages' CSP keeps WebAssembly out of them (Pyodide belongs in the worker), so this
    page's context bypasses that policy: for tests and benchmarks of the core only.
    """
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(server_url + "/")
        return page.evaluate(_PYODIDE_RUN, [code, timeout_ms])
    finally:
        context.close()
