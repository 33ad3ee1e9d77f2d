"""Several tasks on one server, in process: /api/tasks, per-task runs and status, a
volunteer's hello naming its task, broadcasts kept to a task's own volunteers, and tasks
kept across a restart."""

from __future__ import annotations

import asyncio
from dataclasses import replace
import json
import time
from pathlib import Path

import numpy as np
import pytest
from rounds_harness import RecordingCoordinator, Volunteer, held_out, until
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from webfl import __version__
from webfl.core.protocol import Message, decode, encode
from webfl.core.tasks import BUILT_IN, Task, get_task
from webfl.server.app import create_app
from webfl.server.config import Settings
from webfl.server.engine import RoundEngine, RunConfig
from webfl.server.rounds.announce import BATCH, BUSY_RATE
from webfl.server.store import Store
from webfl.server.taskset import TaskSet, read_task_file

TOKEN = "multitask-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEART = {
    "name": "heart", "title": "Heart <b>disease</b>", "kind": "tabular", "features": ["age", "chol"],
    "label": "target", "classes": ["no", "yes"], "model": {"type": "mlp", "hidden": []},
    "training": {"epochs": 3, "batch_size": 8, "lr": 0.5}, "scaling": {"mean": [50, 200], "std": [10, 40]},
}


def _app(data_dir: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=data_dir, admin_token=TOKEN, model="softmax", **settings)))


def _hello(ws, **fields) -> dict:
    ws.send_bytes(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "test", **fields})))
    welcome = decode(ws.receive_bytes())
    assert welcome.type == "welcome"
    return welcome.fields


def test_tasks_are_created_listed_and_refused_with_reasons(tmp_path):
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART).status_code == 401
        created = client.post("/api/tasks", json=HEART, headers=AUTH)
        assert created.status_code == 201 and created.headers["location"] == "/api/tasks/heart"
        assert created.json()["name"] == "heart" and created.json()["running"] is False
        listing = client.get("/api/tasks").json()
        assert [t["name"] for t in listing["tasks"]] == ["mnist", "heart"] and listing["default"] == "mnist"
        assert client.get("/api/tasks/heart").json()["features"] == ["age", "chol"]
        assert client.get("/api/tasks/nope").status_code == 404
        again = client.post("/api/tasks", json=HEART, headers=AUTH)
        assert again.status_code == 409 and "exists already" in again.json()["error"]
        assert client.post("/api/tasks", json=dict(BUILT_IN["digits"].to_json(), name="mnist"), headers=AUTH).status_code == 409
        bad = client.post("/api/tasks", json={**HEART, "name": "other", "features": ["age", "age"]}, headers=AUTH)
        assert bad.status_code == 400 and bad.json()["error"].startswith("features")
        broken = client.post("/api/tasks", content=b"{not json", headers=AUTH)
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
        assert [t["name"] for t in client.get("/api/tasks").json()["tasks"]] == ["mnist", "heart"]  # nothing half-made


