"""A run's end reaches every volunteer with its reason: the status frame's ``ended``."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
from rounds_harness import TASK as _TASK, RecordingCoordinator, Volunteer, held_out, make_engine, small, until

from test_privacy_rounds import dp_run, rdp_epsilon
from test_volunteer import DATA, TASK, joined, model_frame, server
from webfl import __version__
from webfl.core.browser import BrowserSession
from webfl.core.protocol import Message, decode, encode
from webfl.core.volunteer import Volunteer as CoreVolunteer
from webfl.server.engine import RoundEngine, RunConfig
from webfl.server.rounds.announce import BATCH
from webfl.server.store import Store


def config(**kw) -> RunConfig:
    return RunConfig.from_json({"deadline_s": 30, "max_wait_s": 0, "clients_per_round": 1, **kw})


def last_status(v: Volunteer) -> Message:
    return v.of("status")[-1]


def test_a_completed_run_says_so_and_a_new_run_clears_it(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        assert decode(engine.status_frame())["ended"] is None  # no run yet: nothing ended
        v.ready()
        engine.start(config(rounds=1))
        await until(lambda: v.task() is not None, what="the task")
        assert last_status(v)["ended"] is None and last_status(v)["run"] == [0, 1]
        assert (await v.update(small(0))).accepted
        await until(lambda: not engine.running, what="the run to end")
        assert last_status(v)["run"] == [1, 1] and last_status(v)["ended"] == "completed"
        # A volunteer connecting later is told too: sockets.py sends it engine.status_frame().
        assert decode(engine.status_frame())["ended"] == "completed"
        engine.start(config(rounds=1))
        await until(lambda: last_status(v)["run"] == [0, 1], what="the new run's status")
        assert last_status(v)["ended"] is None
        await engine.stop()

    asyncio.run(main())


class Publishes(RecordingCoordinator):
    """Records every publish: its bytes and to whom (None: everyone)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, list[str] | None]] = []

    async def publish(self, frame, to=None):
        self.sent.append((frame, None if to is None else list(to)))
        return await super().publish(frame, to)


def test_the_end_is_paced_one_small_frame_a_volunteer_after_the_last_notice(tmp_path):
    """The run's end goes as its start does: in batches, the same bytes for all, with the
    history since the last notice that reached everyone (none), never one send to all."""
    async def main():
        coord = Publishes()
        engine = RoundEngine(_TASK, Store(tmp_path / "webfl.sqlite3"), coord, held_out(), 0)
        trainer = Volunteer(engine, coord, "trainer")
        idle = [Volunteer(engine, coord, f"idle{i:03d}") for i in range(249)]
        trainer.ready()
        engine.start(config(rounds=2))
        for r in range(2):
            await until(lambda: len(trainer.of("task")) == r + 1, what=f"task {r + 1}")
            assert (await trainer.update(small(r))).accepted
            trainer.ready()
        await until(lambda: not engine.running, what="the run to end")
        ends = [(frame, to) for frame, to in coord.sent if decode(frame).type == "status" and decode(frame)["ended"] == "completed"]
        assert len({frame for frame, _ in ends}) == 1 and all(to is not None and len(to) <= BATCH for _, to in ends)
        assert sorted(v for _, to in ends for v in to) == sorted([trainer.id] + [v.id for v in idle])  # once each
        end = decode(ends[0][0])
        assert (end["history"], end["history_from"], end["run"], end["state"]) == ([], 2, [2, 2], "idle")
        for v in (trainer, idle[0], idle[-1]):
            assert v.inbox[-1]["ended"] == "completed" and v.of("model_notice")[-1]["model_version"] == 2
            # What the volunteer shows from these frames: the whole history, and the end.
            core = CoreVolunteer()
            for m in [m for m in v.inbox if m.type in ("status", "model_notice")]:
                core.receive(encode(m))
            assert core.history == [[r.round, r.accuracy] for r in engine.history] and core.snapshot()["run_ended"] == "completed"

    asyncio.run(main())


