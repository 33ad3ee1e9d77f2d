"""'Use my own data': a CSV trains a round and its bytes never leave the browser."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

from browser_helpers import wait_state
from webfl.build.paths import MNIST_NPZ
from webfl.core.data import load_npz

pytestmark = pytest.mark.browser

ROWS = 300


def test_own_csv_trains_and_never_leaves_the_browser(context, serve, tmp_path):
    server = serve()
    test = load_npz(MNIST_NPZ, "test")
    x, y = test.x[:ROWS], test.y[:ROWS]
    lines = ["label," + ",".join(f"px{i}" for i in range(x.shape[1]))]
    lines += [f"{label}," + ",".join(map(str, row)) for label, row in zip(y, x)]
    csv_text = "\n".join(lines) + "\n"
    csv_path = tmp_path / "my-digits.csv"
    csv_path.write_text(csv_text)

    sent_http: list[tuple[str, bytes]] = []
    sent_ws: list[bytes] = []
    context.on("request", lambda request: sent_http.append((request.url, request.post_data_buffer or b"")))

    def on_socket(ws) -> None:
        ws.on("framesent", lambda payload: sent_ws.append(payload if isinstance(payload, bytes) else payload.encode()))

    page = context.new_page()
    page.on("websocket", on_socket)
    page.goto(server.url)
    page.get_by_test_id("data-csv").check()
    page.get_by_test_id("csv-file").set_input_files(str(csv_path))
    page.get_by_test_id("join").click()
    wait_state(page, "idle")
    expect(page.get_by_test_id("data-source")).to_have_text(f"your file my-digits.csv ({ROWS} examples, kept in this tab)")
    server.wait_for(lambda s: s["volunteers"]["ready"] == 1, timeout=30, what="the volunteer ready")

    code, body = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 1, "local_epochs": 1, "deadline_s": 60})
    assert code == 202, body
    expect(page.get_by_test_id("rounds-done")).to_have_text("1", timeout=60_000)
    # A volunteer's round counts once its update is accepted; the commit follows.
    history = server.wait_for(lambda s: len(s["history"]) == 1, timeout=30, what="the round committed")["history"]
    assert history[0]["participants"] == 1

    # Nothing the browser sent holds the file: not its text, not a row's pixels as
    # bytes, not as the float32 features the model trains on.
    needles = [csv_text[:64].encode(), lines[1].encode(), lines[1][:40].encode(), x[0].tobytes(), (x[0].astype(np.float32) / 255).tobytes()]
    # The recording sees the worker's own traffic (its config fetch, its socket).
    assert any("/api/config?task=mnist" in url for url, _ in sent_http) and sent_ws, "nothing was recorded"
    for url, body in sent_http:
        assert not any(n in url.encode() or n in body for n in needles), url
        assert len(body) < 1000, f"unexpected upload of {len(body)} bytes to {url}"
    for frame in sent_ws:
        assert not any(n in frame for n in needles)
    # WebSocket frames out: hello, ready, then one update per round whose size is fixed
    # by the model (its parameters as float32), whatever the data.
    sizes = sorted(len(f) for f in sent_ws)
    updates = [s for s in sizes if s > 10_000]
    assert len(updates) == 1 and len(sizes) - len(updates) <= 4, sizes
    assert updates[0] == pytest.approx(4 * model_size(), abs=2048)


def model_size() -> int:
    from webfl.core.tasks import get_task

    return get_task("mnist", "2nn").build_model().size
