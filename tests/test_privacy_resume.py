"""A dp run killed with SIGKILL and resumed by a restarted server keeps its epsilon exact:
the accountant is charged in the commit's transaction, so a round killed before COMMIT is
neither counted nor lost, and the re-run of it is charged once."""

import pytest
from test_churn import simulator, stop
from test_privacy_rounds import rdp_epsilon

from servers import free_port, start_server
from webfl.server.store import Store

Z = 2.0


@pytest.mark.parametrize("point", ["aggregating", "checkpoint"])
def test_kill_9_during_a_dp_commit_then_resume_keeps_epsilon_exact(tmp_path, point):
    data, port = tmp_path / "data", free_port()
    first = start_server(data, "--model", "softmax", port=port, env={"WEBFL_CRASHPOINT": f"{point}:3"})
    volunteers = simulator(first, "--clients", "3")  # reconnects to the restarted server by itself
    second = None
    try:
        first.wait_for(lambda s: s["volunteers"]["ready"] == 3, timeout=60, what="3 ready volunteers")
        config = {"rounds": 4, "clients_per_round": 3, "local_epochs": 1, "dp": {"noise_multiplier": Z, "clip": "adaptive", "count_noise": 2.0}}
        assert first.api("POST", "/api/rounds", config)[0] == 202
        assert first.proc.wait(timeout=120) == -9
        whole = Store(data / "webfl.sqlite3")
        store = whole.scoped("mnist", "softmax")
        committed = [r.to_dict() for r in store.history()]
        (version, accountant), (_, rule) = store.component_states(1)["privacy"], store.component_states(1)["rule"]
        whole.close()
        # Killed in round 3: two rounds charged, in the same transactions as their models.
        assert [r["round"] for r in committed] == [1, 2] and version == 2
        assert sum(e["rounds"] for e in accountant["events"]) == 2
        assert [r["epsilon"] for r in committed] == pytest.approx([rdp_epsilon(Z, 1), rdp_epsilon(Z, 2)])
        assert rule["clip"] == committed[1]["privacy"]["next_clip"]  # the adaptive clip of round 3

        second = start_server(data, "--model", "softmax", port=port)
        status = second.wait_for(lambda s: s["run"] and not s["run"]["running"], timeout=180, what="the resumed run to end")
        assert status["run"]["rounds_done"] == 4 and [h["round"] for h in status["history"]] == [1, 2, 3, 4]
        # Round 3 re-ran from the checkpointed clip, and every round is charged exactly once.
        assert status["history"][2]["privacy"]["clip"] == rule["clip"]
        assert [h["epsilon"] for h in status["history"]] == pytest.approx([rdp_epsilon(Z, n) for n in (1, 2, 3, 4)])
        assert status["run"]["privacy"]["epsilon"] == pytest.approx(rdp_epsilon(Z, 4))
        assert status["run"]["privacy"]["task_epsilon"] == pytest.approx(rdp_epsilon(Z, 4))
    finally:
        stop(volunteers)
        first.stop(kill=True)
        if second is not None:
            second.stop()
