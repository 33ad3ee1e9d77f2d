"""SecAgg over a real server (``webfl serve`` in a subprocess): a refused run setting is a
400 that says why (every refusal: test_secagg_config.py), and ``webfl simulate --secagg-dropout 0.3``
commits rounds whose survivors' reveals rebuild the vanished volunteers' masks."""

import os
import re
import subprocess
import sys

from servers import TOKEN

def test_a_refused_combination_is_a_400_that_says_why(server):
    code, answer = server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 8, "min_updates": 2, "aggregator": "median",
                                                      "secagg": {"clip": 1.0}})
    assert code == 400 and "needs each update" in answer["error"], answer
    assert server.status()["run"] is None


def test_simulated_volunteers_commit_secagg_rounds_through_30_percent_dropout(tmp_path):
    from servers import start_server

    server = start_server(tmp_path / "data", "--model", "softmax")
    try:
        cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", "10", "--rounds", "2",
               "--local-epochs", "1", "--min-updates", "5", "--deadline-s", "30", "--secagg", '{"clip": 1.0, "stage_s": 5}',
               "--secagg-dropout", "0.3", "--away-s", "0.5", "--timeout-s", "180"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=200, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "completed with 2 round(s)" in done.stdout
        history = server.status()["history"]
        # Each round: everyone selected uploaded, 30% of them then vanished before unmasking,
        # and all are in the sum (10 unless the select timeout started a round with fewer).
        revealed = [tuple(map(int, m)) for m in re.findall(r"secagg round \d+: (\d+) of (\d+) survivors revealed", server.log())]
        assert len(revealed) == 2, (revealed, history)
        for (answered, survivors), entry in zip(revealed, history):
            assert entry["participants"] == survivors >= 5 and answered == survivors - round(0.3 * survivors)
    finally:
        server.stop()
