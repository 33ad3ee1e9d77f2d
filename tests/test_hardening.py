"""Issue 5's server hardening over real sockets: session tokens, norm bound, rejection
counts, connection cap, rate limits, idle/slow-loris timeout, headers, login throttling,
and no secret in any page."""

import base64
import contextlib
import http.cookiejar
import json
import os
import re
import socket
import sqlite3
import struct
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from servers import read_to_close, start_server
from test_server import MODEL_SIZE, Client, global_params
from websockets.exceptions import ConnectionClosed, InvalidStatus

from webfl import __version__
from webfl.core.protocol import Message, encode
from webfl.server.engine import RunConfig
from webfl.server.rounds.config import NormSpec


def test_norm_bound_in_run_config():
    assert RunConfig.from_json({"norm_bound": "x=5"}).to_dict()["norm_bound"] == "x=5"
    assert RunConfig.from_json({"norm_bound": None}).to_dict()["norm_bound"] == "none"
    assert NormSpec.parse("5.0").build().max_norm == 5.0 and NormSpec.parse("3x").build().factor == 3.0
    assert NormSpec.parse("2.5,x=4").build().factor == 4.0 and NormSpec.parse("none").build() is None
    for bad in ("x=-1", "lots", "x=nan", 5):
        with pytest.raises(ValueError, match="norm_bound"):
            RunConfig.from_json({"norm_bound": bad})


def _refused_then_accepted(server, before: np.ndarray, a: tuple, b: tuple, bad: float) -> None:
    """``a``'s delta with one ``bad`` value (NaN or Inf), then scaled past the 1.0 norm bound: each
    refused with its reason and the model unchanged; then ``a``'s and ``b``'s own deltas are accepted.
    ``a`` and ``b`` are ``(client, task, delta)``."""
    (ca, ta, da), (cb, tb, db) = a, b
    poisoned = da.copy()
    poisoned[3] = bad
    assert "NaN or Inf" in ca.update(ta, poisoned)["reason"]
    assert "fixed bound" in ca.update(ta, da * 1e4)["reason"]
    np.testing.assert_array_equal(global_params(server), before)
    assert ca.update(ta, da).type == "accept"
    assert cb.update(tb, db).type == "accept"


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
    # b replays a's exact update frame (a's token) on its own connection.
    frame = encode(Message("update", dict(round=1, model_version=0, num_examples=100, loss=1.0, accuracy=0.5, codec="none",
                                          codec_params={}, token=ta["token"]), (da.astype(np.float32),)))
    b.ws.send(frame)
    assert "session token" in b.recv_verdict()["reason"]
    assert "session token" in a.update(ta, da, token="0" * 32)["reason"]
    assert "session token" in a.update(ta, da, token="")["reason"]
    _refused_then_accepted(server, before, (a, ta, da), (b, tb, db), bad=np.inf)
    for c in (a, b):
        c.recv("model_notice")
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
    # Same round and model as b's own task, but a's token: refused, and b's task stays open.
    assert "session token" in b.update(tb, db, token=ta["token"])["reason"]
    assert "session token" in a.update(ta, da, token="")["reason"]
    _refused_then_accepted(server, before, (a, ta, da), (b, tb, db), bad=np.nan)
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
    with contextlib.closing(sqlite3.connect(f"{(server.data_dir / 'webfl.sqlite3').as_uri()}?mode=ro", uri=True)) as db:
        keys = [value.hex() for (value,) in db.execute("SELECT value FROM secrets")]
    assert len(keys) == 3  # the session key, the task tokens' and the resume credentials'
    paths = ["/", "/embed", "/embed.js", "/admin", "/api/config", "/api/embed/check", "/healthz",
             "/static/admin/main.js", "/static/worker.js"]
    for path in paths:
        for client in (opener, urllib.request.build_opener()):  # signed in, and a stranger
            with client.open(server.url + path) as resp:
                text = resp.read().decode(errors="replace") + str(resp.headers)
            assert server.token not in text and not any(key in text for key in keys), path


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


