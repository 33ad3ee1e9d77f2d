"""The commit pipeline in process: all or nothing (issue 16 item 2), component states in
the checkpoint transaction, and restored on resume."""

import asyncio
import sqlite3
import time

import numpy as np
from rounds_harness import TASK, held_out, make_engine_with, small, until

from webfl.core.protocol import decode
from webfl.server.engine import RoundEngine, RunConfig
from webfl.server.store import Store


class Probe:
    """A component standing in for a learning rule (norm history): JSON fields and an array."""

    def __init__(self) -> None:
        self.seen, self.norms = 0, np.zeros(3, np.float32)

    def state(self) -> dict:
        return {"seen": self.seen, "norms": self.norms.copy()}

    def load_state(self, state: dict) -> None:
        self.seen, self.norms = state["seen"], np.array(state["norms"], np.float32)


def hostile(scale: float = 1e30) -> np.ndarray:
    return np.where(np.arange(TASK.build_model().size) % 2, scale, -scale).astype(np.float32)


def test_an_exploding_aggregate_is_refused_before_it_touches_model_chain_store_or_optimizer(tmp_path):
    async def main():
        engine, coord, (a,) = make_engine_with(tmp_path, "a")
        engine.start(RunConfig.from_json({"rounds": 2, "clients_per_round": 1, "server_opt": "fedavgm:lr=1,momentum=0.9", "deadline_s": 30}))
        engine.run.components["probe"] = probe = Probe()
        await until(lambda: a.task() is not None, what="a task")
        assert (await a.update(small(0))).accepted
        await until(lambda: engine.model_version == 1, what="commit 1")
        committed, opt_state, notices = engine.params.copy(), engine.run.opt.state().copy(), len(a.of("model_notice"))
        stored = engine.store.component_states(engine.run.id)["probe"]
        assert stored[0] == 1 and stored[1]["seen"] == 0
        probe.seen, probe.norms = 5, np.array([1, 2, 3], np.float32)
        a.ready()
        await until(lambda: len(a.of("task")) == 2, what="round 2")
        assert (await a.update(hostile())).accepted  # finite, no norm bound: the rule takes it
        a.ready()
        await until(lambda: len(a.of("task")) == 3, what="round 2 refused and retried")
        np.testing.assert_array_equal(engine.params, committed)
        np.testing.assert_array_equal(engine.run.opt.state(), opt_state)
        assert engine.run.opt.steps == 1 and probe.seen == 5
        assert engine.store.component_states(engine.run.id)["probe"][1]["seen"] == 0  # not written
        assert len(a.of("model_notice")) == notices == 1 and engine.model_frames_for(1, None)  # nothing broadcast
        # Model 0 on joining, model 1 with the task of round 2, nothing with its retry.
        assert [m["model_version"] for m in a.of("model")] == [0, 1]
        assert engine.store.latest_checkpoint()[0] == 1 and len(engine.store.history()) == 1
        assert engine.status()["run"]["rounds_done"] == 1 and engine.running
        # A fresh volunteer gets exactly the committed model.
        (frame,) = engine.model_frames_for(None, None)
        fresh = engine.model_frame()
        assert frame == fresh and decode(fresh)["model_version"] == 1
        np.testing.assert_array_equal(decode(fresh).arrays[0], committed)
        assert (await a.update(small(1))).accepted
        await until(lambda: not engine.running, what="round 2 committed")
        (version, state), = [v for k, v in engine.store.component_states(engine.run.id).items() if k == "server_opt"]
        assert version == 2 and state["steps"] == 2
        version, state = engine.store.component_states(engine.run.id)["probe"]
        assert version == 2 and state["seen"] == 5 and state["norms"].tolist() == [1, 2, 3]

    asyncio.run(main())


def test_a_failed_transaction_broadcasts_nothing_and_leaves_everything_as_stored(tmp_path):
    async def main():
        engine, coord, (a,) = make_engine_with(tmp_path, "a")
        before = engine.params.copy()

        def disk_full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        engine.store.commit_round = disk_full
        run_id = engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1, "server_opt": "fedavgm", "deadline_s": 30}))
        await until(lambda: a.task() is not None, what="a task")
        assert (await a.update(small(0))).accepted
        await until(lambda: not engine.running, what="the run to fail")
        np.testing.assert_array_equal(engine.params, before)
        assert engine.model_version == 0 and engine.history == [] and not a.of("model_notice")
        assert engine.run.opt.steps == 0 and engine.run.opt.state() is None
        (full,) = engine.model_frames_for(0, None)  # the chain is still at version 0
        np.testing.assert_array_equal(decode(full).arrays[0], before)
        with sqlite3.connect(tmp_path / "webfl.sqlite3") as db:
            assert db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone() == ("failed",)

    asyncio.run(main())


