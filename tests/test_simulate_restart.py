"""``webfl simulate --rounds N`` rides out a server restart: it launches the run once and
follows it to the end through a ``kill -9`` and a restart on the same data and port."""

import asyncio
import sqlite3
import time

import pytest

from servers import simulate_through_a_kill, start_server
from webfl.simulate import AdminClient, ServerUnreachable, launch_once


def test_the_simulator_finishes_its_run_through_a_kill_9_and_restart(tmp_path):
    # The server SIGKILLs itself mid-round 3, an accepted update only in memory.
    server = start_server(tmp_path / "data", env={"WEBFL_CRASHPOINT": "training:3"})
    out, err, _ = simulate_through_a_kill(server, server.url, rounds=6)
    assert "server unreachable" in err and "server back after" in err
    assert "completed with 6 round(s)" in out
    # One progress line per committed round, each once: 1-2 were seen before the kill, 3 re-ran after it.
    assert [line.split()[1] for line in out.splitlines() if line.startswith("round ")] == ["1", "2", "3", "4", "5", "6"]
    with sqlite3.connect(tmp_path / "data" / "webfl.sqlite3") as db:
        assert db.execute("SELECT id, status FROM runs").fetchall() == [(1, "completed")]  # launched once
        assert db.execute("SELECT round, run_id FROM rounds ORDER BY round").fetchall() == [(r, 1) for r in range(1, 7)]


# -- launching once: a POST that got no answer -------------------------------------------


class FlakyAdmin(AdminClient):
    """The admin API of a server that dies while answering the first POST.

    ``arrived`` says whether that POST reached the server (and started a run) before
    the connection broke.
    """

    def __init__(self, arrived: bool) -> None:
        super().__init__("http://unused", None)
        self.arrived, self.posts, self.run = arrived, 0, None

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        if method == "GET":
            return {"run": self.run, "history": []}
        self.posts += 1
        if self.posts == 1:
            if self.arrived:
                self.run = {"id": 8, "running": True, "rounds_done": 0, "config": body}
            raise ServerUnreachable("POST /api/rounds: Connection reset by peer")
        if self.run["running"]:
            raise RuntimeError("POST /api/rounds: HTTP 409: run 8 is still in progress")
        self.run = {"id": 8, "running": True, "rounds_done": 0, "config": body}
        return {"run": 8, "config": body}


@pytest.mark.parametrize("arrived", [True, False], ids=["post-arrived", "post-lost"])
def test_a_launch_that_got_no_answer_is_not_repeated_if_it_started_the_run(arrived, capsys):
    admin = FlakyAdmin(arrived)
    admin.run = {"id": 7, "running": False, "rounds_done": 3, "config": {}}  # the previous run
    run_id, config = asyncio.run(launch_once(admin, {"rounds": 2}, time.monotonic() + 30))
    assert config == {"rounds": 2}
    assert run_id == 8
    assert admin.posts == (1 if arrived else 2)
    assert "checking whether it started" in capsys.readouterr().err