# -- issue 16, items 3-12: each attack through a real `webfl serve` ---------------------


def _rss_kb(pid: int, field: str = "VmHWM") -> int:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process, from /proc."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _stream_post(url: str, path: str, total: int, chunked: bool, token: str = "") -> tuple[int, bytes]:
    """POST ``total`` bytes of body as fast as the server takes them; the bytes sent and its answer."""
    parts = urllib.parse.urlsplit(url)
    s = socket.create_connection((parts.hostname, parts.port), timeout=20)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
              f"{auth}{length}\r\n\r\n".encode())
    block, sent = b"a" * (1 << 20), 0
    chunk = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
    try:
        while sent < total:
            s.sendall(chunk)
            sent += len(block)
    except OSError:
        pass  # the server answered and closed: the rest of the body is never read
    answer = read_to_close(s)
    s.close()
    return sent, answer


@pytest.mark.parametrize("path", ["/admin/login", "/admin/logout", "/api/rounds"])
def test_bodies_are_bounded_while_they_stream(server, path):
    """Issue 16.3: a 350 MB body, declared or chunked, gets 413 and leaves the server's memory flat."""
    pid = server.proc.pid
    before = _rss_kb(pid)
    for chunked in (False, True):
        # The API is read only once the token checks out; the forms by anyone.
        sent, answer = _stream_post(server.url, path, 350 << 20, chunked, server.token if path.startswith("/api") else "")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"request body too large" in answer
    grown_mb = (_rss_kb(pid) - before) / 1024
    print(f"{path}: peak RSS grew by {grown_mb:.1f} MB over two 350 MB bodies")
    assert grown_mb < 40, grown_mb
    assert server.status()["state"] == "idle"  # still serving


BAD_JSON = [
    b'{"rounds": 1e400}',
    b'{"rounds": Infinity}',
    b'{"lr": -Infinity}',
    b'{"lr": NaN}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"rounds": 1' + b"0" * 5000 + b"}",
    b'{"aggregator": "clipped:window=1' + b"0" * 400 + b'"}',
    b'{"norm_bound": "x=1e400"}',
    b'{"codec": "topk:1e400"}',
    b"\xff\xfe{",
    b'{"rounds": ',
    b"[1, 2]",
    b'"rounds"',
]


