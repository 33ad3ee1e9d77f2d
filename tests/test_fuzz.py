"""Protocol fuzzing against a live server while honest volunteers run rounds.

Hypothesis generates >= 10,000 malformed or mutated frames: bit flips, truncations,
header JSON mutations, wrong types, huge shapes, NaN arrays, random bytes, SecAgg frames
(to a run without SecAgg: tests/test_secagg_frames.py refuses them inside one), valid-looking
updates for wrong rounds or with forged tokens, and replays of honest volunteers' updates.
Frames that still decode as ``update``/``pause`` go over long-lived fuzz connections
(they get a ``reject`` and the connection stays); the rest each go over a fresh connection,
first or after a valid ``hello`` (the server closes it). Fuzz connections never send a
valid ``ready``, so they are never selected.

Then: the server process is alive and healthy, its RSS grew by a bounded amount, every
honest round committed, and the model is exactly the initial model plus, per committed
round, the example-weighted mean (FedAvg) of the honest updates of that round: no
rejected frame changed it.
"""

import asyncio
import json
import os
import random
import struct
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import websockets
import websockets.asyncio.connection
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from servers import read_to_close, start_server
from test_server import MODEL_SIZE, global_params

from webfl import __version__
from webfl.core.protocol import Message, ProtocolError, decode, encode
from webfl.core.secagg.wire import TYPES as SECAGG_TYPES
from webfl.simulate import Simulation