def test_each_task_runs_and_counts_on_its_own(tmp_path):
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        with client.websocket_connect("/ws") as plain, client.websocket_connect("/ws") as heart:
            mnist = _hello(plain)
            assert mnist["task"]["name"] == "mnist"  # no task named: the default, as today's clients
            assert mnist["evaluate"] is False  # MNIST is evaluated on the server's digits
            welcome = _hello(heart, task="heart")
            assert welcome["task"]["name"] == "heart" and "shard" not in welcome  # demo shards are MNIST's
            assert welcome["evaluate"] is True
            assert decode(heart.receive_bytes()).type == "model"
            heart.send_bytes(encode(Message("ready", {"num_examples": 50})))
            for _ in range(100):
                status = client.get("/api/tasks/heart/status", headers=AUTH).json()
                if status["volunteers"]["ready"] == 1:
                    break
            assert status["connected"] == 1 and status["volunteers"]["ready"] == 1
            assert client.get("/api/status", headers=AUTH).json()["connected"] == 1  # mnist's own one
            started = client.post("/api/tasks/heart/rounds", json={"rounds": 3, "clients_per_round": 2}, headers=AUTH)
            assert started.status_code == 202
            config = started.json()["config"]  # the task's training defaults
            assert (config["local_epochs"], config["batch_size"], config["lr"]) == (3, 8, 0.5)
            assert client.post("/api/tasks/heart/rounds", json={"rounds": 1}, headers=AUTH).status_code == 409
            assert client.get("/api/tasks/heart").json()["running"] is True
            assert client.get("/api/status", headers=AUTH).json()["run"] is None  # mnist does not run
            mnist_run = client.post("/api/rounds", json={"rounds": 1, "lr": 0.05}, headers=AUTH)  # at the same time
            assert mnist_run.status_code == 202 and mnist_run.json()["run"] != started.json()["run"]
            assert mnist_run.json()["config"]["lr"] == 0.05  # a run's own setting wins
            assert client.post("/api/tasks/heart/rounds/stop", headers=AUTH).json() == {"stopped": True}
            assert client.post("/api/rounds/stop", headers=AUTH).json() == {"stopped": True}
        assert client.get("/api/tasks/heart/history", headers=AUTH).json()["runs"][0]["status"] == "stopped"
        assert [r["id"] for r in client.get("/api/history", headers=AUTH).json()["runs"]] == [mnist_run.json()["run"]]
        model = client.get("/api/tasks/heart/model", headers=AUTH)
        assert model.status_code == 200 and "webfl-heart-softmax-v0" in model.headers["content-disposition"]
        assert client.post("/api/tasks/nope/rounds", json={}, headers=AUTH).status_code == 404


def test_a_hello_for_an_unknown_task_is_closed_with_the_reason(tmp_path):
    with _app(tmp_path) as client, client.websocket_connect("/ws") as ws:
        ws.send_bytes(encode(Message("hello", {"version": __version__, "codecs": ["none"], "task": "nope"})))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
        assert closed.value.code == 1008 and "no task named 'nope'" in closed.value.reason


def test_tasks_survive_a_restart_and_task_files_set_the_default(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([HEART, BUILT_IN["breast-cancer"].to_json()]))
    files = tuple(read_task_file(path))
    with _app(tmp_path / "data", tasks=files) as client:
        listing = client.get("/api/tasks").json()
        assert [t["name"] for t in listing["tasks"]] == ["heart", "breast-cancer"] and listing["default"] == "heart"
        assert client.post("/api/tasks", json=BUILT_IN["digits"].to_json(), headers=AUTH).status_code == 201
    with _app(tmp_path / "data") as client:  # no flags: the stored tasks, and MNIST as the default
        listing = client.get("/api/tasks").json()
        assert sorted(t["name"] for t in listing["tasks"]) == ["breast-cancer", "digits", "heart", "mnist"]
        assert listing["default"] == "mnist"


def test_a_task_file_names_its_bad_entry(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([HEART, {**HEART, "kind": "audio"}]))
    with pytest.raises(ValueError, match=r"tasks.json\[1\]: kind"):
        read_task_file(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="tasks.json"):
        read_task_file(path)


def test_a_commit_reaches_only_its_own_tasks_volunteers(tmp_path):
    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        mnist = RoundEngine(get_task("mnist", "softmax"), store, coord, held_out(), 0)
        heart = RoundEngine(Task.from_json(HEART), store, coord, None, 0)
        trains, bystander = Volunteer(heart, coord, "h1"), Volunteer(mnist, coord, "m1")
        trains.ready()
        heart.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1}))
        await until(lambda: trains.task() is not None, what="a task")
        assert (await trains.update(np.zeros(heart.model.size))).accepted
        await until(lambda: not heart.running, what="the run to end")
        (record,) = heart.history
        assert record.accuracy is None and record.loss is None  # no server-side data: nothing to claim
        # The commit is announced to the task's own volunteers only.
        assert trains.of("model_notice") and not bystander.of("model_notice") and not bystander.of("status")
        assert mnist.history == [] and mnist.model_version == 0
        store.close()

    asyncio.run(scenario())