def test_bad_json_is_a_400_with_a_message(server):
    """Issue 16.4: every one of these used to be (or could be) a 500."""
    for body in BAD_JSON:
        req = urllib.request.Request(server.url + "/api/rounds", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {server.token}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        answer = json.loads(info.value.read())
        assert info.value.code == 400 and answer["error"], (body[:60], answer)
    status = server.status()
    assert status["run"] is None and status["model_version"] == 0  # nothing started


def _session_cookie(jar) -> str:
    return next(c.value for c in jar if c.name == "webfl_admin")


def _with_cookie(url: str, cookie: str, method: str = "GET", csrf: str | None = None) -> int:
    headers = {"Cookie": f"webfl_admin={cookie}"}
    if csrf:
        headers["X-CSRF-Token"] = csrf
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_logout_revokes_the_session_server_side(tmp_path):
    """Issue 16.5: a copy of the cookie stops working at sign-out, also after a restart."""
    server = start_server(tmp_path / "data")
    try:
        opener, jar = _browser()
        status, page = _login(opener, server.url, server.token)
        assert status == 200
        cookie, csrf = _session_cookie(jar), re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        assert _with_cookie(server.url + "/api/status", cookie) == 200
        assert _with_cookie(server.url + "/api/rounds/stop", cookie, "POST", csrf) == 200
        form = urllib.parse.urlencode({"csrf": csrf}).encode()
        with opener.open(server.url + "/admin/logout", data=form) as resp:
            assert 'name="token"' in resp.read().decode()  # back at the sign-in form
        assert _with_cookie(server.url + "/api/status", cookie) == 401
        assert _with_cookie(server.url + "/api/rounds/stop", cookie, "POST", csrf) == 401
        server.stop()
        server = start_server(tmp_path / "data")
        assert _with_cookie(server.url + "/api/status", cookie) == 401
        # A new sign-in is a new session and works.
        opener, jar = _browser()
        assert _login(opener, server.url, server.token)[0] == 200
        assert _with_cookie(server.url + "/api/status", _session_cookie(jar)) == 200
    finally:
        server.stop()


def _raw_handshake(url: str, host: str | None = None, origin: str | None = None, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    parts = urllib.parse.urlsplit(url)
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(20)
    s.connect((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Origin: {origin}\r\n" if origin else ""
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: {host or parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        byte = s.recv(1)
        if not byte:
            break
        head += byte
    return s, head.split(b"\r\n")[0]


@pytest.fixture(scope="module")
def stalling(tmp_path_factory):
    env = {"WEBFL_MAX_CONNECTIONS_PER_IP": "2", "WEBFL_SEND_TIMEOUT_S": "2"}
    proc = start_server(tmp_path_factory.mktemp("stall") / "data", "--header-timeout-s", "2", "--keep-alive-s", "1", env=env)
    yield proc
    proc.stop()


def test_a_client_that_never_reads_is_dropped_and_its_slot_freed(stalling):
    """Issue 16.6: a volunteer that never reads while it is sent models (with its tasks: it
    says ready, so it is selected every round until it is gone). Once the kernel's buffers
    (about 4 MB here) are full the server's writer is stuck in send_bytes; the send
    timeout (2 s here, 30 s by default) aborts the transport."""
    s, status_line = _raw_handshake(stalling.url, rcvbuf=4096)
    assert b" 101 " in status_line
    s.sendall(_masked(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "never-reads"}))))
    s.sendall(_masked(encode(Message("ready", {"num_examples": 100}))))
    stalling.wait_for(lambda st: st["volunteers"]["ready"] == 1, timeout=10, what="the stalled volunteer to be ready")
    honest = Client(stalling)
    honest.join()
    stalling.wait_for(lambda st: st["volunteers"]["ready"] == 2, timeout=10, what="both to be ready")
    # Each round selects both and closes at its deadline with the honest update, until the
    # stalled one is dropped; then it starts with the honest one alone after 0.2 s.
    body = {"rounds": 12, "clients_per_round": 2, "min_updates": 1, "deadline_s": 1, "select_timeout_s": 0.2, "max_wait_s": 0}
    assert stalling.api("POST", "/api/rounds", body)[0] == 202
    for _ in range(12):  # each task to the stalled one carries the 0.8 MB model
        task = honest.recv("task")
        assert honest.update(task, np.zeros(MODEL_SIZE)).type == "accept"
        honest.recv("model_notice")
        with contextlib.suppress(OSError):  # once it is dropped, its socket is gone
            s.sendall(_masked(encode(Message("ready", {"num_examples": 100}))))
        honest.send("ready", num_examples=100)
    done = time.monotonic()
    stalling.wait_for(lambda st: st["connected"] == 1, timeout=15, what="the stalled volunteer to be dropped")
    assert time.monotonic() - done < 10
    assert "aborting a WebSocket whose peer took no bytes for 2 s" in stalling.log()
    stalling.api("POST", "/api/rounds/stop")
    honest.ws.close()
    s.close()
    # Both slots of the address (max 2) are free again.
    again = [Client(stalling), Client(stalling)]
    for c in again:
        c.join()
        c.ws.close()
    # Twelve commits under the default pruning (last 5, every 50th): versions 0 and 8-12 remain.
    import sqlite3

    db = sqlite3.connect(f"{(stalling.data_dir / 'webfl.sqlite3').as_uri()}?mode=ro", uri=True)
    assert [r[0] for r in db.execute("SELECT model_version FROM checkpoints ORDER BY 1")] == [0, 8, 9, 10, 11, 12]
    db.close()


def test_slowloris_headers_and_idle_keep_alive_are_bounded(stalling):
    """Issue 16.7: 300 connections dribbling header bytes are all closed by the header
    timeout (2 s here, 10 s by default) while the server keeps answering."""
    parts = urllib.parse.urlsplit(stalling.url)
    socks = []
    for _ in range(300):
        s = socket.create_connection((parts.hostname, parts.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        socks.append(s)
    started, open_ = time.monotonic(), set(range(len(socks)))
    while open_ and time.monotonic() - started < 15:
        for i in list(open_):
            try:
                if socks[i].recv(1024) == b"":
                    open_.discard(i)
                    continue
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(i)
                continue
            try:
                socks[i].send(b"X")  # one more header byte, forever
            except OSError:
                open_.discard(i)
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    for s in socks:
        s.close()
    assert not open_, f"{len(open_)} of 300 slowloris connections still open after {elapsed:.1f} s"
    assert elapsed < 8, elapsed
    with urllib.request.urlopen(stalling.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    # An idle keep-alive connection is closed after --keep-alive-s (1 s here, 5 s by default).
    s = socket.create_connection((parts.hostname, parts.port), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    started, data = time.monotonic(), b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 5
    s.close()


def test_websocket_origin_is_checked_against_the_public_origins(server, tmp_path):
    """Issue 16.8: DNS rebinding (Host and Origin both the attacker's name) and a scheme
    mismatch are refused; the listening origin and its loopback aliases are not."""
    port = urllib.parse.urlsplit(server.url).port
    refused = [("evil.example", "http://evil.example"), (f"evil.example:{port}", f"http://evil.example:{port}"),
               (None, f"https://127.0.0.1:{port}"), (None, "null"), (None, f"http://127.0.0.1:{port + 1}")]
    for host, origin in refused:
        s, line = _raw_handshake(server.url, host=host, origin=origin)
        s.close()
        assert b" 403 " in line, (host, origin, line)
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"HTTP://LOCALHOST:{port}/"):
        s, line = _raw_handshake(server.url, origin=origin)
        s.close()
        assert b" 101 " in line, (origin, line)
    # Configured public origins replace the defaults; embed origins add to them.
    other = start_server(tmp_path / "other", "--public-origin", "https://webfl.example",
                         "--public-origin", "https://mirror.example:8443", "--embed-origins", "https://blog.example")
    try:
        for origin, expected in [("https://webfl.example", b" 101 "), ("https://webfl.example:443", b" 101 "),
                                 ("https://mirror.example:8443", b" 101 "), ("https://blog.example", b" 101 "),
                                 ("http://webfl.example", b" 403 "), (other.url, b" 403 ")]:
            s, line = _raw_handshake(other.url, origin=origin)
            s.close()
            assert expected in line, (origin, line)
    finally:
        other.stop()


def _login_from(url: str, forwarded_for: str, token: str = "wrong") -> int:
    opener, _ = _browser()
    page = opener.open(url + "/admin").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    req = urllib.request.Request(url + "/admin/login", data=urllib.parse.urlencode({"csrf": csrf, "token": token}).encode(),
                                 headers={"X-Forwarded-For": forwarded_for})
    try:
        with opener.open(req) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_forwarded_for_is_trusted_only_from_configured_proxies(tmp_path):
    """Issue 16.9: rotating X-Forwarded-For from loopback no longer buys fresh sign-in attempts."""
    direct = start_server(tmp_path / "direct", env={"WEBFL_LOGINS_PER_MINUTE": "3"})
    try:
        codes = [_login_from(direct.url, f"203.0.113.{i}") for i in range(5)]
    finally:
        direct.stop()
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429, codes
    # Behind a configured proxy (here loopback is the proxy), the forwarded address counts.
    proxied = start_server(tmp_path / "data", "--forwarded-allow-ips", "127.0.0.1", env={"WEBFL_LOGINS_PER_MINUTE": "3"})
    try:
        assert [_login_from(proxied.url, f"198.51.100.{i}") for i in range(5)] == [401] * 5
        assert [_login_from(proxied.url, "198.51.100.200") for _ in range(4)][-1] == 429
    finally:
        proxied.stop()


def test_untrusted_text_cannot_forge_log_lines(server):
    """Issue 16.10: a newline in hello.agent used to start a forged line in the server's log."""
    forged = "12:00:00 INFO webfl.engine: FORGED run 99"  # the agent is cut at 64 characters
    c = Client(server)
    c.send("hello", version=__version__, codecs=["none"], agent="evil\n" + forged + "\r\x1b[2K")
    c.recv("welcome")
    c.ws.close()
    server.wait_for(lambda st: st["connected"] == 0, timeout=10, what="the volunteer to leave")
    log = server.log()
    assert "FORGED" in log  # it was logged, on the line it belongs to
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert "evil\\n12:00:00" in log and "\x1b" not in log


def _database_with_rounds(path) -> None:
    """A real database of a few hundred pages: checkpoints of the 2NN model, as commits write them."""
    from webfl.server.store import RoundRecord, Store

    store = Store(path)
    scoped = store.scoped("mnist", "2nn")
    rng = np.random.default_rng(0)
    for version in range(1, 4):
        record = RoundRecord(version, None, version, 0.5, 1.0, 2, 10, 10, 1.0, time.time())
        scoped.commit_round(record, rng.normal(size=MODEL_SIZE).astype(np.float32))
    store.close()


def _corrupt(kind: str, data: bytes) -> bytes:
    if kind == "truncated":
        return data[: len(data) // 2 + 100]
    if kind == "bad header":
        return b"not a database!!" + data[16:]
    # The last page: a checkpoint's overflow page, including the link to the next one.
    return data[:-4096] + bytes(range(256)) * 16


@pytest.mark.parametrize("kind", ["truncated", "bad header", "last page damaged"])
def test_a_corrupt_database_stops_start_up_with_a_clear_message(tmp_path, kind):
    """Issue 16.11: no traceback, a non-zero exit, what is wrong and what to do; the file untouched."""
    import hashlib
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "webfl.sqlite3"
    _database_with_rounds(db)
    db.write_bytes(_corrupt(kind, db.read_bytes()))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    proc = subprocess.run([sys.executable, "-m", "webfl.cli", "serve", "--port", "0", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "WEBFL_ADMIN_TOKEN": "t"})
    assert proc.returncode != 0
    assert f"the database {db} is damaged" in proc.stderr and "move it aside" in proc.stderr and "Restore" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert not (data_dir / "webfl.sqlite3-wal").exists()


def test_the_data_folder_is_private(tmp_path):
    """Issue 16.12: 0700 for the folder, 0600 for the database, its WAL and SHM, the secrets."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "notes.txt").write_text("left by an operator")
    (data_dir / "notes.txt").chmod(0o644)
    server = start_server(data_dir, env={"WEBFL_ADMIN_TOKEN": ""})  # the token is generated and kept
    try:
        opener, _ = _browser()
        token = (data_dir / "admin_token").read_text().strip()
        status, page = _login(opener, server.url, token)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        opener.open(server.url + "/admin/logout", data=urllib.parse.urlencode({"csrf": csrf}).encode()).read()
        assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
        names = ["webfl.sqlite3", "webfl.sqlite3-wal", "webfl.sqlite3-shm", "admin_token", "notes.txt"]
        modes = {name: oct((data_dir / name).stat().st_mode & 0o777) for name in names}
        assert modes == dict.fromkeys(names, "0o600"), modes
        # The session key and the signed-out sessions are in the (0600) database, not beside it.
        assert not (data_dir / "session_secret").exists() and not (data_dir / "revoked_sessions").exists()
    finally:
        server.stop()


def test_checkpoints_are_pruned_to_the_last_n_and_every_kth(tmp_path, store_target):
    """Issue 16.12: about 0.8 MB a round used to be kept forever."""
    from webfl.server.store import RoundRecord, Store

    store = Store(store_target, keep_last=3, keep_every=10)
    scoped = store.scoped("mnist", "2nn")
    params = np.zeros(10, dtype=np.float32)
    scoped.save_checkpoint(0, params)
    for version in range(1, 26):
        record = RoundRecord(version, None, version, 0.5, 1.0, 2, 10, 10, 1.0, time.time())
        scoped.commit_round(record, params + version)
    latest, latest_params = scoped.latest_checkpoint()
    assert latest == 25 and latest_params[0] == 25
    kept = [r[0] for r in store.query("SELECT model_version FROM checkpoints ORDER BY 1")]
    store.close()
    assert kept == [0, 10, 20, 23, 24, 25]
    with pytest.raises(ValueError):
        Store(tmp_path / "other.sqlite3", keep_last=0)


def test_over_tls_the_cookie_is_secure_and_origins_are_https(tmp_path):
    """Over https the session cookie is Secure, and the default public origin is the https
    one: an http Origin for the same host and port is refused (the scheme matters)."""
    import ssl
    import subprocess

    import httpx2

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = start_server(tmp_path / "data", tls=(cert, key))
    try:
        with httpx2.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(cert))) as http:
            csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/admin").text).group(1)
            answer = http.post("/admin/login", data={"token": server.token, "csrf": csrf})
            cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("webfl_admin="))
            assert "secure" in cookie.lower().replace(" ", "").split(";")
        port = urllib.parse.urlsplit(server.url).port
        for origin, expected in [(f"https://127.0.0.1:{port}", 101), (f"http://127.0.0.1:{port}", 403)]:
            try:
                Client(server, ssl=server.ssl_context, origin=origin).ws.close()
                got = 101
            except InvalidStatus as exc:
                got = exc.response.status_code
            assert got == expected, (origin, got)
    finally:
        server.stop()


# -- the helpers behind them, in-process ------------------------------------------------


def test_origins_are_normalised_as_browsers_send_them():
    from webfl.server.origins import default_public_origins, normalise_origin, origin_allowed, parse_origins

    assert normalise_origin("HTTPS://Example.ORG:443/") == "https://example.org"
    assert normalise_origin("http://[::1]:8000") == "http://[::1]:8000"
    for bad in ("null", "example.org", "ftp://example.org", "https://example.org/path", "https://u@example.org", "http://x:99999"):
        with pytest.raises(ValueError):
            normalise_origin(bad)
    assert parse_origins(["https://a.example,https://b.example", "https://a.example:443"]) == ("https://a.example", "https://b.example")
    assert default_public_origins("http", "0.0.0.0", 80) == ("http://0.0.0.0", "http://localhost", "http://127.0.0.1", "http://[::1]")
    assert default_public_origins("https", "webfl.example", 8443) == ("https://webfl.example:8443",)
    allowed = default_public_origins("http", "127.0.0.1", 8000)
    assert origin_allowed(None, allowed) and origin_allowed("http://localhost:8000", allowed)
    assert not origin_allowed("https://localhost:8000", allowed) and not origin_allowed("null", allowed)


def test_untrusted_text_is_one_escaped_line():
    import logging

    from webfl.server.logsafe import EscapingFilter, untrusted

    assert untrusted("a\nb\r\x1b[2K\u2028\\n é") == "a\\nb\\r\\x1b[2K\\u2028\\\\n é"
    assert untrusted("x" * 500, limit=10) == "x" * 10
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "agent %s said %s (%d)", ("a\nb", ValueError("c\nd"), 3), None)
    EscapingFilter().filter(record)
    assert record.getMessage() == "agent a\\nb said c\\nd (3)"


def test_a_csrf_form_field_is_not_accepted_on_the_api(server):
    """Issue 16.12: as auth.py says, /api takes the CSRF token only in X-CSRF-Token."""
    opener, jar = _browser()
    status, page = _login(opener, server.url, server.token)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    req = urllib.request.Request(server.url + "/api/rounds/stop", method="POST", data=urllib.parse.urlencode({"csrf": csrf}).encode(),
                                 headers={"Cookie": f"webfl_admin={_session_cookie(jar)}",
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 403 and "X-CSRF-Token" in json.loads(info.value.read())["error"]
