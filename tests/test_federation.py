"""Federated training end to end: a real server process, simulated volunteers over real sockets."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from test_server import Client, global_params

from servers import TOKEN, start_server


def simulate(server, *args: str, timeout: float = 300) -> str:
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_iid_reaches_88_percent_in_5_rounds(server):
    out = simulate(server, "--clients", "10", "--partition", "iid", "--rounds", "5")
    history = server.status()["history"]
    assert [h["round"] for h in history] == [1, 2, 3, 4, 5]
    assert all(h["participants"] == 10 for h in history)
    assert history[-1]["accuracy"] > 0.88, history
    assert history[-1]["accuracy"] > history[0]["accuracy"]
    assert out.count("accuracy") == 5 and "completed" in out  # one progress line per round


def test_pathological_noniid_reaches_80_percent_in_20_rounds(server):
    simulate(server, "--clients", "10", "--partition", "noniid", "--rounds", "20")
    history = server.status()["history"]
    assert len(history) == 20 and history[-1]["accuracy"] > 0.80, history[-1]


def test_a_volunteer_leaving_mid_round_does_not_stall_it(server):
    quitter = Client(server)
    quitter.join()
    sim = subprocess.Popen(
        [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        server.wait_for(lambda s: s["volunteers"]["ready"] == 4, timeout=30, what="4 ready volunteers")
        assert server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 4, "min_updates": 3, "deadline_s": 120})[0] == 202
        quitter.recv("task")
        quitter.ws.close()  # gone mid-round, its update never comes
        started = time.monotonic()
        status = server.wait_for(lambda s: s["history"], timeout=60, what="the round to commit")
        assert time.monotonic() - started < 60  # far sooner than the 120 s deadline
        assert status["history"][0]["participants"] == 3
    finally:
        sim.terminate()
        sim.wait(timeout=20)


@pytest.mark.parametrize("kill", [False, True], ids=["terminate", "kill-9"])
def test_a_restarted_server_resumes_from_its_last_committed_round(tmp_path, kill):
    first = start_server(tmp_path / "data")
    try:
        simulate(first, "--clients", "3", "--rounds", "2", "--local-epochs", "1")
        before, history = global_params(first), first.status()["history"]
    finally:
        first.stop(kill=kill)
    second = start_server(tmp_path / "data")
    try:
        status = second.status()
        assert status["history"] == history and status["model_version"] == 2
        np.testing.assert_array_equal(global_params(second), before)
        simulate(second, "--clients", "3", "--rounds", "1", "--local-epochs", "1")
        assert [h["round"] for h in second.status()["history"]] == [1, 2, 3]
    finally:
        second.stop()
