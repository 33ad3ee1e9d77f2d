"""``webfl.core.browser.BrowserSession``, natively: what the worker relies on, without a browser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from webfl import __version__
from webfl.core.browser import BrowserSession, version
from webfl.core.data import Dataset
from webfl.core.protocol import Message, decode, encode
from webfl.core.tasks import get_task

TASK = get_task("mnist", "softmax")  # small: tests need no real training quality


def welcome() -> bytes:
    shard = {"index": 2, "count": 10, "partition": "iid", "url": "/data/mnist/shards/2.npz", "demo": True}
    return encode(Message("welcome", {"version": __version__, "volunteer": "v1", "task": TASK.to_dict(), "shard": shard}))


def model(version: int = 0) -> bytes:
    params = TASK.build_model().init(0)
    return encode(Message("model", {"model_version": version, "codec": "none", "codec_params": {}}, (params,)))


def task(round_: int = 1) -> bytes:
    config = {"epochs": 1, "batch_size": 16, "lr": 0.1, "seed": 3}
    return encode(Message("task", {"round": round_, "model_version": 0, "deadline_s": 30.0, "config": config, "codec": "none", "token": "tok"}))


def types(frames: list[bytes]) -> list[str]:
    return [decode(f).type for f in frames]


def shard_npz(n: int = 40) -> bytes:
    rng = np.random.default_rng(0)
    return Dataset(rng.integers(0, 256, (n, 784), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)).to_npz()


def connected(session: BrowserSession) -> list[bytes]:
    assert types([session.hello()]) == ["hello"]
    out = session.receive(welcome())
    return out + session.receive(model())


def test_version_is_the_package_version():
    assert version() == __version__


def test_demo_volunteer_asks_for_its_shard_then_announces_ready():
    session = BrowserSession("test")
    assert connected(session) == []  # no data yet: not ready
    assert session.needs_data() and session.shard_url() == "/data/mnist/shards/2.npz"
    assert types(session.use_shard(shard_npz())) == ["ready"]
    assert not session.needs_data()
    snap = json.loads(session.snapshot())
    assert snap["data"]["kind"] == "demo" and snap["data"]["examples"] == 40
    assert snap["state"] == "idle"


def test_trains_reports_progress_and_counts_accepted_rounds():
    session = BrowserSession("test")
    connected(session)
    session.use_shard(shard_npz())
    assert session.receive(task(1)) == []
    assert session.should_train()
    calls = []
    update = decode(session.train(lambda *args: calls.append(args)))
    assert update.type == "update" and update["round"] == 1 and update["token"] == "tok"
    epochs = {c[1] for c in calls}
    assert epochs == {1} and calls[-1][2] == calls[-1][3] - 1  # (epoch, epochs, batch, batches, loss)
    assert types(session.receive(encode(Message("accept", {"round": 1})))) == ["ready"]
    assert json.loads(session.snapshot())["rounds_accepted"] == [1]


def test_batch_by_batch_training_gives_the_same_update_as_one_call():
    """The worker runs train_batch() once per event-loop turn; the result must not depend on it."""
    frames = []
    for stepwise in (False, True):
        session = BrowserSession("test")
        connected(session)
        session.use_shard(shard_npz())
        session.receive(task(1))
        if stepwise:
            session.start_training()
            steps = []
            while step := session.train_batch():
                steps.append(json.loads(step))
            frames.append(session.take_update())
            assert [(s["epoch"], s["batch"]) for s in steps] == [(0, b) for b in range(steps[0]["batches"])]
            assert session.take_update() == b""  # handed over once
        else:
            frames.append(session.train())
        assert json.loads(session.snapshot())["pending_round"] == 1
    a, b = decode(frames[0]), decode(frames[1])
    assert a.type == b.type == "update"
    np.testing.assert_array_equal(a.arrays[0], b.arrays[0])


def test_train_batch_without_a_started_job_is_an_error():
    with pytest.raises(RuntimeError, match="no training started"):
        BrowserSession("test").train_batch()


def test_pause_survives_a_reconnect():
    session = BrowserSession("test")
    connected(session)
    session.use_shard(shard_npz())
    assert types(session.pause()) == ["pause"]
    session.closed()
    # A new connection: hello resets the session, but the volunteer still wants a pause,
    # so welcome answers with pause instead of ready.
    session.hello()
    assert types(session.receive(welcome())) == ["pause"]
    assert session.state == "paused"
    assert session.receive(task(2)) == [] and not session.should_train()
    assert types(session.resume()) == ["ready"]
    assert json.loads(session.snapshot())["paused"] is False


def test_own_csv_and_a_helpful_error():
    session = BrowserSession("test")
    connected(session)
    with pytest.raises(ValueError, match="784 features"):
        session.use_csv("label,a\n1,2\n", 784, 10, "bad.csv")
    rows = "\n".join("3," + ",".join(["0"] * 784) for _ in range(5))
    assert types(session.use_csv(rows, 784, 10, "mine.csv")) == ["ready"]
    assert json.loads(session.snapshot())["data"] == {"kind": "csv", "name": "mine.csv", "examples": 5}


def test_csv_parsed_before_connecting_is_ready_once_the_model_arrives():
    # The worker parses the file first, so a bad file is reported before joining.
    session = BrowserSession("test")
    rows = "\n".join("7," + ",".join(["255"] * 784) for _ in range(3))
    assert session.use_csv(rows, 784, 10, "early.csv") == []
    assert types(connected(session)) == ["ready"]
    assert not session.needs_data()
