"""The store keys runs, rounds and checkpoints by task and model, and migrates a schema-1 file
(rounds and checkpoints keyed by model version alone) so its data stays the default task's."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import numpy as np

from rounds_harness import RecordingCoordinator, Volunteer, held_out, until

from webfl.core.tasks import get_task
from webfl.server.engine import RoundEngine, RunConfig
from webfl.server.store import SCHEMA_VERSION, RoundRecord, Store


def _record(round_: int, run_id: int | None = None) -> RoundRecord:
    return RoundRecord(round_, run_id, round_, 0.5, 1.0, 2, 10, 10, 1.0, time.time())


def _schema_1(path) -> None:
    """A file as 0.3 left it: one 2NN run with two committed rounds."""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE runs (id INTEGER PRIMARY KEY, config TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL);
            CREATE TABLE rounds (round INTEGER PRIMARY KEY, run_id INTEGER REFERENCES runs(id), model_version INTEGER NOT NULL,
                accuracy REAL NOT NULL, loss REAL NOT NULL, participants INTEGER NOT NULL, bytes_up INTEGER NOT NULL,
                bytes_down INTEGER NOT NULL, duration_s REAL NOT NULL, committed_at REAL NOT NULL);
            CREATE TABLE checkpoints (model_version INTEGER PRIMARY KEY, task TEXT NOT NULL, model TEXT NOT NULL, params BLOB NOT NULL, created_at REAL NOT NULL);
            CREATE TABLE component_state (run_id INTEGER NOT NULL REFERENCES runs(id), name TEXT NOT NULL, model_version INTEGER NOT NULL,
                fields TEXT NOT NULL, arrays BLOB, PRIMARY KEY (run_id, name));
            INSERT INTO runs VALUES (1, '{"rounds": 2}', 0, 1, 'completed');
            INSERT INTO rounds VALUES (1, 1, 1, 0.8, 0.7, 3, 100, 200, 1.5, 10);
            INSERT INTO rounds VALUES (2, 1, 2, 0.9, 0.4, 3, 100, 200, 1.5, 11);
            INSERT INTO component_state VALUES (1, 'server_opt', 2, '{"spec": "fedavg", "steps": 2}', NULL);
            """
        )
        for version in range(3):
            db.execute("INSERT INTO checkpoints VALUES (?, 'mnist', '2nn', ?, 0)", (version, np.full(4, version, "<f4").tobytes()))


def test_two_models_of_one_task_keep_their_own_rounds(store_target):
    store = Store(store_target)
    a, b = store.scoped("mnist", "2nn"), store.scoped("mnist", "softmax")
    run_a, run_b = a.start_run({"rounds": 1}), b.start_run({"rounds": 1})
    a.commit_round(_record(1, run_a), np.ones(4, np.float32))
    b.commit_round(_record(1, run_b), np.full(3, 2, np.float32))  # schema 1: UNIQUE constraint failed: rounds.round
    assert [r.run_id for r in a.history()] == [run_a] and [r.run_id for r in b.history()] == [run_b]
    assert [r["id"] for r in a.runs()] == [run_a] and a.interrupted_runs() == [run_a]
    assert a.latest_checkpoint()[1].tolist() == [1] * 4 and b.latest_checkpoint()[1].tolist() == [2] * 3
    b.set_bytes_down(1, 999)
    assert a.history()[0].bytes_down == 10 and b.history()[0].bytes_down == 999
    store.close()


def test_pruning_keeps_each_tasks_own_last_checkpoints(store_target):
    store = Store(store_target, keep_last=2, keep_every=0)
    a, b = store.scoped("breast-cancer", "mlp-16"), store.scoped("digits", "cnn")
    a.save_checkpoint(0, np.zeros(2, np.float32))
    for version in range(1, 4):
        b.commit_round(_record(version), np.zeros(2, np.float32))
    assert a.latest_checkpoint()[0] == 0  # b's commits pruned only b's
    store.close()


def test_a_schema_1_file_becomes_the_default_tasks(tmp_path):
    path = tmp_path / "webfl.sqlite3"
    _schema_1(path)
    store = Store(path)
    mnist = store.scoped("mnist", "2nn")
    assert [(r.round, r.accuracy) for r in mnist.history()] == [(1, 0.8), (2, 0.9)]
    assert [r["status"] for r in mnist.runs()] == ["completed"] and store.component_states(1)["server_opt"][0] == 2
    version, params = mnist.latest_checkpoint()
    assert version == 2 and params.tolist() == [2] * 4
    # The bug schema 1 had: another model's first commit on the same folder.
    softmax = store.scoped("mnist", "softmax")
    softmax.commit_round(_record(1, softmax.start_run({})), np.zeros(3, np.float32))
    assert len(softmax.history()) == 1 and len(mnist.history()) == 2
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        schema = " ".join(sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    assert "_v1" not in schema  # no table left behind, no reference to one
    assert len(Store(path).scoped("mnist", "2nn").history()) == 2  # migrated once


def test_an_engine_for_another_model_on_the_same_folder_commits(store_target):
    async def scenario() -> None:
        store = Store(store_target)
        first = get_task("mnist", "softmax")
        for task in (first, get_task("mnist", "2nn")):
            coord = RecordingCoordinator()
            engine = RoundEngine(task, store, coord, held_out(), 0)
            volunteer = Volunteer(engine, coord, "v1")
            volunteer.ready()
            engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1}))
            await until(lambda: volunteer.task() is not None, what="a task")
            assert (await volunteer.update(np.zeros(engine.model.size))).accepted
            await until(lambda: not engine.running, what="the run to end")
            assert [r.round for r in engine.history] == [1] and engine.model_version == 1
        store.close()

    asyncio.run(scenario())