BATCH = 50
BATCHES = int(os.environ.get("WEBFL_FUZZ_BATCHES", 205))  # 205 x 50, less the skipped "ready" frames: > 10,000
HONEST = 4
MAX_BODY_BYTES = 1024 * 1024  # the server's default bound on a request body (WEBFL_MAX_BODY_BYTES)
ROUNDS = 4


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw(header: dict, payload: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return b"WFL\x01" + struct.pack("<I", len(h)) + h + bytes(-(8 + len(h)) % 8) + payload


HELLO = encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "fuzz"}))
UPDATE_FIELDS = dict(round=1, model_version=0, num_examples=10, loss=1.0, accuracy=0.5, codec="none", codec_params={}, token="0" * 32)
VALID_UPDATE = encode(Message("update", UPDATE_FIELDS, (np.zeros(MODEL_SIZE, np.float32),)))
SMALL_UPDATE = encode(Message("update", UPDATE_FIELDS, (np.zeros(8, np.float32),)))
EVAL_SUMS = {"examples": 5, "loss_sum": 1.0, "correct": 2, "class_examples": [1, 4] + [0] * 8, "class_correct": [1, 1] + [0] * 8}
EVAL = encode(Message("eval", {"model_version": 1, "sums": EVAL_SUMS}))
BASES = [HELLO, VALID_UPDATE[:4096], SMALL_UPDATE, EVAL, encode(Message("pause")), encode(Message("ready", {"num_examples": 5}))]
REPLAYS: list[bytes] = []  # honest update frames, filled while the simulation runs

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def frames(draw) -> bytes:
    kind = draw(st.sampled_from(["bitflip", "truncate", "header", "types", "shape", "nan", "random", "wrong_round", "eval", "secagg",
                                 "replay"]))
    if kind == "bitflip":
        base = bytearray(draw(st.sampled_from(BASES)))
        for pos in draw(st.lists(st.integers(0, len(base) - 1), min_size=1, max_size=8)):
            base[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(base)
    if kind == "truncate":
        base = draw(st.sampled_from(BASES))
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "header":
        header = {"type": "update", **UPDATE_FIELDS, "arrays": [["<f4", [8]]]}
        key = draw(st.sampled_from([*header, "extra"]))
        if draw(st.booleans()) and key in header:
            del header[key]
        else:
            header[key] = draw(json_values)
        return raw(header, bytes(32))
    if kind == "types":
        t = draw(st.sampled_from(["hello", "ready", "update", "eval", "stats", "welcome", "model", "task", "status", "nope", 3, None]))
        return raw({"type": t, **draw(st.dictionaries(st.text(max_size=12), json_values, max_size=6))})
    if kind == "shape":
        shape = draw(st.lists(st.integers(-5, 2**40), min_size=0, max_size=6))
        dtype = draw(st.sampled_from(["<f4", "<f8", "|u1", "|O", ">f4", "<c16", 5]))
        return raw({"type": "update", **UPDATE_FIELDS, "arrays": [[dtype, shape]]}, bytes(draw(st.integers(0, 64))))
    if kind == "nan":
        arr = np.zeros(MODEL_SIZE, np.float32)
        arr[draw(st.integers(0, MODEL_SIZE - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38]))
        return encode(Message("update", {**UPDATE_FIELDS, "round": draw(st.integers(0, 6))}, (arr,)))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "wrong_round":
        fields = {**UPDATE_FIELDS, "round": draw(st.integers(-3, 10**12)), "model_version": draw(st.integers(-3, 10)),
                  "token": draw(st.text("0123456789abcdef", min_size=0, max_size=40)),
                  "num_examples": draw(st.integers(-10, 10**9))}
        return encode(Message("update", fields, (np.full(MODEL_SIZE, draw(st.floats(-1, 1)), np.float32),)))
    if kind == "eval":
        # MNIST is evaluated on the server: every report is refused, none may touch the history.
        sums = dict(EVAL_SUMS)
        key = draw(st.sampled_from([*sums, "extra"]))
        sums[key] = draw(json_values | st.integers(-(2**60), 2**60))
        return raw({"type": "eval", "model_version": draw(st.integers(-3, 10)), "sums": sums, "arrays": []})
    if kind == "secagg":
        # This run has no secure aggregation: every SecAgg frame, well formed or not, closes its connection.
        t = draw(st.sampled_from(sorted(SECAGG_TYPES)))
        fields = {"session": draw(st.integers(-3, 2**64))}
        if t == "sa_masked":
            fields |= {k: v for k, v in UPDATE_FIELDS.items() if k not in ("codec", "codec_params")}
        n = draw(st.integers(0, 4))
        shapes = [[draw(st.sampled_from(["|u1", "<u4", "<f4"])), [draw(st.integers(0, 200))]] for _ in range(n)]
        header = {"type": t, **fields, "arrays": shapes}
        if draw(st.booleans()):
            header[draw(st.sampled_from([*header, "extra"]))] = draw(json_values)
        return raw(header, bytes(draw(st.integers(0, 2048))))
    pick = draw(st.integers(0, 10**6))  # drawn the same way whatever REPLAYS holds: hypothesis needs that
    return REPLAYS[pick % len(REPLAYS)] if REPLAYS else VALID_UPDATE


def _classify(frame: bytes) -> str:
    try:
        msg = decode(frame)
    except ProtocolError:
        return "closing"
    if msg.type in ("update", "pause", "eval", "stats"):
        return "kept"
    if msg.type == "ready":
        return "skip"  # would make a fuzz connection selectable
    if msg.type == "hello":
        return "second_hello"  # after a first hello: refused as unexpected
    return "closing"


class Fuzzer:
    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.kept: list = []
        self.sent = 0
        self.replies = 0

    async def _open(self, hello: bool = True):
        ws = await websockets.connect(self.ws_url, compression=None, max_size=None, open_timeout=30)
        if hello:
            await ws.send(HELLO)
        return ws

    async def _drain(self, ws) -> None:
        try:
            async for _ in ws:
                self.replies += 1
        except websockets.ConnectionClosed:
            pass

    async def batch(self, items: list[tuple[bytes, bool]]) -> None:
        while len(self.kept) < 4:
            ws = await self._open()
            self.kept.append((ws, asyncio.create_task(self._drain(ws))))
        closing = []
        for i, (frame, with_hello) in enumerate(items):
            how = _classify(frame)
            if how == "skip":
                continue
            if how == "kept":
                ws, _ = self.kept[i % len(self.kept)]
                await ws.send(frame)
            else:
                closing.append((frame, with_hello or how == "second_hello"))
            self.sent += 1
        await asyncio.gather(*(self._one_shot(f, h) for f, h in closing))
        await asyncio.sleep(0.05)
        # Replace any long-lived connection the server closed (it must not close them, but don't stop on it).
        for j, (ws, drain) in enumerate(self.kept):
            if drain.done():
                self.kept[j] = (w := await self._open(), asyncio.create_task(self._drain(w)))

    async def close(self) -> None:
        for ws, drain in self.kept:
            await ws.close()
            drain.cancel()
        self.kept = []

    async def _one_shot(self, frame: bytes, with_hello: bool) -> None:
        try:
            ws = await self._open(with_hello)
            await ws.send(frame)
            try:
                await asyncio.wait_for(self._drain(ws), 3)
            finally:
                await ws.close()
        except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError):
            pass


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    env = {"WEBFL_MAX_CONNECTIONS_PER_IP": "1000", "WEBFL_CONN_FRAMES_PER_S": "1e6", "WEBFL_IP_FRAMES_PER_S": "1e6",
           "WEBFL_CONN_BYTES_PER_S": "1e10", "WEBFL_IP_BYTES_PER_S": "1e10"}
    server = start_server(tmp_path_factory.mktemp("fuzz") / "data", "--log-level", "warning", env=env)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    with pytest.MonkeyPatch.context() as patch:
        # A keepalive ping's payload comes from the global ``random``; drawn in this thread
        # while Hypothesis generates in the other, it reads as a strategy using ``random``.
        patch.setattr(websockets.asyncio.connection, "random", random.Random())
        thread.start()
        yield server, loop
        asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
    server.stop()


