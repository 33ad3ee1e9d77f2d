"""Volunteers that reload: the pending update survives in IndexedDB, and the runtime in the service worker's cache."""

from __future__ import annotations

import time
import urllib.request

import pytest
from servers import free_port
from test_server import Client

from browser_helpers import LOAD_TIMEOUT_MS, LossyProxy, join, read_record, wait_state

pytestmark = pytest.mark.browser

# Long enough (about a second with the WebAssembly kernel) to cut the socket mid-training.
RUN = {"rounds": 1, "local_epochs": 20, "batch_size": 10, "min_updates": 1, "deadline_s": 120, "select_timeout_s": 30}


def wait_pending(page, present: bool, timeout: float = 60.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_record(page, "pending")
        if (record is not None) == present:
            return record
        time.sleep(0.1)
    raise AssertionError(f"the pending record did not {'appear' if present else 'go'}")


def serve_behind_a_lossy_proxy(serve) -> tuple:
    """A server whose pages are reached through a ``LossyProxy``: it must accept the proxy's
    origin on ``/ws`` (browsers' Origins are checked against ``--public-origin``)."""
    port = free_port()
    proxy = LossyProxy(port)
    return serve("--public-origin", proxy.url, port=port), proxy


def update_lost_in_a_reload(tab, server, proxy: LossyProxy) -> dict:
    """The tab trains, its update is lost on the way, the tab reloads (and joins again)."""
    wait_state(tab, "training")
    proxy.cut_websockets()
    record = wait_pending(tab, True)
    assert record["round"] == 1 and record["frame"] > 0 and record["resume"]
    deadline = time.monotonic() + 30
    while proxy.swallowed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.swallowed > 0, "the update should have been lost on the way"
    assert server.status()["open_round"]["received"] == 0
    join(tab, proxy.url, wait=False)
    return record


def test_a_reload_resends_the_pending_update_and_it_counts_once(context, serve):
    server, proxy = serve_behind_a_lossy_proxy(serve)
    tab = context.new_page()
    join(tab, proxy.url)
    silent = Client(server)  # selected too, never answers: the round stays open
    silent.join()
    assert server.api("POST", "/api/rounds", {**RUN, "clients_per_round": 2})[0] == 202
    record = update_lost_in_a_reload(tab, server, proxy)

    wait_pending(tab, False)
    status = server.wait_for(lambda s: s["open_round"]["received"] == 1, what="the re-sent update")
    assert status["volunteers"]["training"] == 1  # the silent one; the tab is back, not training
    silent.ws.close()
    status = server.wait_for(lambda s: len(s["history"]) == 1, what="the round to commit")
    assert status["history"][0]["participants"] == 1
    wait_state(tab, "idle")
    assert record["volunteer"] in server.log()  # "volunteer <id> resumed"
    proxy.close()


def test_a_resend_for_a_closed_round_is_rejected_and_forgotten(context, serve):
    server, proxy = serve_behind_a_lossy_proxy(serve)
    tab = context.new_page()
    logs: list[str] = []
    tab.on("console", lambda msg: logs.append(msg.text))
    join(tab, proxy.url)
    assert server.api("POST", "/api/rounds", {**RUN, "clients_per_round": 1})[0] == 202
    wait_state(tab, "training")
    proxy.cut_websockets()  # the update will be lost on the way...
    wait_pending(tab, True)
    # ...and its round closes meanwhile. (Stopped before the update is made, the job would
    # stop within a batch and send nothing: test_browser_run_end.)
    server.api("POST", "/api/rounds/stop", {})
    join(tab, proxy.url, wait=False)
    wait_state(tab, "idle")
    wait_pending(tab, False)
    assert any("update rejected: round 1 is not open" in line for line in logs), logs
    assert server.status()["history"] == []
    proxy.close()


def test_a_returning_volunteer_gets_the_runtime_from_the_service_worker(context, serve):
    server = serve()
    with urllib.request.urlopen(server.url + "/sw.js") as resp:
        assert resp.headers["Service-Worker-Allowed"] == "/" and resp.headers["Cache-Control"] == "no-cache"
    tab = context.new_page()
    tab.goto(server.url)
    tab.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=30_000)
    join(tab, server.url)
    cached = tab.evaluate(
        """async () => {
            const out = [];
            for (const name of await caches.keys()) for (const r of await (await caches.open(name)).keys()) out.push(new URL(r.url).pathname);
            return out;
        }"""
    )
    assert any(p.endswith("/pyodide.asm.wasm") for p in cached) and any(p.startswith("/wheels/numpy-") for p in cached), cached
    assert any(p.startswith("/wheels/webfl-") for p in cached) and "/static/kernels/gemm.wasm" in cached, cached

    # A second visit with the HTTP cache cleared: the runtime must not come from the server.
    context.new_cdp_session(tab).send("Network.clearBrowserCache")
    fetched = lambda: server.log().count("/pyodide.asm.wasm HTTP") + server.log().count("GET /wheels/numpy-")
    before = fetched()
    tab.reload()
    tab.get_by_test_id("join").click()
    wait_state(tab, "idle", timeout=LOAD_TIMEOUT_MS)
    assert fetched() == before > 0
