"""The sans-I/O volunteer session, driven frame by frame."""

import numpy as np
import pytest

from webfl import __version__
from webfl.core.data import Dataset, features
from webfl.core.evaluation import evaluation_sums, holdout_split
from webfl.core.protocol import Message, ProtocolError, decode, encode
from webfl.core.tasks import Task
from webfl.core.volunteer import SessionState, Volunteer

TASK = Task.from_json({
    "name": "tiny", "title": "Tiny", "description": "a test task", "kind": "tabular",
    "features": ["a", "b", "c", "d"], "label": "y", "classes": ["x", "y", "z"], "model": {"type": "mlp", "hidden": []},
})
DATA = Dataset(np.random.default_rng(0).integers(0, 255, (20, 4), dtype=np.uint8), np.arange(20, dtype=np.uint8) % 3)
MODEL = TASK.build_model()


def server(kind: str, arrays=(), **fields) -> bytes:
    return encode(Message(kind, fields, arrays))


def welcome() -> bytes:
    return server("welcome", version=__version__, volunteer="v1", task=TASK.to_dict(), shard=None)


def model_frame(version: int, params=None) -> bytes:
    params = MODEL.init(0) if params is None else params
    return server("model", (params,), model_version=version, codec="none", codec_params={})


def task_frame(round_: int = 1, version: int = 0) -> bytes:
    config = {"epochs": 1, "batch_size": 5, "lr": 0.1, "seed": 3}
    return server("task", round=round_, model_version=version, deadline_s=30.0, config=config, codec="none", token="tok")


def joined(data=DATA) -> Volunteer:
    v = Volunteer(data)
    v.hello()
    v.receive(welcome())
    v.receive(model_frame(0))
    return v


def test_hello_then_ready_once_model_and_data_are_there():
    transitions = []
    v = Volunteer(on_transition=lambda a, b: transitions.append((a.value, b.value)))
    hello = decode(v.hello())
    assert hello.type == "hello" and hello["version"] == __version__ and "none" in hello["codecs"]
    assert v.receive(welcome()) == []  # no data yet
    assert v.receive(model_frame(0)) == []
    stats, ready = v.set_data(DATA)  # TASK has no scaling: its feature statistics go first
    assert decode(stats).type == "stats" and decode(stats)["stats"]["count"] == [16.0] * 4
    assert decode(ready).fields == {"num_examples": 16}  # 20 less the 20% holdout, never trained on
    assert transitions == [("closed", "connecting"), ("connecting", "idle")]


def test_task_train_update_accept_cycle():
    v = joined()
    assert v.receive(task_frame()) == [] and v.state is SessionState.TRAINING
    update = decode(v.train())
    assert update.type == "update" and v.state is SessionState.SUBMITTED
    assert update["round"] == 1 and update["model_version"] == 0 and update["num_examples"] == 16
    (delta,) = update.arrays
    assert delta.shape == (MODEL.size,) and np.abs(delta).sum() > 0
    (ready,) = v.receive(server("accept", round=1))
    assert decode(ready).type == "ready" and v.state is SessionState.IDLE
    assert v.last_verdict == {"round": 1, "accepted": True}


def test_update_is_the_trained_delta_from_the_global_model():
    from webfl.core.training import TrainConfig, local_train

    v = joined()
    v.receive(task_frame())
    delta = decode(v.train()).arrays[0]
    train, _ = holdout_split(len(DATA), TASK.holdout, 0)  # the holdout is never trained on
    expected = local_train(MODEL, MODEL.init(0), features(DATA.x)[train], DATA.y[train], TrainConfig(1, 5, 0.1, 3)).params - MODEL.init(0)
    np.testing.assert_array_equal(delta, expected)


def test_reject_returns_to_idle_with_the_reason():
    v = joined()
    v.receive(task_frame())
    v.train()
    v.receive(server("reject", reason="round 1 is not open", round=1))
    assert v.state is SessionState.IDLE and v.last_verdict["reason"] == "round 1 is not open"


def test_task_for_another_model_version_is_skipped():
    v = joined()
    assert v.receive(task_frame(round_=2, version=1)) == []
    assert v.state is SessionState.IDLE and v.job is None
    with pytest.raises(RuntimeError):
        v.train()


def test_reconnect_forgets_the_job():
    v = joined()
    v.receive(task_frame())
    v.close()
    v.hello()
    assert v.job is None and v.state is SessionState.CONNECTING


