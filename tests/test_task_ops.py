"""The operator's side of tasks, in process: redefining a task (``PUT /api/tasks/{name}``),
the per-class accuracy of a round's federated evaluation, and ``/metrics`` per task."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rounds_harness import RecordingCoordinator, Volunteer, held_out, make_engine, small, until
from starlette.testclient import TestClient

from webfl import __version__
from webfl.core.protocol import Message, decode, encode
from webfl.core.tasks import Task
from webfl.server.app import create_app
from webfl.server.config import Settings
from webfl.server.engine import RunConfig
from webfl.server.store import Store
from webfl.server.taskset import TaskInUse, TaskSet

TOKEN = "task-ops-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEART = {
    "name": "heart", "title": "Heart disease", "kind": "tabular", "features": ["age", "chol"],
    "label": "target", "classes": ["no", "yes", "maybe"], "model": {"type": "mlp", "hidden": []},
    "training": {"epochs": 3, "batch_size": 8, "lr": 0.5}, "scaling": {"mean": [50, 200], "std": [10, 40]},
}


def _app(data_dir) -> TestClient:
    return TestClient(create_app(Settings(data_dir=data_dir, admin_token=TOKEN, model="softmax")))


def _sums(class_examples: list[int], class_correct: list[int]) -> dict:
    return {"examples": sum(class_examples), "loss_sum": 1.5 * sum(class_examples), "correct": sum(class_correct),
            "class_examples": class_examples, "class_correct": class_correct}


# -- PUT /api/tasks/{name} -----------------------------------------------------------------


def test_put_replaces_a_definition_and_it_survives_a_restart(tmp_path):
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        edited = {**HEART, "title": "Heart disease (v2)", "description": "Now with a description.",
                  "training": {"epochs": 1, "batch_size": 4, "lr": 0.1}, "holdout": 0.3}
        assert client.put("/api/tasks/heart", json=edited).status_code == 401
        answer = client.put("/api/tasks/heart", json={k: v for k, v in edited.items() if k != "name"}, headers=AUTH)
        assert answer.status_code == 200, answer.text  # the name may be left out: the path's
        assert answer.json()["title"] == "Heart disease (v2)" and answer.json()["running"] is False
        assert client.get("/api/tasks/heart").json()["holdout"] == 0.3
        # The task's training defaults follow: a run without its own settings uses the new ones.
        run = client.post("/api/tasks/heart/rounds", json={"rounds": 1}, headers=AUTH).json()
        assert (run["config"]["local_epochs"], run["config"]["batch_size"], run["config"]["lr"]) == (1, 4, 0.1)
        client.post("/api/tasks/heart/rounds/stop", headers=AUTH)
        # Another model is allowed while no round is committed: model version 0 of the new shape.
        reshaped = {**edited, "features": ["age", "chol", "bp"], "scaling": None, "model": {"type": "mlp", "hidden": [4]}}
        answer = client.put("/api/tasks/heart", json=reshaped, headers=AUTH)
        assert answer.status_code == 200, answer.text
        status = client.get("/api/tasks/heart/status", headers=AUTH).json()
        assert status["model_version"] == 0 and status["task"]["num_features"] == 3 and status["task"]["model"] == "mlp-4"
        assert [t["name"] for t in client.get("/api/tasks").json()["tasks"]] == ["mnist", "heart"]
    with _app(tmp_path) as client:  # a restart serves the edited definition
        assert sorted(t["name"] for t in client.get("/api/tasks").json()["tasks"]) == ["heart", "mnist"]
        heart = client.get("/api/tasks/heart").json()
        assert heart["features"] == ["age", "chol", "bp"] and heart["title"] == "Heart disease (v2)" and "scaling" not in heart
        model = client.get("/api/tasks/heart/model", headers=AUTH)
        assert model.status_code == 200 and 'mlp-4-v0' in model.headers["content-disposition"]


def test_a_put_without_scaling_keeps_the_tasks_scaling_for_the_same_columns(tmp_path):
    without = {k: v for k, v in HEART.items() if k != "scaling"}  # the operator's file: no measured scaling
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        kept = client.put("/api/tasks/heart", json={**without, "title": "Hearts"}, headers=AUTH).json()
        assert kept["title"] == "Hearts" and kept["scaling"] == HEART["scaling"]
        # Other columns: the old scaling would not fit them, so it is not carried over.
        other = client.put("/api/tasks/heart", json={**without, "features": ["age", "bp"]}, headers=AUTH).json()
        assert other["features"] == ["age", "bp"] and "scaling" not in other
        # null asks for a new measurement (allowed: no round is committed).
        assert client.put("/api/tasks/heart", json=HEART, headers=AUTH).json()["scaling"] == HEART["scaling"]
        assert "scaling" not in client.put("/api/tasks/heart", json={**HEART, "scaling": None}, headers=AUTH).json()


def test_put_refusals_say_what_is_wrong_and_change_nothing(tmp_path):
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        before = client.get("/api/tasks/heart").json()
        cases = [
            ({**HEART, "name": "other"}, 400, "cannot be renamed"),
            ({**HEART, "kind": "sound"}, 400, "kind:"),
            ({**HEART, "classes": ["only"]}, 400, "classes:"),
            ({**HEART, "features": ["age", "age"]}, 400, "features:"),
            ({**HEART, "colour": "red"}, 400, "colour: unknown field"),
            ([HEART], 400, "expected a JSON object"),
        ]
        for body, code, words in cases:
            answer = client.put("/api/tasks/heart", json=body, headers=AUTH)
            assert answer.status_code == code and words in answer.json()["error"], (body, answer.text)
        broken = client.put("/api/tasks/heart", content=b'{"title": NaN}', headers=AUTH)
        assert broken.status_code == 400 and "not a number JSON allows" in broken.json()["error"]
        assert client.put("/api/tasks/nope", json={**HEART, "name": "nope"}, headers=AUTH).status_code == 404
        # While a run is active: 409, whatever the change.
        assert client.post("/api/tasks/heart/rounds", json={"rounds": 1}, headers=AUTH).status_code == 202
        busy = client.put("/api/tasks/heart", json={**HEART, "title": "Other"}, headers=AUTH)
        assert busy.status_code == 409 and "run in progress" in busy.json()["error"]
        client.post("/api/tasks/heart/rounds/stop", headers=AUTH)
        # A connected volunteer's data was checked against the current columns: no new model under it.
        with client.websocket_connect("/ws") as ws:
            ws.send_bytes(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "t", "task": "heart"})))
            assert decode(ws.receive_bytes()).type == "welcome"
            answer = client.put("/api/tasks/heart", json={**HEART, "label": "outcome"}, headers=AUTH)
            assert answer.status_code == 409 and "1 volunteer(s) are connected" in answer.json()["error"]
            # A title is nothing its data depends on: it changes, and the volunteer is told.
            assert client.put("/api/tasks/heart", json={**HEART, "title": "Hearts"}, headers=AUTH).status_code == 200
            while (msg := decode(ws.receive_bytes())).type != "definition":
                pass
            assert msg["task"]["title"] == "Hearts"
        assert client.get("/api/tasks/heart").json() == {**before, "title": "Hearts"}


def test_a_model_with_committed_rounds_keeps_its_definition(tmp_path):
    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        tasks = TaskSet(store, coord, 0, lambda task: None)
        engine = tasks.add(Task.from_json(HEART))
        trains, evaluates = Volunteer(engine, coord, "v1"), Volunteer(engine, coord, "v2")
        trains.ready()
        engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1}))
        await until(lambda: trains.task() is not None, what="a task")
        assert (await trains.update(np.zeros(engine.model.size))).accepted
        await until(lambda: not engine.running, what="the run to end")
        trains.leave(), evaluates.leave()
        with pytest.raises(TaskInUse, match=r"1 committed round\(s\) of its model, so its classes cannot change"):
            await tasks.replace(Task.from_json({**HEART, "classes": ["no", "yes", "unsure"]}))
        with pytest.raises(TaskInUse, match="its features, model, scaling cannot change"):
            await tasks.replace(Task.from_json({**HEART, "features": ["age"], "scaling": None, "model": {"type": "mlp", "hidden": [3]}}))
        assert tasks.get("heart") is engine and engine.task == Task.from_json(HEART)
        assert store.task_definitions() == [Task.from_json(HEART).to_json()]  # nothing half-changed
        # What the model does not depend on still changes: same engine, same model and history.
        await tasks.replace(Task.from_json({**HEART, "description": "Edited after round 1."}))
        assert tasks.get("heart") is engine and engine.model_version == 1 and len(engine.history) == 1
        assert store.task_definitions()[0]["description"] == "Edited after round 1."
        await tasks.stop()
        store.close()

    asyncio.run(scenario())


# -- per-class accuracy --------------------------------------------------------------------


def test_a_rounds_history_entry_holds_its_federated_per_class_accuracy(tmp_path):
    async def scenario() -> None:
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        tasks = TaskSet(store, coord, 0, lambda task: None)
        engine = tasks.add(Task.from_json(HEART))
        trains, a, b = (Volunteer(engine, coord, f"v{i}") for i in range(3))
        trains.ready()
        engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1}))
        await until(lambda: trains.task() is not None, what="a task")
        assert (await trains.update(np.zeros(engine.model.size))).accepted
        await until(lambda: engine.model_version == 1, what="round 1's commit")

        def report(v, sums):
            return engine.report_evaluation(v.id, Message("eval", {"model_version": 1, "sums": sums}))

        assert report(a, _sums([10, 4, 0], [9, 1, 0])) is None
        assert report(b, _sums([10, 4, 0], [7, 3, 0])) is None
        (entry,) = engine.status()["history"]
        # Summed over the reports, not averaged per volunteer; no holdout had class "maybe".
        assert entry["class_accuracy"] == [pytest.approx(16 / 20), pytest.approx(4 / 8), None]
        assert entry["accuracy"] == pytest.approx(20 / 28)
        await until(lambda: not engine.running, what="the run to end")
        await tasks.stop()  # writes the reports through
        (stored,) = store.scoped("heart", "softmax").history()
        assert stored.class_accuracy == entry["class_accuracy"]
        store.close()

    asyncio.run(scenario())


def test_a_round_the_server_evaluates_has_its_per_class_accuracy_too(tmp_path):
    async def scenario() -> None:
        engine, coord = make_engine(tmp_path)  # MNIST with the server's held-out digits
        trains = Volunteer(engine, coord, "v1")
        trains.ready()
        engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1}))
        await until(lambda: trains.task() is not None, what="a task")
        assert (await trains.update(small(1))).accepted
        await until(lambda: engine.model_version == 1, what="round 1's commit")
        (record,) = engine.history
        counts = np.bincount(held_out().y, minlength=10)
        per_class = [a if c else None for a, c in zip(record.class_accuracy, counts)]
        assert record.eval_source == "server" and per_class == record.class_accuracy and len(per_class) == 10
        # The classes' correct counts add up to the overall accuracy.
        assert sum(a * c for a, c in zip(record.class_accuracy, counts) if c) / counts.sum() == pytest.approx(record.accuracy)
        assert engine.store.history()[0].class_accuracy == record.class_accuracy
        await engine.close()

    asyncio.run(scenario())


def test_tasks_of_more_than_20_classes_have_no_per_class_accuracy(tmp_path):
    async def scenario() -> None:
        many = {**HEART, "name": "many", "classes": [f"c{i}" for i in range(21)]}
        store, coord = Store(tmp_path / "webfl.sqlite3"), RecordingCoordinator()
        engine = TaskSet(store, coord, 0, lambda task: None).add(Task.from_json(many))
        trains, other = Volunteer(engine, coord, "v1"), Volunteer(engine, coord, "v2")
        trains.ready()
        engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1}))
        await until(lambda: trains.task() is not None, what="a task")
        assert (await trains.update(np.zeros(engine.model.size))).accepted
        await until(lambda: engine.model_version == 1, what="round 1's commit")
        sums = {"examples": 5, "loss_sum": 3.0, "correct": 2, "class_examples": [], "class_correct": []}
        assert engine.report_evaluation(other.id, Message("eval", {"model_version": 1, "sums": sums})) is None
        assert engine.history[0].accuracy == pytest.approx(0.4) and engine.history[0].class_accuracy is None
        await engine.close()
        store.close()

    asyncio.run(scenario())


# -- /metrics ------------------------------------------------------------------------------


def test_metrics_label_every_series_with_its_task(tmp_path):
    with _app(tmp_path) as client:
        assert client.post("/api/tasks", json=HEART, headers=AUTH).status_code == 201
        assert client.post("/api/tasks", json={**HEART, "name": "lungs"}, headers=AUTH).status_code == 201
        with client.websocket_connect("/ws") as ws:
            ws.send_bytes(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "t", "task": "lungs"})))
            assert decode(ws.receive_bytes()).type == "welcome"
            text = client.get("/metrics", headers=AUTH).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert all("task" in s.labels for s in samples)
    by_task = {(s.name, s.labels["task"], s.labels.get("state")): s.value for s in samples}
    for task in ("mnist", "heart", "lungs"):
        assert by_task[("webfl_model_version", task, None)] == 0
        assert by_task[("webfl_rounds_committed_total", task, None)] == 0
        assert (("webfl_round_duration_seconds_count", task, None)) in by_task
    # Each task counts its own volunteers.
    assert by_task[("webfl_volunteers", "lungs", "connected")] == 1
    assert by_task[("webfl_volunteers", "heart", "connected")] == 0 and by_task[("webfl_volunteers", "mnist", "connected")] == 0
    # One family a metric, each with every task's series (Prometheus refuses a repeated family).
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