def test_fuzzing_a_live_server_during_honest_rounds(live):
    server, loop = live
    initial = global_params(server).astype(np.float64)
    sim = Simulation(server.url, HONEST, "iid", seed=3, token=server.token)
    deltas: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
    for i, v in enumerate(sim.volunteers):
        def craft(delta, job, i=i, v=v):
            deltas[(job.round, i)] = (delta.astype(np.float64), v.num_examples)  # the last one per round counts
            return delta

        def train(progress=None, v=v):
            frame = type(v).train(v, progress)
            REPLAYS.append(frame)
            return frame

        v.craft_delta, v.train = craft, train
    config = {"rounds": ROUNDS, "clients_per_round": HONEST, "min_updates": HONEST, "local_epochs": 1, "deadline_s": 120,
              "aggregator": "fedavg"}
    honest = asyncio.run_coroutine_threadsafe(sim.main(config, timeout_s=600), loop)
    server.wait_for(lambda s: s["connected"] >= HONEST, what="honest volunteers")
    rss_before = rss_kb(server.proc.pid)
    fuzzer = Fuzzer(server.ws_url)

    @settings(max_examples=BATCHES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(frames(), st.booleans()), min_size=BATCH, max_size=BATCH))
    def fuzz(items):
        asyncio.run_coroutine_threadsafe(fuzzer.batch(items), loop).result(timeout=120)
        assert server.proc.poll() is None, "the server died"

    started = time.monotonic()
    fuzz()
    fuzz_s = time.monotonic() - started
    assert honest.result(timeout=600) == 0, "the honest run did not complete"
    asyncio.run_coroutine_threadsafe(fuzzer.close(), loop).result(timeout=30)
    if BATCHES >= 205:
        assert fuzzer.sent >= 10_000
    assert server.proc.poll() is None
    assert server.api("GET", "/healthz", token=None)[0] == 200
    rss_after = rss_kb(server.proc.pid)
    assert rss_after - rss_before < 300 * 1024, f"RSS grew from {rss_before} kB to {rss_after} kB"

    status = server.status()
    history = [h for h in status["history"]]
    assert len(history) == ROUNDS and all(h["participants"] == HONEST for h in history)
    # Fuzzed eval reports never reach a round the server evaluates itself.
    assert all(h["eval_source"] == "server" and h["eval_volunteers"] == 0 for h in history)
    expected = initial.copy()
    for h in history:
        ups = [deltas[(h["round"], i)] for i in range(HONEST)]
        expected += np.average(np.stack([d for d, _ in ups]), axis=0, weights=[n for _, n in ups])
    np.testing.assert_allclose(global_params(server), expected, rtol=0, atol=1e-5)
    rejections = status["rejections"]
    assert rejections.get("protocol", 0) > 0.2 * fuzzer.sent and sum(rejections.values()) > 0.5 * fuzzer.sent, rejections
    print(f"\nfuzz: {fuzzer.sent} frames in {fuzz_s:.0f} s, RSS {rss_before} -> {rss_after} kB, rejections {rejections}")


