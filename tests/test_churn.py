"""Issue 6: crash-safe resumable runs, FedBuff, pace steering, churn in the simulator."""

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from servers import TOKEN, free_port, start_server
from webfl.core.protocol import Message, encode
from webfl.core.volunteer import Volunteer
from webfl.server.crashpoints import POINTS
from webfl.server.store import Store


def simulator(server, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})


def simulate(server, *args: str, timeout: float = 240) -> str:
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- crash safety -------------------------------------------------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_a_crash_point_then_the_restarted_server_resumes_the_run(tmp_path, point):
    data, port = tmp_path / "data", free_port()
    first = start_server(data, port=port, env={"WEBFL_CRASHPOINT": f"{point}:3"})
    volunteers = simulator(first, "--clients", "3")  # stays up across the restart and reconnects by itself
    second = None
    try:
        first.wait_for(lambda s: s["volunteers"]["ready"] == 3, timeout=60, what="3 ready volunteers")
        config = {"rounds": 4, "clients_per_round": 3, "local_epochs": 1, "server_opt": "fedavgm:lr=1,momentum=0.5"}
        assert first.api("POST", "/api/rounds", config)[0] == 202
        assert first.proc.wait(timeout=120) == -9  # SIGKILL from WEBFL_CRASHPOINT
        assert f"WEBFL_CRASHPOINT={point}:3" in first.log()
        store = Store(data / "webfl.sqlite3")
        committed = [r.to_dict() for r in store.scoped("mnist", "2nn").history()]
        store.close()
        assert [r["round"] for r in committed] == [1, 2]  # round 3 was in flight: not a trace of it

        second = start_server(data, port=port)
        status = second.wait_for(lambda s: s["run"] and not s["run"]["running"], timeout=180, what="the resumed run to end")
        assert status["run"]["id"] == 1 and status["run"]["rounds_done"] == 4
        assert [h["round"] for h in status["history"]] == [1, 2, 3, 4]  # round 3 re-run once
        assert status["history"][:2] == committed  # committed history intact
        assert "resuming run 1 after 2 committed round(s) of 4" in second.log()
        with sqlite3.connect(data / "webfl.sqlite3") as db:
            assert db.execute("SELECT status FROM runs WHERE id = 1").fetchone() == ("completed",)
            # The optimizer's and the rule's states were checkpointed with the model (one row
            # each, at the last commit).
            assert db.execute("SELECT name, model_version, json_extract(fields, '$.steps') FROM component_state ORDER BY name").fetchall() == [
                ("rule", 4, None), ("server_opt", 4, 4)
            ]
        store = Store(data / "webfl.sqlite3")
        states = store.component_states(1)
        store.close()
        version, state = states["server_opt"]
        assert version == 4 and state["vector"].shape == (first_size(second),)
        assert states["rule"][0] == 4 and states["rule"][1]["rule"] == "fedavg"
    finally:
        stop(volunteers)
        first.stop(kill=True)
        if second is not None:
            second.stop()


def first_size(server) -> int:
    return sum(int(np.prod(shape)) for shape in [(784, 200), (200,), (200, 200), (200,), (200, 10), (10,)])


# -- FedBuff ------------------------------------------------------------------------------


def test_fedbuff_run_learns_through_the_real_server(server):
    out = simulate(server, "--clients", "6", "--clients-per-round", "3", "--rounds", "6", "--mode", "fedbuff",
                   "--buffer-size", "3", "--local-epochs", "1", "--speed-spread", "4")
    history = server.status()["history"]
    assert [h["round"] for h in history] == [1, 2, 3, 4, 5, 6] and "completed" in out
    assert all(h["participants"] == 3 for h in history)
    assert history[-1]["accuracy"] > 0.85 and history[-1]["accuracy"] > history[0]["accuracy"], history


# -- pace steering ------------------------------------------------------------------------


def test_the_volunteer_exposes_a_wait_once():
    v = Volunteer()
    assert v.receive(encode(Message("wait", {"retry_after_s": 2.5, "reason": "busy"}))) == []
    assert v.take_wait() == 2.5 and v.take_wait() is None


def test_surplus_volunteers_are_told_to_come_back_later_and_do(server):
    sim = subprocess.Popen(
        [sys.executable, "-m", "webfl.cli", "simulate", "--server", server.url, "--clients", "6"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        server.wait_for(lambda s: s["volunteers"]["ready"] == 6, timeout=60, what="6 ready volunteers")
        run = {"rounds": 4, "clients_per_round": 2, "local_epochs": 1, "select_timeout_s": 0}
        assert server.api("POST", "/api/rounds", run)[0] == 202
        status = server.wait_for(lambda s: len(s["history"]) == 4, timeout=120, what="4 rounds")
        assert status["waits_sent"] >= 4  # 4 of 6 ready were not selected in round 1 alone
        assert "pace steering" in server.log()
        # Told to wait, a simulated volunteer disconnects, and comes back once its time is up.
        server.wait_for(lambda s: server.log().count("connected from") > 6, timeout=60, what="a waiting volunteer to return")
    finally:
        sim.terminate()
        sim.wait(timeout=20)


# -- churn ----------------------------------------------------------------------------------


def test_the_simulator_survives_churn_dropout_and_slow_volunteers(server):
    out = simulate(server, "--clients", "8", "--clients-per-round", "4", "--rounds", "3", "--local-epochs", "1",
                   "--deadline-s", "4", "--churn", "0.3", "--dropout", "0.3", "--speed-spread", "5", "--away-s", "1")
    history = server.status()["history"]
    assert "completed" in out and [h["round"] for h in history] == [1, 2, 3]
    assert history[-1]["accuracy"] > 0.5
