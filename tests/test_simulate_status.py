"""How ``webfl simulate`` follows the run it launched through the admin API's status: a
status from before the run (a cluster member a beat behind the leader) is not its end.
In process, with a scripted admin API; ``test_simulate_restart.py`` runs a real server."""

import asyncio

import pytest

from webfl import simulate
from webfl.simulate import AdminClient, Simulation


class ScriptedAdmin(AdminClient):
    """Answers ``POST /api/rounds`` with run 1 and each ``GET /api/status`` with the next status."""

    def __init__(self, statuses: list[dict]) -> None:
        super().__init__("http://127.0.0.1:9", None)
        self.statuses, self.polls = statuses, 0

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        if method == "POST":
            return {"run": 1, "config": body}
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        return status


def entry(round_: int) -> dict:
    return {"run_id": 1, "round": round_, "eval_source": "server", "accuracy": 0.5, "loss": 1.0, "eval_examples": 0,
            "participants": 2, "bytes_up": 0, "bytes_down": 0, "duration_s": 0.1}


BEFORE = {"run": None, "history": []}
RUNNING = {"run": {"id": 1, "running": True}, "history": []}
DONE = {"run": {"id": 1, "running": False}, "history": [entry(1)]}


def follow(statuses: list[dict], monkeypatch, unseen_s: float = 5.0) -> tuple[int, int]:
    monkeypatch.setattr(simulate, "UNSEEN_S", unseen_s)
    sim = Simulation("http://127.0.0.1:9", 2)  # its volunteers find no server there, and retry
    sim.admin = admin = ScriptedAdmin(statuses)
    code = asyncio.run(sim.main({"rounds": 1}, timeout_s=30))
    return code, admin.polls


def test_a_status_from_before_the_run_is_not_its_end(monkeypatch, capsys):
    # The status before the launch, then twice the same from a member that has not heard yet.
    code, polls = follow([BEFORE, BEFORE, BEFORE, RUNNING, DONE], monkeypatch)
    assert code == 0 and polls == 5
    assert "run 1 completed with 1 round(s)" in capsys.readouterr().out


@pytest.mark.parametrize("statuses", [[BEFORE, RUNNING, {"run": {"id": 1, "running": False}, "history": []}],
                                      [BEFORE, RUNNING, {"run": {"id": 2, "running": True}, "history": []}]])
def test_a_run_stopped_or_followed_by_another_ended_early(statuses, monkeypatch, capsys):
    code, _ = follow(statuses, monkeypatch)
    assert code == 1 and "run 1 ended early with 0 round(s)" in capsys.readouterr().out


def test_a_run_never_shown_again_ended_unseen(monkeypatch, capsys):
    # A restarted server that did not resume it: no run, for longer than any member lags.
    code, polls = follow([BEFORE], monkeypatch, unseen_s=1.0)
    assert code == 1 and polls >= 3 and "ended early" in capsys.readouterr().out