def test_one_tasks_round_in_flight_holds_back_another_tasks_notices(tmp_path):
    """The tasks share one event loop, so heart's round in flight slows mnist's pass to
    ``BUSY_RATE`` (``TaskSet.round_in_flight``); once it ends, the pass goes at the quiet pace."""
    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        tasks = TaskSet(store, coord, 0, lambda task: held_out() if task.name == "mnist" else None)
        mnist, heart = tasks.add(get_task("mnist", "softmax")), tasks.add(Task.from_json(HEART))
        bystanders = [Volunteer(mnist, coord, f"m{i:03d}") for i in range(500)]
        trains = Volunteer(heart, coord, "h1")
        trains.ready()
        heart.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1, "deadline_s": 60, "max_wait_s": 0}))
        await until(lambda: trains.task() is not None, what="heart's task")

        async def pass_s() -> float:
            loop = asyncio.get_running_loop()
            began = loop.time()
            mnist.commits.announce(commit=False)
            await mnist.commits.announcer.idle()
            return loop.time() - began

        assert heart.round_in_flight() and not mnist.round_in_flight() and mnist.busy()
        heard = len(trains.inbox)
        busy_s = await pass_s()
        # The first batch goes at once, the other four at BUSY_RATE.
        assert busy_s >= (len(bystanders) - BATCH) / BUSY_RATE * 0.95
        assert all(v.of("status") for v in bystanders) and len(trains.inbox) == heard  # mnist's own volunteers only
        await heart.stop()
        assert not tasks.round_in_flight() and not mnist.busy()
        quiet_s = await pass_s()
        assert quiet_s < busy_s / 2, (quiet_s, busy_s)
        await tasks.stop()
        store.close()

    asyncio.run(scenario())


# -- federated evaluation ------------------------------------------------------------------


def _sums(examples: int, correct: int, loss_sum: float) -> dict:
    return {"examples": examples, "loss_sum": loss_sum, "correct": correct,
            "class_examples": [examples - correct, correct], "class_correct": [0, correct]}


def test_federated_evaluation_fills_the_rounds_history_entry(tmp_path):
    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        engine = RoundEngine(Task.from_json(HEART), store, coord, None, 0)
        trains, *others = [Volunteer(engine, coord, f"v{i}") for i in range(3)]
        trains.ready()
        engine.start(RunConfig.from_json({"rounds": 2, "clients_per_round": 1}))
        await until(lambda: trains.task() is not None, what="a task")
        assert (await trains.update(np.zeros(engine.model.size))).accepted
        await until(lambda: engine.model_version == 1, what="round 1's commit")
        assert engine.history[0].eval_source is None and engine.history[0].accuracy is None

        def report(v, version, sums):
            return engine.report_evaluation(v.id, Message("eval", {"model_version": version, "sums": sums}))

        assert report(others[0], 1, _sums(30, 24, 12.0)) is None
        assert report(others[1], 1, _sums(10, 4, 8.0)) is None
        (record,) = engine.history
        assert (record.eval_source, record.eval_examples, record.eval_volunteers) == ("federated", 40, 2)
        assert record.accuracy == pytest.approx(28 / 40) and record.loss == pytest.approx(20.0 / 40)
        assert engine.evaluation.sums(1).per_class_accuracy() == [0.0, 1.0]
        # Refused, counted, and the entry stays as it was:
        assert "second report" in report(others[0], 1, _sums(30, 30, 0.0))
        assert "not one of the last" in report(others[0], 7, _sums(3, 1, 1.0))
        assert "do not add up" in report(trains, 1, {**_sums(5, 2, 1.0), "correct": 3})
        assert "finite" in report(trains, 1, {**_sums(5, 2, 1.0), "loss_sum": -1})
        assert engine.history[0] == record and engine.status()["rejections"]["eval"] == 4
        await engine.stop()
        engine.evaluation.flush()
        # Written through (bytes_down aside: the evaluation cohort's sends may still be adding to it).
        evaluated = lambda r: replace(r, bytes_down=0)  # noqa: E731
        assert evaluated(store.scoped("heart", "softmax").history()[0]) == evaluated(record)
        store.close()

    asyncio.run(scenario())


