"""The funnel on a real ``webfl serve``: a committed round (one update rejected, one capped)
and an abandoned one keep their funnels across a restart, in /api/status and /api/history."""

from __future__ import annotations

import numpy as np
from test_server import Client

from servers import start_server
from webfl.core.tasks import get_task

SIZE = get_task("mnist", "softmax").build_model().size


def test_the_history_carries_each_round_s_funnel_after_a_restart(tmp_path):
    data = tmp_path / "data"
    server = start_server(data, "--model", "softmax")
    try:
        big, nan = Client(server), Client(server)
        big.join()
        nan.join()
        server.wait_for(lambda s: s["volunteers"]["ready"] == 2, timeout=30, what="2 ready volunteers")
        code, _ = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 2, "deadline_s": 30, "max_examples": 500})
        assert code == 202
        assert big.update(big.recv("task").fields, np.full(SIZE, 1e-3, np.float32), n=28_705).type == "accept"
        bad = np.zeros(SIZE, np.float32)
        bad[7] = np.nan
        assert nan.update(nan.recv("task").fields, bad).type == "reject"
        for client in (big, nan):
            client.send("ready", num_examples=100)
        status = server.wait_for(lambda s: s["history"] and not s["run"]["running"], timeout=60, what="the commit")
        committed = status["history"][0]["funnel"]
        assert (committed["selected"], committed["reported"], committed["accepted"], committed["capped"]) == (2, 2, 1, 1)
        assert committed["rejected"] == {"nan": 1} and committed["examples"]["max"] == 28_705

        # A round that cannot reach min_updates: both answer, one is refused, so it is abandoned.
        code, _ = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 2, "min_updates": 2, "deadline_s": 30})
        assert code == 202
        assert big.update(big.recv("task").fields, np.full(SIZE, 1e-3, np.float32)).type == "accept"
        assert nan.update(nan.recv("task").fields, bad).type == "reject"
        for client in (big, nan):
            client.send("ready", num_examples=100)
        server.wait_for(lambda s: any(r["abandoned"] for r in server.api("GET", "/api/history")[1]["rounds"]),
                        timeout=60, what="the abandoned round")
        assert server.api("POST", "/api/rounds/stop")[0] == 200
    finally:
        server.stop()

    server = start_server(data, "--model", "softmax")
    try:
        status = server.status()
        assert [h["funnel"] for h in status["history"]] == [committed]
        code, body = server.api("GET", "/api/history")
        assert code == 200
        first, abandoned = body["rounds"][:2]
        assert first["abandoned"] is False and first["funnel"] == committed
        assert abandoned["abandoned"] is True and abandoned["why"] == "too_few_updates" and abandoned["run_id"] == 2
        assert abandoned["funnel"]["accepted"] == 1 and abandoned["funnel"]["rejected"] == {"nan": 1}
    finally:
        server.stop()
