"""A redefined task on a real server: the edit is answered over HTTP, and a restart of the
process serves the edited definition and its new model."""

from __future__ import annotations

import json

from servers import start_server

HEART = {
    "name": "heart", "title": "Heart disease", "kind": "tabular", "features": ["age", "chol"],
    "label": "target", "classes": ["no", "yes"], "model": {"type": "mlp", "hidden": []},
}


def test_a_restart_keeps_an_edited_definition(tmp_path):
    task_file, data = tmp_path / "heart.json", tmp_path / "data"
    task_file.write_text(json.dumps(HEART))
    server = start_server(data, "--task-file", str(task_file))
    try:
        edited = {**HEART, "title": "Heart disease (edited)", "features": ["age", "chol", "bp"], "model": {"type": "mlp", "hidden": [4]}}
        code, body = server.api("PUT", "/api/tasks/heart", edited)
        assert code == 200 and body["title"] == "Heart disease (edited)", body
        assert server.api("PUT", "/api/tasks/heart", edited, token=None)[0] == 401
        code, body = server.api("PUT", "/api/tasks/heart", {**edited, "holdout": 0.9})
        assert code == 400 and body["error"].startswith("holdout")
    finally:
        server.stop()
    again = start_server(data)  # no flags: the stored definitions (a --task-file would replace it)
    try:
        code, heart = again.api("GET", "/api/tasks/heart")
        assert code == 200 and heart["title"] == "Heart disease (edited)" and heart["features"] == ["age", "chol", "bp"]
        status = again.api("GET", "/api/tasks/heart/status")[1]
        assert (status["model_version"], status["task"]["model"], status["task"]["num_features"]) == (0, "mlp-4", 3)
    finally:
        again.stop()
