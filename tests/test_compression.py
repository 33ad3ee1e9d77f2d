"""Compressed updates and compressed models over real sockets, through the real server."""

import urllib.request

import numpy as np
import pytest
from test_federation import simulate
from test_server import MODEL_SIZE, Client, global_params

from servers import start_server
from webfl import __version__
from webfl.core.codecs import CODECS, Encoded, get_codec
from webfl.core.downlink import apply_model, digest
from webfl.core.protocol import decode


def run_history(tmp_path, name, codec, downlink="none"):
    server = start_server(tmp_path / name)
    try:
        simulate(server, "--clients", "5", "--rounds", "3", "--local-epochs", "1", "--codec", codec, "--downlink", downlink)
        status = server.status()
        assert status["run"]["config"]["codec"] == codec and status["run"]["config"]["downlink"] == downlink
        return status["history"]
    finally:
        server.stop()


def test_compressed_runs_learn_with_a_fraction_of_the_bytes(tmp_path):
    plain = run_history(tmp_path, "none", "none")
    q8 = run_history(tmp_path, "q8", "q8", "fp16")
    topk = run_history(tmp_path, "topk", "topk:0.01+q8", "delta:q8")  # volunteers check every model digest
    for history in (plain, q8, topk):
        assert len(history) == 3 and all(h["participants"] == 5 for h in history)
    up = [[h["bytes_up"] for h in hist] for hist in (plain, q8, topk)]
    down = [[h["bytes_down"] for h in hist] for hist in (plain, q8, topk)]
    for r in range(3):
        assert up[1][r] / up[0][r] < 0.26, up
        assert up[2][r] / up[0][r] < 0.01, up
    # The model goes with the tasks: round 1's volunteers hold model 0 since joining, so it
    # sends only tasks and notices; later rounds send the last commit's model or delta.
    assert all(d[0] < MODEL_SIZE for d in down), down
    for r in (1, 2):
        assert down[0][r] > 5 * MODEL_SIZE * 4, down
        assert down[1][r] / down[0][r] < 0.51, down  # fp16 models
        assert down[2][r] / down[0][r] < 0.26, down  # q8 deltas
    assert plain[-1]["accuracy"] > 0.8, plain
    assert q8[-1]["accuracy"] > plain[-1]["accuracy"] - 0.02, (q8, plain)
    assert topk[-1]["accuracy"] > 0.5 and topk[-1]["accuracy"] > topk[0]["accuracy"], topk


def start_round(server, codec, **extra):
    body = {"rounds": 1, "clients_per_round": 1, "min_updates": 1, "deadline_s": 60, "codec": codec, **extra}
    code, reply = server.api("POST", "/api/rounds", body)
    assert code == 202, reply


def full_client(server):
    c = Client(server)
    c.send("hello", version=__version__, codecs=list(CODECS), agent="test")
    c.recv("welcome")
    model = c.recv("model")
    c.send("ready", num_examples=100)
    return c, model


def send_update(c, task, enc, **overrides):
    fields = dict(round=task["round"], model_version=task["model_version"], num_examples=100, loss=1.0, accuracy=0.5,
                  codec=task["codec"], codec_params=enc.params, token=task["token"])
    c.send("update", tuple(enc.arrays), **{**fields, **overrides})
    return c.recv_verdict()


def test_malformed_compressed_updates_get_a_reject_and_leave_the_model_alone(server):
    c, _ = full_client(server)
    before = global_params(server)
    start_round(server, "q8")
    task = c.recv("task")
    assert task["codec"] == "q8"
    delta = np.random.default_rng(0).normal(0, 0.01, MODEL_SIZE).astype(np.float32)
    deflated = get_codec("q8").encode(delta, np.random.default_rng(1))
    enc = Encoded(*get_codec("q8")._encode(delta, np.random.default_rng(1)))  # the layout before deflate
    codes, scales = enc.arrays
    nan_scales = scales.copy()
    nan_scales[3, 1] = np.nan
    cases = [
        ((codes[:-10], scales), {}, "array 0 must be"),  # truncated
        ((codes, scales[:-1]), {}, "array 1 must be"),  # wrong block count
        ((codes, nan_scales), {}, "NaN or Inf"),
        ((codes,), {}, "expected 2 array(s)"),
        ((codes, scales), {"codec_params": {"deflate": True}}, "deflated payload"),
        ((codes, scales), {"codec_params": {"seed": 3}}, "unexpected codec parameter"),
        ((deflated.arrays[0][:-10],), {"codec_params": deflated.params}, "deflated payload"),  # truncated stream
    ]
    for arrays, overrides, reason in cases:
        bad = Encoded(enc.params, tuple(arrays))
        verdict = send_update(c, task, bad, **overrides)
        assert verdict.type == "reject" and reason in verdict["reason"], (reason, verdict.fields)
    np.testing.assert_array_equal(global_params(server), before)
    assert send_update(c, task, deflated).type == "accept"
    c.recv("model_notice")
    expected = before + get_codec("q8").decode(deflated, MODEL_SIZE)
    np.testing.assert_allclose(global_params(server), expected, rtol=0, atol=1e-6)


