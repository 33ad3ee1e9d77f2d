"""The operator's side, in process (Starlette's TestClient): run settings, history and its
exports, model export (npz, ONNX checked with onnxruntime), /metrics, JSON logs."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from webfl.core.data import features, load_npz, partition
from webfl.core.tasks import get_task
from webfl.core.training import TrainConfig, local_train
from webfl.server.app import create_app
from webfl.server.config import Settings
from webfl.server.engine import RunConfig
from webfl.server.web.export import model_onnx
from webfl.server.logs import JsonFormatter
from webfl.server.web.metrics import DURATION_BUCKETS
from webfl.server.store import RoundRecord, Store

TOKEN = "operator-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "softmax"


def _app(data_dir: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=data_dir, admin_token=TOKEN, model=MODEL, **settings)))


def _record(round_: int, run_id: int, duration_s: float, bytes_up: int, participants: int = 3) -> RoundRecord:
    return RoundRecord(round_, run_id, round_, 0.5 + round_ / 100, 1.0 / round_, participants, bytes_up, 7 * bytes_up, duration_s, 1e9 + round_)


def seed_history(data_dir: Path, model: str = MODEL) -> list[RoundRecord]:
    """Two finished runs in ``data_dir``'s store: run 1 stopped by the operator after 2
    of 5 (q8), run 2 completed with its 1 round (no codec)."""
    task = get_task("mnist", model)
    params = task.build_model().init(0)
    root = Store(data_dir / "webfl.sqlite3")
    store = root.scoped(task.name, task.model)
    records = []
    for codec, status, total, rounds in (("q8", "stopped", 5, [(0.4, 1000), (3.0, 1100)]), ("none", "completed", 1, [(70.0, 4000)])):
        run_id = store.start_run(RunConfig.from_json({"codec": codec, "rounds": total}).to_dict())
        for duration, up in rounds:
            record = _record(len(records) + 1, run_id, duration, up)
            store.commit_round(record, params)
            records.append(record)
        store.end_run(run_id, status)
    root.close()
    return records


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, list[RoundRecord]]:
    return tmp_path, seed_history(tmp_path)


# -- auth ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/api/history", "/api/history?format=csv", "/api/run-settings", "/api/model?format=onnx"])
def test_operator_endpoints_need_the_admin_token(tmp_path, path):
    with _app(tmp_path) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401 and "token" in response.json()["error"]


# -- run settings ---------------------------------------------------------------------


def test_run_settings_are_runconfig_s_own_defaults_and_bounds(tmp_path):
    with _app(tmp_path) as client:
        settings = client.get("/api/run-settings", headers=AUTH).json()["settings"]
    defaults = RunConfig()
    assert [s["name"] for s in settings] == list(defaults.to_dict())
    assert {s["name"]: s["default"] for s in settings} == defaults.to_dict()
    assert {s["name"]: s["default"] for s in settings}["local_epochs"] == 2
    # What the form would send with every default is exactly the API's default run.
    assert RunConfig.from_json({s["name"]: s["default"] for s in settings}).to_dict() == defaults.to_dict()
    for s in settings:
        if s["type"] == "string":
            assert isinstance(s["default"], str) and "min" not in s
            continue
        if s["type"] == "json":  # an object setting (dp), off by default
            assert s["default"] is None and "min" not in s
            continue
        assert s["type"] in ("integer", "number")
        RunConfig.from_json({s["name"]: s["max"]} if s["name"] != "min_updates" else {s["name"]: 1})
        with pytest.raises(ValueError, match=s["name"]):
            RunConfig.from_json({s["name"]: s["max"] * 2 + 1})
        with pytest.raises(ValueError, match=s["name"]):
            RunConfig.from_json({s["name"]: s["min"] - 1})


# -- history -------------------------------------------------------------------------


def test_history_lists_runs_with_their_end_status_and_rounds_with_their_run(seeded):
    data_dir, records = seeded
    with _app(data_dir) as client:
        body = client.get("/api/history", headers=AUTH).json()
    assert [(r["id"], r["status"]) for r in body["runs"]] == [(1, "stopped"), (2, "completed")]
    assert body["runs"][0]["config"]["codec"] == "q8" and body["runs"][0]["ended_at"] >= body["runs"][0]["started_at"]
    assert body["rounds"] == [{**r.to_dict(), "abandoned": False} for r in records]
    assert [r["run_id"] for r in body["rounds"]] == [1, 1, 2]


def test_history_downloads_as_csv_and_json(seeded):
    data_dir, records = seeded
    with _app(data_dir) as client:
        as_csv = client.get("/api/history?format=csv", headers=AUTH)
        as_json = client.get("/api/history?format=json", headers=AUTH)
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"] == 'attachment; filename="webfl-mnist-history.csv"'
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [int(r["run_id"]) for r in rows] == [1, 1, 2]
    assert [float(r["accuracy"]) for r in rows] == [r.accuracy for r in records]
    assert [int(r["bytes_up"]) for r in rows] == [r.bytes_up for r in records]
    assert as_json.headers["content-disposition"] == 'attachment; filename="webfl-mnist-history.json"'
    document = json.loads(as_json.content)
    assert [r["status"] for r in document["runs"]] == ["stopped", "completed"]
    assert len(document["rounds"]) == 3


@pytest.mark.parametrize("path", ["/api/history?format=xml", "/api/model?format=pt", "/api/model?format=%3Cscript%3E"])
def test_an_unknown_format_is_a_400_with_a_message(tmp_path, path):
    with _app(tmp_path) as client:
        response = client.get(path, headers=AUTH)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "unknown format" in response.json()["error"] and "use one of" in response.json()["error"]


# -- model export ----------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mnist() -> Path:
    path = Settings().datasets_dir / "mnist.npz"
    if not path.exists():
        pytest.skip("mnist.npz missing: run make setup")
    return path


@pytest.mark.parametrize("name", ["softmax", "2nn"])
def test_onnx_export_predicts_what_the_core_predicts_on_held_out_digits(mnist, name):
    task = get_task("mnist", name)
    model = task.build_model()
    train, test = load_npz(mnist, "train"), load_npz(mnist, "test")
    shard = train.take(partition(train.y, 4, "iid", 0)[0])
    # A trained model, not just its initialisation: its probabilities are far from uniform.
    params = local_train(model, model.init(1), features(shard.x), shard.y, TrainConfig(epochs=1, batch_size=32, lr=0.1)).params
    x = features(test.x)
    expected = _softmax(model.logits(params, x))

    session = ort.InferenceSession(model_onnx(model, params, "test"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"features": x})

    assert got.shape == (len(test), 10) and got.dtype == np.float32
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert (expected.argmax(axis=1) == test.y).mean() > 0.8  # trained: the comparison is on real predictions


def test_model_endpoint_serves_the_global_model_as_npz_and_onnx(tmp_path, mnist):
    with _app(tmp_path) as client:
        default = client.get("/api/model", headers=AUTH)
        npz = client.get("/api/model?format=npz", headers=AUTH)
        as_onnx = client.get("/api/model?format=onnx", headers=AUTH)
    assert default.content == npz.content
    assert npz.headers["content-disposition"] == 'attachment; filename="webfl-mnist-softmax-v0.npz"'
    assert as_onnx.headers["content-disposition"] == 'attachment; filename="webfl-mnist-softmax-v0.onnx"'
    with np.load(io.BytesIO(npz.content)) as f:
        params, w0 = f["params"], f["w0"]
        assert int(f["model_version"]) == 0
    model = get_task("mnist", MODEL).build_model()
    np.testing.assert_array_equal(model.views(params)["w0"], w0)
    x = features(load_npz(mnist, "test").x[:200])
    (got,) = ort.InferenceSession(as_onnx.content, providers=["CPUExecutionProvider"]).run(None, {"features": x})
    np.testing.assert_allclose(got, _softmax(model.logits(params, x)), atol=1e-5, rtol=0)


# -- metrics ---------------------------------------------------------------------------


def _scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            assert sample.labels.get("task") == "mnist"  # one task served: every series is its
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "task"))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def test_metrics_reflect_the_store_and_the_engine(seeded):
    data_dir, records = seeded
    with _app(data_dir) as client:
        m = _scrape(client)
    assert m["webfl_rounds_committed_total"][()] == 3
    assert m["webfl_updates_accepted_total"][()] == sum(r.participants for r in records)
    assert m["webfl_runs"][(("status", "stopped"),)] == 1
    assert m["webfl_runs"][(("status", "completed"),)] == 1
    assert m["webfl_runs"][(("status", "running"),)] == 0
    # Bytes by the codec of each round's run: run 1 used q8, run 2 none.
    assert m["webfl_uplink_bytes_total"] == {(("codec", "q8"),): 2100, (("codec", "none"),): 4000}
    assert m["webfl_downlink_bytes_total"] == {(("downlink", "none"),): 7 * 6100}
    buckets = {dict(k)["le"]: v for k, v in m["webfl_round_duration_seconds_bucket"].items()}
    assert buckets["0.5"] == 1 and buckets["2.5"] == 1 and buckets["5.0"] == 2 and buckets["60.0"] == 2 and buckets["120.0"] == 3
    assert buckets["+Inf"] == 3 and len(buckets) == len(DURATION_BUCKETS) + 1
    assert m["webfl_round_duration_seconds_sum"][()] == pytest.approx(73.4)
    assert m["webfl_round_duration_seconds_count"][()] == 3
    assert m["webfl_test_accuracy"][(("source", "server"),)] == pytest.approx(records[-1].accuracy)
    assert m["webfl_model_version"][()] == 3
    assert m["webfl_round_state"][(("state", "idle"),)] == 1 and m["webfl_round_state"][(("state", "training"),)] == 0
    assert m["webfl_volunteers"][(("state", "ready"),)] == 0
    assert all(v == 0 for v in m["webfl_rejections_total"].values()) and (("reason", "nan"),) in m["webfl_rejections_total"]


def test_metrics_count_connected_volunteers_by_state(tmp_path):
    from webfl import __version__
    from webfl.core.protocol import Message, decode, encode

    with _app(tmp_path) as client, client.websocket_connect("/ws") as ws:
        ws.send_bytes(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "test"})))
        while decode(ws.receive_bytes()).type != "model":
            pass
        assert _scrape(client)["webfl_volunteers"][(("state", "connected"),)] == 1
        ws.send_bytes(encode(Message("ready", {"num_examples": 100})))
        m = {}
        for _ in range(50):  # the socket task handles "ready" concurrently with the scrape
            m = _scrape(client)
            if m["webfl_volunteers"][(("state", "ready"),)] == 1:
                break
        assert m["webfl_volunteers"][(("state", "ready"),)] == 1 and m["webfl_volunteers"][(("state", "connected"),)] == 0


# -- JSON logs -------------------------------------------------------------------------


def _record_for(message: str, *args, extra: dict | None = None, exc_info=None) -> logging.LogRecord:
    logger = logging.getLogger("webfl.test")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, args, exc_info, extra=extra)


def test_json_log_lines_carry_the_extra_fields_and_escape_untrusted_text():
    hostile = 'evil"agent\n{"level": "CRITICAL", "message": "forged"}'
    line = JsonFormatter().format(_record_for("volunteer %s said hello", hostile, extra={"peer": "p1", "round": 4, "state": "ready"}))
    assert "\n" not in line
    event = json.loads(line)
    assert event["message"] == f"volunteer {hostile} said hello"
    assert (event["level"], event["logger"]) == ("WARNING", "webfl.test")
    assert (event["peer"], event["round"], event["state"]) == ("p1", 4, "ready")
    assert event["time"].endswith("+00:00") and "T" in event["time"]
    assert "args" not in event and "msg" not in event and "exc_info" not in event


def test_json_log_lines_include_the_exception():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        line = JsonFormatter().format(_record_for("run failed", exc_info=sys.exc_info()))
    event = json.loads(line)
    assert event["message"] == "run failed" and "RuntimeError: boom" in event["exception"]
