"""Issue 5's server hardening over real sockets: session tokens, norm bound, rejection
counts, connection cap, rate limits, idle/slow-loris timeout, headers, login throttling,
and no secret in any page."""

import base64
import http.cookiejar
import os
import re
import socket
import struct
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from servers import start_server
from test_server import MODEL_SIZE, Client, global_params
from websockets.exceptions import ConnectionClosed

from webfl import __version__
from webfl.core.protocol import Message, encode
from webfl.server.engine import RunConfig
from webfl.server.validation import parse_norm_bound


def test_norm_bound_in_run_config():
    assert RunConfig.from_json({"norm_bound": "x=5"}).norm_bound == "x=5"
    assert RunConfig.from_json({"norm_bound": None}).norm_bound == "none"
    assert parse_norm_bound("5.0").max_norm == 5.0 and parse_norm_bound("3x").factor == 3.0
    assert parse_norm_bound("2.5,x=4").factor == 4.0 and parse_norm_bound("none") is None
    for bad in ("x=-1", "lots", "x=nan", 5):
        with pytest.raises(ValueError):
            RunConfig.from_json({"norm_bound": bad})


def test_tokens_stop_replays_and_every_rejection_is_counted(server):
    a, b = Client(server), Client(server)
    a.join()
    b.join()
    before = global_params(server)
    body = {"rounds": 2, "clients_per_round": 2, "min_updates": 2, "deadline_s": 60, "norm_bound": "1.0"}
    assert server.api("POST", "/api/rounds", body)[0] == 202
    ta, tb = a.recv("task"), b.recv("task")
    assert ta["token"] != tb["token"] and re.fullmatch(r"[0-9a-f]{32}", ta["token"])
    rng = np.random.default_rng(1)
    da, db = rng.normal(0, 0.001, MODEL_SIZE), rng.normal(0, 0.001, MODEL_SIZE)
    nan = da.copy()
    nan[3] = np.inf
    # b replays a's exact update frame (a's token) on its own connection.
    frame = encode(Message("update", dict(round=1, model_version=0, num_examples=100, loss=1.0, accuracy=0.5, codec="none",
                                          codec_params={}, token=ta["token"]), (da.astype(np.float32),)))
    b.ws.send(frame)
    assert "session token" in b.recv_verdict()["reason"]
    assert "session token" in a.update(ta, da, token="0" * 32)["reason"]
    assert "session token" in a.update(ta, da, token="")["reason"]
    assert "NaN or Inf" in a.update(ta, nan)["reason"]
    assert "fixed bound" in a.update(ta, da * 1e4)["reason"]
    np.testing.assert_array_equal(global_params(server), before)
    assert a.update(ta, da).type == "accept"
    assert b.update(tb, db).type == "accept"
    for c in (a, b):
        c.recv("model")
        c.send("ready", num_examples=100)
    # Round 2: a's round-1 update, relabelled for round 2, still carries the round-1 token.
    ta2 = a.recv("task")
    assert ta2["round"] == 2
    assert "session token" in a.update(ta2, da, model_version=1, token=ta["token"])["reason"]
    rejections = server.status()["rejections"]
    assert rejections == {"token": 4, "nan": 1, "norm": 1}, rejections


def test_fedbuff_checks_tokens_and_counts_rejections(server):
    a, b = Client(server), Client(server)
    a.join()
    b.join()
    before = global_params(server)
    body = {"rounds": 1, "mode": "fedbuff", "clients_per_round": 2, "buffer_size": 2, "deadline_s": 60, "norm_bound": "1.0"}
    assert server.api("POST", "/api/rounds", body)[0] == 202
    ta, tb = a.recv("task"), b.recv("task")
    assert ta["token"] != tb["token"] and (ta["round"], ta["model_version"]) == (tb["round"], tb["model_version"])
    rng = np.random.default_rng(2)
    da, db = rng.normal(0, 0.001, MODEL_SIZE), rng.normal(0, 0.001, MODEL_SIZE)
    nan = da.copy()
    nan[0] = np.nan
    # Same round and model as b's own task, but a's token: refused, and b's task stays open.
    assert "session token" in b.update(tb, db, token=ta["token"])["reason"]
    assert "session token" in a.update(ta, da, token="")["reason"]
    assert "NaN or Inf" in a.update(ta, nan)["reason"]
    assert "fixed bound" in a.update(ta, da * 1e4)["reason"]
    np.testing.assert_array_equal(global_params(server), before)
    assert a.update(ta, da).type == "accept"
    assert b.update(tb, db).type == "accept"
    status = server.wait_for(lambda s: len(s["history"]) == 1, timeout=30, what="the FedBuff commit")
    assert status["rejections"] == {"token": 2, "nan": 1, "norm": 1}, status["rejections"]
    np.testing.assert_allclose(global_params(server), before + (da + db).astype(np.float32) / 2, atol=1e-6)


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    env = {"WEBFL_MAX_CONNECTIONS_PER_IP": "3", "WEBFL_CONN_FRAMES_PER_S": "5", "WEBFL_IDLE_TIMEOUT_S": "2",
           "WEBFL_LOGINS_PER_MINUTE": "3"}
    proc = start_server(tmp_path_factory.mktemp("tight") / "data", env=env)
    yield proc
    proc.stop()