def test_paused_volunteer_ignores_tasks_until_resumed():
    v = joined()
    (pause,) = v.pause()
    assert decode(pause).type == "pause" and v.state is SessionState.PAUSED
    assert v.receive(task_frame()) == [] and v.state is SessionState.PAUSED
    (ready,) = v.resume()
    assert decode(ready).type == "ready"


def test_new_model_replaces_the_old_one_and_status_keeps_history():
    v = joined()
    params = np.full(MODEL.size, 0.5, np.float32)
    (report,) = map(decode, v.receive(model_frame(1, params)))  # not training: it evaluates the new model
    assert v.model_version == 1 and v.params.tolist() == params.tolist()
    _, holdout = holdout_split(len(DATA), TASK.holdout, 0)
    expected = evaluation_sums(MODEL, params, features(DATA.x)[holdout], DATA.y[holdout], 3)
    assert report.type == "eval" and report["model_version"] == 1 and report["sums"] == expected.to_dict()
    assert report["sums"]["examples"] == 4
    quiet = joined()
    quiet.receive(server("welcome", version=__version__, volunteer="v1", task=TASK.to_dict(), evaluate=False))
    assert quiet.receive(model_frame(1, params)) == []  # the server evaluates on its own data
    v.receive(server("status", state="idle", round=1, model_version=1, connected=3, history=[[1, 0.5]]))
    snap = v.snapshot()
    assert snap["history"] == [[1, 0.5]] and snap["bytes_down"] > 0 and snap["bytes_up"] > 0


@pytest.mark.parametrize("bad", [np.full(MODEL.size, np.nan, np.float32), np.zeros(3, np.float32)])
def test_bad_global_model_is_refused(bad):
    v = joined()
    with pytest.raises(ValueError):
        v.receive(model_frame(1, bad))
    assert v.model_version == 0


def test_volunteer_refuses_client_frames():
    v = joined()
    with pytest.raises(ProtocolError):
        v.receive(server("ready", num_examples=3))


def test_data_with_wrong_feature_count_is_refused():
    v = joined()
    with pytest.raises(ValueError, match="features"):
        v.set_data(Dataset(np.zeros((2, 5), np.uint8), np.zeros(2, np.uint8)))


@pytest.mark.parametrize(
    "run,shown",
    [([2, 5], [2, 5]), (None, None), ([1, 2, 3], None), (["1", 5], None), ([True, 5], None), ([-1, 5], None), ([1, 10**9], None)],
)
def test_the_runs_progress_is_shown_only_when_it_is_two_counts(run, shown):
    v = joined()
    extra = {} if run is None else {"run": run}
    v.receive(server("status", state="idle", round=2, model_version=2, connected=1, history=[], **extra))
    assert v.snapshot()["run"] == shown


def status(history, start=None, kind="status", version=1) -> bytes:
    fields = dict(state="idle", round=version, model_version=version, connected=1, history=history)
    if kind == "model_notice":
        fields.update(digest="d", url="/models/d.bin")
    return server(kind, **fields, **({} if start is None else {"history_from": start}))


def entries(first: int, last: int) -> list:
    return [[r, r / 1000] for r in range(first, last + 1)]


def test_incremental_notices_rebuild_the_history_a_full_status_gives():
    v = joined()
    v.receive(status(entries(1, 3), 0))  # welcome's full status
    v.receive(status(entries(4, 4), 3, "model_notice", 4))  # the newest entry only
    v.receive(status(entries(4, 5), 3, "model_notice", 5))  # from an older floor: overlaps
    assert v.history == entries(1, 5) and v.snapshot()["latest_version"] == 5
    v.receive(status(entries(6, 6), 5, "model_notice", 6))
    # One entry at a time past the kept span keeps the same last HISTORY_KEPT as a full status.
    for r in range(7, 260):
        v.receive(status(entries(r, r), r - 1, "model_notice", r))
    full = joined()
    full.receive(status(entries(60, 259), 59))  # entry r is the server's index r - 1
    assert v.history == full.history == entries(60, 259)
    # A gap (entries before the first sent are unknown here): what came is the history.
    v.receive(status(entries(300, 301), 299, "model_notice", 301))
    assert v.history == entries(300, 301)
    # Without history_from (an older server), the history is what the frame says; a notice
    # without the status fields (older server) moves only the version.
    v.receive(status(entries(1, 2)))
    v.receive(server("model_notice", model_version=400, digest="d", url="/models/d.bin"))
    assert v.history == entries(1, 2) and v.snapshot()["latest_version"] == 400