def test_a_run_stopped_by_the_operator_mid_round_says_stopped(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        v.ready()
        engine.start(config(rounds=5))
        await until(lambda: v.task() is not None, what="the task")
        assert await engine.stop()  # the open round is abandoned
        assert last_status(v)["run"] == [0, 5] and last_status(v)["ended"] == "stopped"

    asyncio.run(main())


def test_a_run_that_spent_its_privacy_budget_says_max_epsilon(tmp_path):
    z = 2.0
    cap = (rdp_epsilon(z, 1) + rdp_epsilon(z, 2)) / 2  # one round fits, a second would not

    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        v.ready()
        engine.start(dp_run({"noise_multiplier": z, "clip": 1.0, "max_epsilon": cap}, rounds=10, clients_per_round=1))
        await until(lambda: v.task() is not None, what="the task")
        assert (await v.update(small(0))).accepted
        await until(lambda: not engine.running, what="the run to stop")
        assert last_status(v)["run"] == [1, 10] and last_status(v)["ended"] == "max_epsilon"

    asyncio.run(main())


def test_the_volunteer_keeps_a_known_reason_and_ignores_anything_else():
    v = joined()
    for ended, kept in (("stopped", "stopped"), ("max_epsilon", "max_epsilon"), ("<script>", None), (None, None)):
        v.receive(server("status", state="idle", round=2, model_version=2, connected=1, history=[], run=[2, 5], ended=ended))
        assert v.snapshot()["run_ended"] == kept
    v.receive(server("status", state="idle", round=2, model_version=2, connected=1, history=[]))  # an older server
    assert v.snapshot()["run_ended"] is None


# -- a stop reaches a browser volunteer mid-training ---------------------------------


def training_session(epochs: int = 50) -> BrowserSession:
    """A browser session in the middle of a long local training job."""
    s = BrowserSession("test")
    s.hello()
    s.receive(server("welcome", version=__version__, volunteer="v1", task=TASK.to_dict(), shard=None, resume="r1"))
    buf = io.BytesIO()
    np.savez(buf, x=DATA.x, y=DATA.y)
    s.use_shard(buf.getvalue())
    s.receive(model_frame(0))
    config = {"epochs": epochs, "batch_size": 5, "lr": 0.1, "seed": 3}
    s.receive(server("task", round=1, model_version=0, deadline_s=30.0, config=config, codec="none", token="tok"))
    assert s.should_train()
    s.start_training()
    assert s.train_batch()
    return s


def test_the_servers_stop_read_ahead_stops_the_training_at_the_next_batch_with_no_update(tmp_path):
    """The status frame the engine really sends on a stop, read ahead of its turn as the
    worker does (``notice``): the next batch ends the job, nothing is pending, ``ready`` goes."""
    async def stopped_frames() -> tuple[bytes, bytes]:
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        v.ready()
        engine.start(config(rounds=5))
        await until(lambda: v.task() is not None, what="the task")
        running = encode(last_status(v))
        assert await engine.stop()
        return running, encode(last_status(v))

    running, stopped = asyncio.run(stopped_frames())
    s = training_session()
    assert not s.notice(running)  # a status of a run still going leaves the job running
    assert s.train_batch()
    assert s.notice(stopped)
    assert s.train_batch() == "" and not s.should_train()
    assert decode(s.take_update()).type == "ready"  # available for the next run; no update made
    assert s.pending_record() == ""
    assert s.receive(stopped) == []  # the frame in its turn: the page now says why
    assert json.loads(s.snapshot())["run_ended"] == "stopped"


def test_a_status_read_ahead_is_shown_at_once_and_again_in_its_turn_changes_nothing():
    """A run's start is announced paced, so its status can land behind the task: read ahead,
    the page shows "round 1 of 4" during the job rather than after it."""
    s = training_session()
    status = server("status", state="training", round=1, model_version=0, connected=1, history=[[1, 0.5]], history_from=0, run=[0, 4])
    assert not s.notice(status)
    shown = json.loads(s.snapshot())
    assert shown["run"] == [0, 4] and shown["history"] == [[1, 0.5]]
    assert s.train_batch()  # the job goes on
    s.receive(status)
    again = json.loads(s.snapshot())
    assert again["run"] == shown["run"] and again["history"] == shown["history"]


def test_an_older_status_received_in_its_turn_does_not_undo_a_newer_one_read_ahead():
    """The welcome's status (no run) can still wait in the worker's inbox when the run's
    start arrives and is read ahead: received in its turn, it must not put the page back
    to "round 1" without "of 4" for the rest of the job."""
    s = training_session()
    before = server("status", state="idle", round=0, model_version=0, connected=1, history=[], history_from=0, run=None)
    start = server("status", state="training", round=1, model_version=0, connected=1, history=[], history_from=0, run=[0, 4])
    for frame in (before, start):  # as they arrive
        s.notice(frame)
    assert json.loads(s.snapshot())["run"] == [0, 4]
    for frame in (before, start):  # in their turn
        s.receive(frame)
        assert json.loads(s.snapshot())["run"] == [0, 4]
    later = server("status", state="training", round=2, model_version=1, connected=1, history=[[1, 0.5]], history_from=0, run=[1, 4])
    s.receive(later)  # not read ahead (the simulator's way): shown in its turn
    assert json.loads(s.snapshot())["run"] == [1, 4]


def test_a_reject_for_the_training_round_stops_it_one_for_another_round_does_not():
    s = training_session()
    assert not s.notice(server("reject", reason="round 7 is over", round=7))
    assert not s.notice(b"not a frame")  # left for receive, in its turn, to refuse
    assert s.train_batch()
    assert s.notice(server("reject", reason="secure aggregation round 1: dropped", round=1))
    assert s.train_batch() == "" and decode(s.take_update()).type == "ready"


def test_a_stop_while_paused_sends_neither_update_nor_ready():
    s = training_session()
    s.pause()  # the page's pause, queued behind the job: not available afterwards
    s.notice(server("status", state="idle", round=1, model_version=0, connected=1, history=[], run=[0, 5], ended="stopped"))
    assert s.train_batch() == ""
    assert decode(s.take_update()).type == "pause" and s.state == "paused"