# -- the admin HTTP API ------------------------------------------------------------------

API_PATHS = ["/api/rounds", "/api/rounds/stop", "/api/status", "/api/model", "/api/config", "/api/embed/check",
             "/api/tasks", "/api/tasks/mnist", "/api/tasks/mnist/rounds", "/api/tasks/mnist/status", "/api/tasks/nope/history", "/t/mnist",
             "/admin", "/admin/login", "/admin/logout", "/", "/embed", "/healthz", "/api/nothing", "/static/../admin"]
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
json_numbers = st.sampled_from([b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 5000, b"-0", b"1e-400"])


@st.composite
def bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["json", "run", "valid_run", "valid_run", "number", "deep", "mutated", "form", "random", "huge", "empty"]))
    if kind == "valid_run":
        return json.dumps({"rounds": draw(st.integers(1, 5)), "clients_per_round": draw(st.integers(1, 5)), "min_updates": 1}).encode()
    if kind == "huge":  # over the 1 MiB body limit
        return b'{"x": "' + b"a" * draw(st.integers(1 << 20, 3 << 20)) + b'"}'
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "run":  # a run config with some fields right, some wrong
        names = ["rounds", "clients_per_round", "lr", "deadline_s", "min_updates", "codec", "aggregator", "norm_bound",
                 "mode", "buffer_size", "server_opt", "downlink", "select_timeout_s", "dp", "bogus"]
        dp_like = st.dictionaries(st.sampled_from(["noise_multiplier", "clip", "delta", "sampling", "population", "max_epsilon", "count_noise"]),
                                  json_values | st.sampled_from(["adaptive", "poisson", "pld"]), max_size=5)
        fields_ = draw(st.dictionaries(st.sampled_from(names), json_values | dp_like | st.sampled_from(
            ["clipped:window=100000000000000000000", "multikrum:f=10", "topk:0.1+q8", "fedadam:lr=1e400", "x=5"]), max_size=5))
        return json.dumps(fields_).encode()
    if kind == "number":
        return b'{"%s": %s}' % (draw(st.sampled_from([b"rounds", b"lr", b"deadline_s"])), draw(json_numbers))
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    if kind == "mutated":
        base = bytearray(json.dumps({"rounds": 1, "clients_per_round": 2, "aggregator": "median"}).encode())
        for pos in draw(st.lists(st.integers(0, len(base) - 1), min_size=1, max_size=6)):
            base[pos] = draw(st.integers(0, 255))
        return bytes(base)
    if kind == "form":
        return urllib.parse.urlencode(draw(st.dictionaries(st.sampled_from(["csrf", "token", "x"]), printable, max_size=3))).encode()
    if kind == "random":
        return draw(st.binary(max_size=2048))
    return b""


@st.composite
def admin_requests(draw, auth: dict) -> tuple[str, str, dict, bytes]:
    path = draw(st.sampled_from(API_PATHS + ["/api/rounds"] * 4))  # the parser most worth fuzzing
    usual = "POST" if path in ("/api/rounds", "/api/rounds/stop", "/api/tasks", "/api/tasks/mnist/rounds", "/admin/login", "/admin/logout") else "GET"
    usual = "PUT" if path == "/api/tasks/mnist" else usual  # redefining a task: the definition's parser
    method = draw(st.sampled_from([usual] * 6 + ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]))
    headers = {}
    bearer = draw(st.sampled_from(["none", "valid", "valid", "wrong", "garbage"]))
    if bearer != "none":
        headers["Authorization"] = {"valid": f"Bearer {auth['token']}", "wrong": "Bearer nope"}.get(bearer) or draw(printable)
    cookie = draw(st.sampled_from(["none", "session", "forged", "garbage"]))
    if cookie == "session":
        headers["Cookie"] = f"webfl_admin={auth['cookie']}; webfl_login_csrf={auth['login_csrf']}"
    elif cookie == "forged":
        value = auth["cookie"]
        pos = draw(st.integers(0, len(value) - 1))
        headers["Cookie"] = "webfl_admin=" + value[:pos] + draw(st.sampled_from("A_-.x")) + value[pos + 1:]
    elif cookie == "garbage":
        headers["Cookie"] = draw(printable)
    if draw(st.booleans()):
        headers["X-CSRF-Token"] = draw(st.sampled_from([auth["csrf"], auth["csrf"], "forged"]) | printable)
    for name in ("Content-Type", "Origin", "X-Forwarded-For", "Accept-Encoding", "Content-Length"):
        if draw(st.integers(0, 6)) == 0:
            headers[name] = draw(st.sampled_from(["application/json", "null", "http://evil.example", "-1", "9" * 30]) | printable)
    return method, path, headers, draw(bodies())


