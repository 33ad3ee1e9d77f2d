"""The server against hostile and honest input, over real sockets."""

import io

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from servers import start_server
from webfl import __version__
from webfl.core.protocol import Message, decode, encode
from webfl.core.tasks import get_task

MODEL_SIZE = get_task("mnist").build_model().size


class Client:
    """A hand-driven volunteer that can send anything."""

    def __init__(self, server, **kwargs):
        self.ws = connect(server.ws_url, compression=None, max_size=None, open_timeout=10, legacy=True, **kwargs)

    def send(self, kind, arrays=(), **fields):
        self.ws.send(encode(Message(kind, fields, arrays)))

    def recv(self, kind, timeout=30):
        while True:
            msg = decode(self.ws.recv(timeout=timeout))
            if msg.type == kind:
                return msg

    def join(self):
        self.send("hello", version=__version__, codecs=["none"], agent="test")
        welcome = self.recv("welcome")
        model = self.recv("model")
        self.send("ready", num_examples=100)
        return welcome, model

    def update(self, task, delta, n=100, **overrides):
        fields = dict(round=task["round"], model_version=task["model_version"], num_examples=n, loss=1.0, accuracy=0.5,
                      codec="none", codec_params={}, token=getattr(task, "fields", task).get("token", ""))
        self.send("update", (delta.astype(np.float32),), **{**fields, **overrides})
        return self.recv_verdict()

    def recv_verdict(self):
        while True:
            msg = decode(self.ws.recv(timeout=30))
            if msg.type in ("accept", "reject"):
                return msg

    def closed_with(self, sending: bytes | str | None = None):
        with pytest.raises(ConnectionClosed) as info:
            if sending is not None:
                self.ws.send(sending)
            while True:
                self.ws.recv(timeout=15)
        return info.value.rcvd.code, info.value.rcvd.reason


def global_params(server) -> np.ndarray:
    import urllib.request

    req = urllib.request.Request(server.url + "/api/model", headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req) as resp:
        return np.load(io.BytesIO(resp.read()))["params"]