def test_volunteers_that_lack_the_codec_are_not_selected(server):
    old = Client(server)
    old.send("hello", version=__version__, codecs=["none", "q8"], agent="old")
    old.recv("welcome")
    old.recv("model")
    old.send("ready", num_examples=100)
    c, _ = full_client(server)
    server.wait_for(lambda s: s["volunteers"]["ready"] == 2, timeout=30, what="2 ready volunteers")
    start_round(server, "topk:0.01+q8", clients_per_round=2, select_timeout_s=0.2)
    task = c.recv("task")
    enc = get_codec(task["codec"]).encode(np.full(MODEL_SIZE, 0.01, np.float32), np.random.default_rng(0))
    assert send_update(c, task, enc).type == "accept"
    # The old volunteer hears of the commit, and never got a task.
    frames = []
    while not frames or frames[-1] != "model_notice":
        frames.append(decode(old.ws.recv(timeout=30)).type)
    assert "task" not in frames
    assert "not selectable: codec topk:0.01+q8 needs topk, q8" in server.log()


def test_delta_downlink_reaches_every_volunteer_bit_exact_and_reconnects_catch_up(server):
    c, first = full_client(server)
    held, version = apply_model(None, -1, first, MODEL_SIZE), first["model_version"]
    start_round(server, "none", rounds=2, downlink="delta:q8")
    rng = np.random.default_rng(0)
    snapshots = {}
    for r in (1, 2):
        # The model a task trains comes just before it: from round 2 on, a q8 delta.
        while (msg := decode(c.ws.recv(timeout=30))).type != "task":
            if msg.type == "model":
                assert msg["base_version"] == version and msg["codec"] == "q8"
                snapshots[version] = held
                held, version = apply_model(held, version, msg, MODEL_SIZE), msg["model_version"]  # checks the digest
        assert msg["model_version"] == version == r - 1
        enc = get_codec("none").encode(rng.normal(0, 0.02, MODEL_SIZE).astype(np.float32), rng)
        assert send_update(c, msg, enc).type == "accept"
        notice = c.recv("model_notice")
        c.send("ready", num_examples=100)
    snapshots[1] = held
    # Model 2 waits for a task; its notice says where to fetch it meanwhile.
    assert notice["model_version"] == 2 and notice["url"] == f"/models/{notice['digest']}.bin"
    with urllib.request.urlopen(server.url + notice["url"], timeout=30) as reply:
        held = np.frombuffer(reply.read(), "<f4")
    exact = global_params(server)
    assert digest(held) == notice["digest"] and 0 < np.abs(held - exact).max() < 0.01  # lossy, tracking, not drifting

    def reconnect(model_version, model_digest):
        d = Client(server)
        d.send("hello", version=__version__, codecs=list(CODECS), agent="test", model_version=model_version, model_digest=model_digest)
        d.recv("welcome")
        frames = []
        while True:
            msg = decode(d.ws.recv(timeout=30))
            if msg.type == "status":
                return frames
            frames.append(msg)

    caught_up = reconnect(0, digest(snapshots[0]))
    assert [f["base_version"] for f in caught_up] == [0, 1]
    mine, v = snapshots[0], 0
    for f in caught_up:
        mine, v = apply_model(mine, v, f, MODEL_SIZE), f["model_version"]
    assert mine.tobytes() == held.tobytes()
    assert reconnect(2, digest(held)) == []  # up to date: nothing to send
    (full,) = reconnect(1, digest(snapshots[1] + 1))  # not a model the server sent
    assert "base_version" not in full.fields
    assert apply_model(None, -1, full, MODEL_SIZE).tobytes() == held.tobytes()


@pytest.mark.parametrize(("body", "message"), [({"downlink": "zip"}, "invalid downlink"), ({"downlink": "delta:q3"}, "invalid downlink")])
def test_bad_downlinks_get_400(server, body, message):
    code, reply = server.api("POST", "/api/rounds", body)
    assert code == 400 and message in reply["error"]
