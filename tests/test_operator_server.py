"""The operator's side on a real ``webfl serve``: /metrics on its own bind address after a
round in which one update was rejected, the history and ONNX downloads, JSON-lines logs."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from email.message import Message

import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families
from test_server import Client

from servers import TOKEN, free_port, start_server
from webfl.core.tasks import get_task


def _get(url: str, token: str | None = TOKEN) -> tuple[int, bytes, Message]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def _samples(text: str) -> dict[tuple, float]:
    """The samples by (name, labels), without the ``task`` label (one task here: every sample is MNIST's)."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert samples and all(s.labels.get("task") == "mnist" for s in samples)
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "task"))): s.value for s in samples}


def test_metrics_exports_and_json_logs_after_a_round_with_a_rejected_update(tmp_path):
    metrics_port = free_port()
    server = start_server(tmp_path / "data", "--model", "softmax", "--log-format", "json", "--metrics-port", str(metrics_port))
    try:
        honest, nan = Client(server), Client(server)
        honest.join()
        nan.join()
        server.wait_for(lambda s: s["volunteers"]["ready"] == 2, timeout=30, what="2 ready volunteers")
        code, started = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 2, "min_updates": 1, "deadline_s": 30, "codec": "none"})
        assert code == 202, started
        size = get_task("mnist", "softmax").build_model().size
        task = honest.recv("task").fields
        assert honest.update(task, np.full(size, 1e-3, np.float32)).type == "accept"
        bad = np.zeros(size, np.float32)
        bad[7] = np.nan
        verdict = nan.update(nan.recv("task").fields, bad)
        assert verdict.type == "reject"
        for client in (honest, nan):  # done with this task: the round closes once both are
            client.send("ready", num_examples=100)
        status = server.wait_for(lambda s: s["history"] and not s["run"]["running"], timeout=60, what="the round to commit")
        (round_,) = status["history"]

        # /metrics: behind the token on the main address, open on the metrics port.
        assert _get(server.url + "/metrics", token=None)[0] == 401
        code, main_text, _ = _get(server.url + "/metrics")
        assert code == 200
        code, open_text, headers = _get(f"http://127.0.0.1:{metrics_port}/metrics", token=None)
        assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
        assert _get(f"http://127.0.0.1:{metrics_port}/api/status", token=None)[0] == 404  # nothing else there
        for m in (_samples(main_text.decode()), _samples(open_text.decode())):
            assert m[("webfl_rejections_total", (("reason", "nan"),))] == 1
            assert m[("webfl_rounds_committed_total", ())] == 1
            assert m[("webfl_updates_accepted_total", ())] == 1
            assert m[("webfl_runs", (("status", "completed"),))] == 1
            assert m[("webfl_uplink_bytes_total", (("codec", "none"),))] == round_["bytes_up"] > size * 4
            assert m[("webfl_downlink_bytes_total", (("downlink", "none"),))] == round_["bytes_down"]
            assert m[("webfl_round_duration_seconds_count", ())] == 1
            assert m[("webfl_round_duration_seconds_sum", ())] == round_["duration_s"]
            assert m[("webfl_volunteers", (("state", "ready"),))] == 2

        # The history as CSV, with the run column.
        code, body, headers = _get(server.url + "/api/history?format=csv")
        assert code == 200 and "attachment" in headers["Content-Disposition"]
        (row,) = csv.DictReader(io.StringIO(body.decode()))
        assert int(row["run_id"]) == started["run"] and int(row["participants"]) == 1
        code, body, _ = _get(server.url + "/api/history?format=json")
        assert json.loads(body)["runs"][0]["status"] == "completed"

        # The committed model as ONNX gives the npz model's predictions.
        _, npz, _ = _get(server.url + "/api/model?format=npz")
        _, onnx_bytes, _ = _get(server.url + "/api/model?format=onnx")
        params = np.load(io.BytesIO(npz))["params"]
        model = get_task("mnist", "softmax").build_model()
        x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
        z = model.logits(params, x)
        expected = np.exp(z - z.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        (got,) = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"features": x})
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    finally:
        server.stop()

    # Every log line is one JSON object (uvicorn's own lines included), the engine's among them.
    events = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert events and all({"time", "level", "logger", "message"} <= e.keys() for e in events)
    loggers = {e["logger"] for e in events}
    assert "webfl.engine" in loggers and "uvicorn.error" in loggers and "webfl.metrics" in loggers
    assert any("run 1 completed" in e["message"] for e in events if e["logger"] == "webfl.engine")
    # Every state transition is one event with structured fields, the round's and each volunteer's.
    rounds = [(e["from"], e["to"]) for e in events if e.get("event") == "round_state"]
    assert ("idle", "selecting") in rounds and ("aggregating", "broadcasting") in rounds and rounds[-1][1] == "idle"
    assert any(e.get("event") == "volunteer_state" and e["to"] == "training" and e["volunteer"] for e in events)
    assert not [e for e in events if e["level"] in ("ERROR", "CRITICAL")]  # the metrics listener stopped cleanly too
    other = [line for line in server.log().splitlines() if line and not line.startswith("{")]
    assert all(line.startswith("webfl:") for line in other), other  # only the CLI's own prints