# -- admin API -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """One server for the tests whose every request is refused: none of them can change it,
    so they need not pay a server start each."""
    proc = start_server(tmp_path_factory.mktemp("refusing") / "data")
    yield proc
    proc.stop()


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/status"), ("GET", "/api/model"), ("POST", "/api/rounds"), ("POST", "/api/rounds/stop")])
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_admin_api_needs_the_token(refusing, method, path, token):
    code, body = refusing.api(method, path, {} if method == "POST" else None, token=token)
    assert code == 401 and "token" in body["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"rounds": 0}, "rounds must be between"),
        ({"rounds": "3"}, "rounds must be an integer"),
        ({"rounds": 1.5}, "rounds must be an integer"),
        ({"lr": True}, "lr must be a number"),
        ({"deadline_s": -1}, "deadline_s must be between"),
        ({"min_updates": 5, "clients_per_round": 2}, "min_updates cannot exceed"),
        ({"codec": "gzip9"}, "codec"),
        ({"aggregator": "mean-ish"}, "unknown aggregator"),
        ({"bogus": 1}, "unknown field"),
        ({"aggregator": "median", "clients_per_round": 5000}, "limit"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_run_configs_get_400_with_a_message(refusing, body, message):
    code, reply = refusing.api("POST", "/api/rounds", body)
    assert code == 400 and message in reply["error"]
    assert refusing.status()["run"] is None


def test_a_second_run_is_refused_while_one_is_active_and_stop_ends_it(server):
    assert server.api("POST", "/api/rounds", {"rounds": 2})[0] == 202
    code, reply = server.api("POST", "/api/rounds", {"rounds": 2})
    assert code == 409 and "in progress" in reply["error"]
    assert server.api("POST", "/api/rounds/stop", {}) == (200, {"stopped": True})
    status = server.status()
    assert status["state"] == "idle" and not status["run"]["running"]


def test_model_download_is_the_initial_model(server):
    params = global_params(server)
    assert params.shape == (MODEL_SIZE,) and params.dtype == np.float32
    np.testing.assert_array_equal(params, get_task("mnist").build_model().init(0))


# -- bad frames ----------------------------------------------------------------------------


def test_text_frames_are_refused(server):
    c = Client(server)
    c.ws.send("hello")
    assert c.closed_with() == (1003, "text frames are not accepted; send binary frames")


def test_garbage_is_refused(server):
    c = Client(server)
    c.ws.send(b"\x00" * 64)
    assert c.closed_with() == (1002, "not a webfl frame (bad magic)")


def test_first_frame_must_be_hello(server):
    c = Client(server)
    c.send("ready", num_examples=3)
    assert c.closed_with() == (1002, "expected hello, got ready")


def test_mismatched_client_version_is_told_to_reload(server):
    c = Client(server)
    c.send("hello", version="0.0.1", codecs=["none"])
    code, reason = c.closed_with()
    assert code == 1008 and f"does not match server version {__version__}" in reason


def test_unexpected_frame_types_close_the_connection(server):
    c = Client(server)
    c.join()
    c.send("welcome", version="x", volunteer="me", task={}, shard=None)
    assert c.closed_with() == (1002, "unexpected welcome frame from a volunteer")


def test_oversized_frames_are_refused(server):
    c = Client(server)
    c.join()
    code, reason = c.closed_with(sending=bytes(16 * 1024 * 1024 + 64 * 1024))
    assert code == 1009 and "exceeds the limit of 16777216" in reason


def test_update_outside_a_round_is_rejected_not_fatal(server):
    c = Client(server)
    c.join()
    verdict = c.update({"round": 1, "model_version": 0}, np.zeros(MODEL_SIZE))
    assert verdict.type == "reject" and "not open" in verdict["reason"]
    c.send("ready", num_examples=1)  # the connection is still usable


def test_browser_origin_must_be_allowed(server):
    with pytest.raises(Exception) as info:
        Client(server, origin="http://evil.example")
    assert "403" in str(info.value)
    Client(server, origin=server.url).join()  # the server's own origin is fine


# -- a round with hostile and honest updates ------------------------------------------------


def test_only_valid_updates_reach_the_model_and_fedavg_is_exact(server):
    a, b, spectator = Client(server), Client(server), Client(server)
    before = global_params(server)
    for c in (a, b, spectator):
        c.join()
    spectator.send("pause")
    # The pause travels on the socket, the launch over HTTP: let the server see it first.
    server.wait_for(lambda s: s["volunteers"]["paused"] == 1, timeout=10, what="the spectator paused")
    assert server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 2, "min_updates": 2, "deadline_s": 30})[0] == 202
    ta, tb = a.recv("task"), b.recv("task")
    assert ta["round"] == tb["round"] == 1 and ta["model_version"] == 0

    rng = np.random.default_rng(0)
    da, db = rng.normal(0, 0.01, MODEL_SIZE), rng.normal(0, 0.01, MODEL_SIZE)
    nan = da.copy()
    nan[5] = np.nan
    hostile = [
        (dict(delta=nan), "NaN"),
        (dict(delta=np.zeros(10)), "199210"),
        (dict(delta=da, round=7), "round 7 is not open"),
        (dict(delta=da, model_version=3), "based on model 3"),
        (dict(delta=da, codec="q8"), "uses codec 'none'"),
        (dict(delta=da, n=0), "num_examples"),
    ]
    for kwargs, reason in hostile:
        verdict = a.update(ta, **kwargs)
        assert verdict.type == "reject" and reason in verdict["reason"], verdict
    spectator_verdict = spectator.update(ta, da)
    assert spectator_verdict.type == "reject" and "not selected" in spectator_verdict["reason"]
    np.testing.assert_array_equal(global_params(server), before)

    assert a.update(ta, da, n=300).type == "accept"
    assert a.update(ta, da, n=300)["reason"] == "duplicate update for round 1"
    assert b.update(tb, db, n=100).type == "accept"
    for c in (a, b, spectator):
        assert c.recv("model_notice")["model_version"] == 1  # the model itself comes with a task

    expected = before + np.average(np.stack([da, db]).astype(np.float32), axis=0, weights=[300, 100])
    np.testing.assert_allclose(global_params(server), expected, rtol=0, atol=1e-6)
    entry = server.wait_for(lambda s: s["history"], what="a committed round")["history"][0]
    assert entry["round"] == 1 and entry["participants"] == 2 and entry["bytes_up"] > 2 * MODEL_SIZE * 4


def test_round_missing_its_minimum_is_abandoned_and_retried(server):
    a, b = Client(server), Client(server)
    a.join()
    b.join()
    before = global_params(server)
    server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 2, "min_updates": 2, "deadline_s": 1})
    first, _ = a.recv("task"), b.recv("task")
    assert a.update(first, np.zeros(MODEL_SIZE)).type == "accept"  # b never answers
    server.wait_for(lambda s: "abandoned" in server.log(), timeout=10, what="the round to be abandoned")
    late = b.update(first, np.zeros(MODEL_SIZE))  # the straggler's update after the deadline
    assert late.type == "reject" and "not open" in late["reason"]
    np.testing.assert_array_equal(global_params(server), before)
    assert server.status()["history"] == []
    for c in (a, b):
        c.send("ready", num_examples=100)
    retry = a.recv("task", timeout=10)
    assert retry["round"] == first["round"] == 1 and retry["model_version"] == 0


def test_tls_serves_https_and_wss(tmp_path):
    import subprocess

    from servers import start_server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = start_server(tmp_path / "data", tls=(cert, key))
    try:
        assert server.url.startswith("https://") and server.status()["state"] == "idle"
        welcome, model = Client(server, ssl=server.ssl_context).join()
        assert welcome.type == "welcome" and model["model_version"] == 0
    finally:
        server.stop()