def test_late_reports_count_only_while_their_round_is_recent(tmp_path):
    from webfl.server.rounds.evaluation import RECENT_ROUNDS

    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        engine = RoundEngine(Task.from_json(HEART), store, coord, None, 0)
        trains, late = Volunteer(engine, coord, "t"), Volunteer(engine, coord, "late")
        trains.ready()
        engine.start(RunConfig.from_json({"rounds": RECENT_ROUNDS + 1, "clients_per_round": 1}))
        for round_ in range(1, RECENT_ROUNDS + 2):
            await until(lambda: (t := trains.task()) is not None and t["round"] == round_, what=f"round {round_}'s task")
            assert (await trains.update(np.zeros(engine.model.size))).accepted
            await until(lambda: engine.model_version == round_, what=f"round {round_}'s commit")
            trains.ready()
        assert engine.report_evaluation(late.id, Message("eval", {"model_version": 2, "sums": _sums(4, 2, 1.0)})) is None
        assert engine.history[1].eval_examples == 4  # a late report, still recent
        refused = engine.report_evaluation(late.id, Message("eval", {"model_version": 1, "sums": _sums(4, 2, 1.0)}))
        assert "not one of the last" in refused and engine.history[0].eval_source is None
        store.close()

    asyncio.run(scenario())


def test_a_volunteer_reports_on_each_new_model_over_a_socket(tmp_path):
    from webfl.core.data import Dataset
    from webfl.core.volunteer import Volunteer as Session

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(50, 2)).astype(np.float32), rng.integers(0, 2, 50).astype(np.uint8))
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        with client.websocket_connect("/ws") as trainer_ws, client.websocket_connect("/ws") as watcher_ws:
            sessions = {}
            for name, ws in (("trainer", trainer_ws), ("watcher", watcher_ws)):
                s = sessions[name] = Session(data, task_name="heart", holdout_seed=len(sessions))
                ws.send_bytes(s.hello())
                while s.params is None:
                    for out in s.receive(ws.receive_bytes()):
                        ws.send_bytes(out)
            assert all(s.holdout_examples == 10 and s.num_examples == 40 for s in sessions.values())
            # The watcher pauses, so the trainer is the one selected; once it is back, ready
            # but lacking the new model, the commit's evaluation cohort sends it that model.
            trainer, watcher = "trainer", "watcher"
            sockets = {"trainer": trainer_ws, "watcher": watcher_ws}
            for out in sessions[watcher].pause():
                watcher_ws.send_bytes(out)
            deadline = time.monotonic() + 10
            while client.get("/api/tasks/heart/status", headers=AUTH).json()["volunteers"]["paused"] != 1:
                assert time.monotonic() < deadline, "the watcher did not pause"
                time.sleep(0.02)
            assert client.post("/api/tasks/heart/rounds", json={"rounds": 1, "clients_per_round": 1}, headers=AUTH).status_code == 202
            while sessions[trainer].job is None:
                sessions[trainer].receive(trainer_ws.receive_bytes())
            for out in sessions[watcher].resume():
                watcher_ws.send_bytes(out)
            sockets[trainer].send_bytes(sessions[trainer].train())
            while sessions[watcher].model_version < 1:
                for out in sessions[watcher].receive(sockets[watcher].receive_bytes()):
                    assert decode(out).type == "eval"
                    sockets[watcher].send_bytes(out)
            deadline = time.monotonic() + 10  # the history is written within FLUSH_S of the report
            while time.monotonic() < deadline:
                (entry,) = client.get("/api/tasks/heart/history", headers=AUTH).json()["rounds"] or [None]
                if entry and entry["eval_volunteers"]:
                    break
                time.sleep(0.05)
            assert entry["eval_source"] == "federated" and entry["eval_examples"] >= 10 and 0 <= entry["accuracy"] <= 1


# -- pages ---------------------------------------------------------------------------------


def test_the_home_page_lists_the_tasks_and_each_has_its_page(tmp_path):
    with _app(tmp_path) as client:
        only = client.get("/")
        assert only.status_code == 200 and 'data-task="mnist"' in only.text and "task-list" not in only.text  # the only task
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        home = client.get("/")
        assert 'data-testid="task-list"' in home.text and 'href="/t/heart"' in home.text and 'href="/t/mnist"' in home.text
        assert "Heart &lt;b&gt;disease&lt;/b&gt;" in home.text and "<b>disease" not in home.text  # titles escaped
        page = client.get("/t/heart")
        assert page.status_code == 200 and 'data-task="heart"' in page.text
        assert 'data-testid="csv-columns">age, chol<' in page.text and 'data-testid="data-demo"' not in page.text
        assert 'data-testid="data-demo"' in client.get("/t/mnist").text  # the demo shards are MNIST's
        assert client.get("/t/nope").status_code == 404
        assert 'data-task="heart"' in client.get("/embed?task=heart").text
        assert client.get("/embed?task=nope").status_code == 404
        assert client.get("/api/config?task=heart").json()["task"]["name"] == "heart"
        assert client.get("/api/config?task=nope").status_code == 404