def _admin_session(server) -> dict:
    import re

    import httpx2

    with httpx2.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/admin").text
        login_csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        answer = client.post("/admin/login", data={"csrf": login_csrf, "token": server.token}, follow_redirects=True)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', answer.text).group(1)
        return {"token": server.token, "cookie": client.cookies["webfl_admin"], "csrf": csrf, "login_csrf": login_csrf}


def test_fuzzing_the_admin_http_api(tmp_path):
    """Bodies, headers and cookies against every HTTP endpoint: never a 500, the server
    alive and its memory bounded, the model unchanged (no volunteer is connected, so no
    run that a valid request starts can commit)."""
    import socket

    server = start_server(tmp_path / "data", env={"WEBFL_LOGINS_PER_MINUTE": "1e6"})
    try:
        auth = _admin_session(server)
        before = global_params(server)
        rss_before = rss_kb(server.proc.pid)
        host, port = server.url.removeprefix("http://").split(":")
        seen: dict[int, int] = {}

        def send(method, path, headers, body):
            # A raw request: no client library second-guesses the headers or the body.
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
            if "Content-Length" not in headers:
                lines.append(f"Content-Length: {len(body)}")
            lines += [f"{k}: {v}" for k, v in headers.items()]
            cut = False
            with socket.create_connection((host, int(port)), timeout=30) as s:
                try:
                    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                except (ConnectionResetError, BrokenPipeError):
                    cut = True
                    # Refused and closed while the body still streamed in: only a body over the
                    # bound, or one its Content-Length does not describe, may be cut short.
                    declared = headers.get("Content-Length", str(len(body)))
                    assert len(body) > MAX_BODY_BYTES or declared != str(len(body)), (method, path, len(body))
                answer = read_to_close(s)
            if not answer.startswith(b"HTTP/1.1 "):
                assert cut, (method, path, answer[:100])  # only a cut-short body may go unanswered
                return 0
            return int(answer.split(b" ", 2)[1])

        @settings(max_examples=int(os.environ.get("WEBFL_FUZZ_HTTP", 1500)), deadline=None, database=None,
                  derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(admin_requests(auth))
        def fuzz(request):
            code = send(*request)
            seen[code] = seen.get(code, 0) + 1
            assert code < 500, (code, request[:3], request[3][:200])
            assert server.proc.poll() is None, "the server died"

        started = time.monotonic()
        fuzz()
        fuzz_s = time.monotonic() - started
        server.api("POST", "/api/rounds/stop")
        assert server.api("GET", "/healthz", token=None)[0] == 200
        status = server.status()
        assert status["model_version"] == 0 and status["history"] == []
        np.testing.assert_array_equal(global_params(server), before)
        rss_after = rss_kb(server.proc.pid)
        assert rss_after - rss_before < 100 * 1024, f"RSS grew from {rss_before} kB to {rss_after} kB"
        assert "Traceback" not in server.log()
        assert {400, 401, 403, 413}.issubset(seen) and seen.get(202, 0) > 0, str(sorted(seen.items()))
        print(f"\nadmin API fuzz: {sum(seen.values())} requests in {fuzz_s:.0f} s, statuses {dict(sorted(seen.items()))}")
    finally:
        server.stop()