def test_connection_cap_per_address(tight):
    first = [Client(tight) for _ in range(3)]
    extra = Client(tight)
    code, reason = extra.closed_with()
    assert code == 1013 and "too many connections" in reason
    for c in first:
        c.ws.close()
    time.sleep(0.5)
    again = Client(tight)
    again.join()  # room again once the others left
    again.ws.close()
    assert tight.status()["rejections"].get("connections", 0) >= 1


def test_frame_rate_limit_closes_the_connection(tight):
    c = Client(tight)
    c.join()
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(400):
            c.send("pause")
        while True:
            c.ws.recv(timeout=15)
    assert info.value.rcvd.code == 1008 and "rate limit" in info.value.rcvd.reason


def test_idle_volunteer_is_closed(tight):
    c = Client(tight)
    c.join()
    code, reason = c.closed_with()
    assert code == 1013 and "no complete frame" in reason


def _raw_ws(url: str) -> socket.socket:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    s = socket.create_connection((host, port), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0]
    return s


def _masked(payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    header = bytes([0x82]) + (bytes([0x80 | 127]) + struct.pack(">Q", n) if n > 125 else bytes([0x80 | n]))
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_slow_loris_partial_frame_is_closed(tight):
    s = _raw_ws(tight.url)
    s.sendall(_masked(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "loris"}))))
    # A frame that announces 100 kB and never finishes.
    s.sendall(_masked(b"WFL\x01" + bytes(60), length=100_000)[: 2 + 8 + 4 + 64])
    started, received = time.monotonic(), b""
    s.settimeout(30)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break  # the server dropped the connection
        received += chunk
    assert time.monotonic() - started < 25
    assert b"no complete frame" in received  # the close frame's reason
    s.close()


def test_security_headers_everywhere(tight):
    for path, ancestors in [("/", "'none'"), ("/admin", "'none'"), ("/embed", "'self'"), ("/healthz", "'none'"),
                            ("/api/config", "'none'"), ("/api/status", "'none'"), ("/static/css/app.css", "'none'")]:
        try:
            with urllib.request.urlopen(tight.url + path) as resp:
                headers = resp.headers
        except urllib.error.HTTPError as exc:  # /api/status: 401 without a token
            headers = exc.headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"], path
        assert f"frame-ancestors {ancestors}" in headers["Content-Security-Policy"], path
    # The worker's script would impose its policy on the worker, which must load Pyodide.
    with urllib.request.urlopen(tight.url + "/static/worker.js") as resp:
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and "Content-Security-Policy" not in resp.headers


def _browser():
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPErrorProcessor()), jar


def _login(opener, url, token):
    page = opener.open(url + "/admin").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"csrf": csrf, "token": token}).encode()
    try:
        with opener.open(url + "/admin/login", data=data) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_no_secret_in_any_page(server):
    opener, jar = _browser()
    assert _login(opener, server.url, server.token)[0] == 200  # followed the redirect to the admin page
    assert any(c.name == "webfl_admin" for c in jar)
    secret = (server.data_dir / "session_secret").read_text().strip()
    paths = ["/", "/embed", "/embed.js", "/admin", "/api/config", "/api/embed/check", "/healthz",
             "/static/admin/main.js", "/static/worker.js"]
    for path in paths:
        for client in (opener, urllib.request.build_opener()):  # signed in, and a stranger
            with client.open(server.url + path) as resp:
                text = resp.read().decode(errors="replace") + str(resp.headers)
            assert server.token not in text and secret not in text, path


def test_login_attempts_are_throttled(tight):
    opener, _ = _browser()
    codes = [_login(opener, tight.url, "wrong")[0] for _ in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429
    assert _login(opener, tight.url, tight.token)[0] == 429  # even the right token waits


@pytest.mark.parametrize("dtype", [["<f4"], {"a": 1}, 5, None])
def test_unhashable_dtype_is_a_protocol_error(dtype):
    """Found by the fuzzer: a list as dtype raised TypeError instead of ProtocolError."""
    import json as json_
    import struct as struct_

    from webfl.core.protocol import ProtocolError, decode

    header = json_.dumps({"type": "pause", "arrays": [[dtype, [1]]]}).encode()
    frame = b"WFL\x01" + struct_.pack("<I", len(header)) + header
    with pytest.raises(ProtocolError):
        decode(frame + bytes(-len(frame) % 8 + 8))


def test_session_posts_need_the_csrf_token_and_frames_are_refused_elsewhere(server):
    opener, _ = _browser()
    status, page = _login(opener, server.url, server.token)
    assert status == 200
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    # The launch form is built from /api/run-settings (test_browser_admin.py checks every field).
    assert 'data-testid="launch-form"' in page and 'data-testid="advanced"' in page

    def post(headers):
        req = urllib.request.Request(server.url + "/api/rounds/stop", data=b"{}", method="POST", headers=headers)
        try:
            with opener.open(req) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post({}) == 403
    assert post({"X-CSRF-Token": "forged"}) == 403
    assert post({"X-CSRF-Token": csrf}) == 200
    with opener.open(server.url + "/embed") as resp:
        assert "frame-ancestors 'self'" in resp.headers["Content-Security-Policy"]
    with opener.open(server.url + "/admin") as resp:
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
