"""Two tasks on one real server at once, trained by the simulator's Python volunteers over
real sockets, each round evaluated on the volunteers' holdouts; a restart keeps both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from servers import TOKEN, start_server
from webfl.core.tasks import BUILT_IN

BLOBS = {
    "name": "blobs", "title": "Two blobs", "kind": "tabular", "features": ["a", "b", "c"], "label": "kind",
    "classes": ["left", "right"], "model": {"type": "mlp", "hidden": []},
    "scaling": {"mean": [0, 0, 0], "std": [1, 1, 1]}, "training": {"epochs": 2, "batch_size": 8, "lr": 0.5},
}


def _blobs_csv(path, n: int = 240) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3)) + np.where(y[:, None] == 1, 1.5, -1.5)
    rows = ["kind,c,note,a,b"] + [f"{'right' if k else 'left'},{r[2]:.4f},x{i},{r[0]:.4f},{r[1]:.4f}" for i, (k, r) in enumerate(zip(y, x))]
    path.write_text("\n".join(rows) + "\n")


def _simulate(server, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--timeout-s", "240", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})


def test_two_tasks_train_at_once_with_federated_evaluation_and_survive_a_restart(tmp_path):
    tasks, csv = tmp_path / "tasks.json", tmp_path / "blobs.csv"
    tasks.write_text(json.dumps([BLOBS, BUILT_IN["breast-cancer"].to_json()]))  # its scaling: federated statistics
    _blobs_csv(csv)
    data = tmp_path / "data"
    server = start_server(data, "--task-file", str(tasks))
    try:
        blobs = _simulate(server, "--task", "blobs", "--data", str(csv), "--clients", "4", "--rounds", "3",
                          "--partition", "dirichlet:1.0", "--clients-per-round", "2")
        cancer = _simulate(server, "--task", "breast-cancer", "--clients", "3", "--rounds", "2", "--clients-per-round", "2")
        out_blobs, out_cancer = blobs.communicate(timeout=300)[0], cancer.communicate(timeout=300)[0]
        assert blobs.returncode == 0, out_blobs[-3000:]
        assert cancer.returncode == 0, out_cancer[-3000:]
        assert "federated over" in out_blobs and "federated over" in out_cancer
        code, listing = server.api("GET", "/api/tasks")
        assert code == 200 and [t["name"] for t in listing["tasks"]] == ["blobs", "breast-cancer"] and listing["default"] == "blobs"
        histories = {name: server.api("GET", f"/api/tasks/{name}/history")[1]["rounds"] for name in ("blobs", "breast-cancer")}
        assert [r["round"] for r in histories["blobs"]] == [1, 2, 3] and [r["round"] for r in histories["breast-cancer"]] == [1, 2]
        for rounds in histories.values():
            # Every round's model evaluated where the data is: the volunteers' holdouts.
            assert all(r["eval_source"] == "federated" and r["eval_volunteers"] >= 1 and r["eval_examples"] > 0 for r in rounds)
        # Separable blobs: the federated model learns them (chance is 0.5).
        assert histories["blobs"][-1]["accuracy"] > 0.8, histories["blobs"]
        # Breast cancer's features span 0.001 to 4,000: only the scaling the volunteers'
        # statistics fixed lifts it off the majority class (63%).
        assert histories["breast-cancer"][-1]["accuracy"] > 0.85, histories["breast-cancer"]
        scaled = server.api("GET", "/api/tasks/breast-cancer")[1]
        assert len(scaled["scaling"]["mean"]) == 30 and scaled["scaling"]["mean"][3] > 100  # mean area
    finally:
        server.stop()
    again = start_server(data)  # no flags: the stored tasks, and MNIST as the default
    try:
        listing = again.api("GET", "/api/tasks")[1]
        assert sorted(t["name"] for t in listing["tasks"]) == ["blobs", "breast-cancer", "mnist"]
        for name, rounds in histories.items():
            assert again.api("GET", f"/api/tasks/{name}/history")[1]["rounds"] == rounds
        assert again.api("GET", "/api/tasks/blobs/status")[1]["model_version"] == 3
        assert again.api("GET", "/api/tasks/breast-cancer")[1]["scaling"] == scaled["scaling"]  # kept
    finally:
        again.stop()