def test_resume_restores_every_component_from_the_last_commit(tmp_path, store_target):
    async def main():
        engine, coord, (a,) = make_engine_with(tmp_path, "a", target=store_target)
        engine.start(RunConfig.from_json({"rounds": 3, "clients_per_round": 1, "server_opt": "fedadam:lr=0.01", "deadline_s": 30}))
        await until(lambda: a.task() is not None, what="a task")
        assert (await a.update(small(0))).accepted
        await until(lambda: engine.model_version == 1, what="commit 1")
        saved = engine.run.opt.state().copy()
        # A second server on the same data folder, as after a kill -9: the run is still "running" there.
        restarted = RoundEngine(TASK, Store(store_target), coord, held_out(), 0)
        assert restarted.resume() == engine.run.id
        assert restarted.run.rounds_done == 1 and restarted.run.opt.steps == 1
        np.testing.assert_array_equal(restarted.run.opt.state(), saved)
        await restarted.stop()
        await engine.stop()

    asyncio.run(main())


def test_resume_restores_an_adaptive_rule_s_norm_history(tmp_path, store_target):
    """Issue 9: a resumed run's adaptive bound continues from the norms it had learnt, not
    from its prior (which would reopen the window a hostile update can slip through)."""

    async def main():
        engine, coord, vols = make_engine_with(tmp_path, *[f"v{i}" for i in range(3)], target=store_target)
        config = {"rounds": 5, "clients_per_round": 3, "aggregator": "clipped:x=3", "deadline_s": 30}
        engine.start(RunConfig.from_json(config))
        for round_ in (1, 2):
            await until(lambda: all(len(v.of("task")) == round_ for v in vols), what=f"round {round_} tasks")
            for i, v in enumerate(vols):
                assert (await v.update(small(10 * round_ + i))).accepted
                v.ready()
            await until(lambda: engine.model_version == round_, what=f"commit {round_}")
        learnt = engine.run.rule.state()
        assert len(learnt["norms"]) == 6
        restarted = RoundEngine(TASK, Store(store_target), coord, held_out(), 0)
        assert restarted.resume() == engine.run.id
        resumed = restarted.run.rule.state()
        assert resumed.keys() == learnt.keys()
        np.testing.assert_array_equal(resumed["norms"], learnt["norms"])
        assert len(RunConfig.from_json(config).rule().state()["norms"]) == 0  # a fresh rule knows none
        await restarted.stop()
        await engine.stop()

    asyncio.run(main())


def test_a_store_from_0_1_0_keeps_its_optimizer_state(tmp_path):
    path = tmp_path / "webfl.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, config TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL)")
        db.execute("INSERT INTO runs VALUES (1, '{}', 0, NULL, 'running')")
        db.execute("CREATE TABLE server_opt_state (run_id INTEGER PRIMARY KEY, model_version INTEGER NOT NULL, spec TEXT NOT NULL, steps INTEGER NOT NULL, state BLOB)")
        db.execute("INSERT INTO server_opt_state VALUES (1, 3, 'fedavgm:lr=1,momentum=0.9', 3, ?)", (np.arange(4, dtype="<f4").tobytes(),))
    store = Store(path)
    (version, state), = store.component_states(1).values()
    assert version == 3 and state["steps"] == 3 and state["spec"] == "fedavgm:lr=1,momentum=0.9"
    np.testing.assert_array_equal(state["vector"], np.arange(4, dtype=np.float32))
    store.close()
    assert Store(path).component_states(1)["server_opt"][0] == 3  # migrated once, still there


def test_a_stop_during_the_transaction_waits_for_it_and_the_live_model_follows_the_store(tmp_path):
    async def main():
        engine, coord, (a,) = make_engine_with(tmp_path, "a")
        real, entered = engine.store.commit_round, asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow_commit(*args, **kwargs):
            loop.call_soon_threadsafe(entered.set)
            time.sleep(0.3)  # the stop arrives while the transaction is on its way
            real(*args, **kwargs)

        engine.store.commit_round = slow_commit
        engine.start(RunConfig.from_json({"rounds": 2, "clients_per_round": 1, "deadline_s": 30}))
        await until(lambda: a.task() is not None, what="a task")
        assert (await a.update(small(0))).accepted
        await entered.wait()
        assert await engine.stop()
        assert engine.store.latest_checkpoint()[0] == engine.model_version == 1
        assert [r.round for r in engine.history] == [1] == [r.round for r in engine.store.history()]
        assert [m["model_version"] for m in a.of("model_notice")] == [1]
        np.testing.assert_array_equal(decode(engine.model_frame()).arrays[0], engine.store.latest_checkpoint()[1])
        with sqlite3.connect(tmp_path / "webfl.sqlite3") as db:
            assert db.execute("SELECT status FROM runs").fetchone() == ("stopped",)

    asyncio.run(main())