def test_a_browser_session_reads_a_tabular_csv_by_its_header():
    from webfl.core.browser import BrowserSession

    session = BrowserSession("test", Task.from_json(HEART).to_json())
    assert session.volunteer.task_name == "heart"
    session.use_csv("chol,target,age\n200,yes,50\n180,no,40\n", 2, 2, "mine.csv")
    assert session.data_source == {"kind": "csv", "name": "mine.csv", "examples": 2}
    with pytest.raises(ValueError, match="target"):
        session.use_csv("age,chol\n1,2\n", 2, 2)
    assert decode(session.hello())["task"] == "heart"


# -- federated feature statistics ----------------------------------------------------------


def test_a_task_without_scaling_gets_it_from_its_volunteers_statistics_before_round_1(tmp_path):
    from webfl.core.stats import feature_stats

    unscaled = {k: v for k, v in HEART.items() if k != "scaling"}

    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        store.save_task("heart", unscaled)
        engine = RoundEngine(Task.from_json(unscaled), store, coord, None, 0)
        a, b = Volunteer(engine, coord, "a"), Volunteer(engine, coord, "b")
        rows = {"a": np.array([[40.0, 180.0], [60.0, 220.0]]), "b": np.array([[50.0, 300.0]])}
        a.ready(), b.ready()
        engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 2}))
        report = lambda v, stats: engine.report_statistics(v.id, Message("stats", {"stats": stats}))  # noqa: E731
        assert "count" in report(a, {"count": [1], "sum": [1], "sumsq": [1]})  # refused: 2 features
        assert "not the statistics of any real rows" in report(a, {"count": [2, 2], "sum": [10, 10], "sumsq": [1, 1]})
        assert report(a, feature_stats(rows["a"]).to_dict()) is None
        await asyncio.sleep(0.3)
        assert engine.task.needs_statistics and a.task() is None  # waits for clients_per_round reports
        assert report(b, feature_stats(rows["b"]).to_dict()) is None
        await until(lambda: a.task() is not None, what="round 1's task")
        pooled = np.concatenate([rows["a"], rows["b"]])
        np.testing.assert_allclose(engine.task.scaling.mean, pooled.mean(axis=0))
        np.testing.assert_allclose(engine.task.scaling.std, pooled.std(axis=0))
        (definition,) = a.of("definition")  # every volunteer of the task, before its task frame
        assert Task.from_dict(definition["task"]) == engine.task and b.of("definition")
        assert a.inbox.index(definition) < a.inbox.index(a.task())
        assert store.task_definitions()[0]["scaling"] == engine.task.scaling.to_json()  # kept across a restart
        assert "fixed already" in report(a, feature_stats(rows["a"]).to_dict())
        assert engine.status()["rejections"]["stats"] == 3
        await engine.stop()
        store.close()

    asyncio.run(scenario())


def test_a_volunteer_reports_statistics_for_an_unscaled_task_and_adopts_the_fixed_definition():
    from webfl.core.data import Dataset
    from webfl.core.evaluation import holdout_split
    from webfl.core.stats import feature_stats
    from webfl.core.volunteer import Volunteer as Session

    unscaled = Task.from_json({k: v for k, v in HEART.items() if k != "scaling"})
    rows = Dataset(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.uint8) % 2)
    v = Session(rows, task_name="heart")
    v.hello()
    welcome = Message("welcome", {"version": __version__, "volunteer": "v1", "task": unscaled.to_dict(), "shard": None})
    stats, *_ = map(decode, v.receive(encode(welcome)))
    train, _ = holdout_split(10, unscaled.holdout, 0)
    assert stats.type == "stats" and stats["stats"] == feature_stats(rows.x[train]).to_dict()  # the rows trained on
    scaled = unscaled.with_scaling([1.0, 2.0], [3.0, 4.0])
    assert v.receive(encode(Message("definition", {"task": scaled.to_dict()}))) == [] and v.task == scaled
    with pytest.raises(ValueError):
        v.receive(encode(Message("definition", {"task": BUILT_IN["breast-cancer"].to_dict()})))
