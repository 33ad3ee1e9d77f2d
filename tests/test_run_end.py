"""A run's end reaches every volunteer with its reason: the status frame's ``ended``."""

from __future__ import annotations

import asyncio

from rounds_harness import Volunteer, make_engine, small, until

from test_privacy_rounds import dp_run, rdp_epsilon
from test_volunteer import joined, server
from webfl.core.protocol import Message, decode
from webfl.server.engine import RunConfig


def config(**kw) -> RunConfig:
    return RunConfig.from_json({"deadline_s": 30, "max_wait_s": 0, "clients_per_round": 1, **kw})


def last_status(v: Volunteer) -> Message:
    return v.of("status")[-1]


def test_a_completed_run_says_so_and_a_new_run_clears_it(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        assert decode(engine.status_frame())["ended"] is None  # no run yet: nothing ended
        v.ready()
        engine.start(config(rounds=1))
        await until(lambda: v.task() is not None, what="the task")
        assert last_status(v)["ended"] is None and last_status(v)["run"] == [0, 1]
        assert (await v.update(small(0))).accepted
        await until(lambda: not engine.running, what="the run to end")
        assert last_status(v)["run"] == [1, 1] and last_status(v)["ended"] == "completed"
        # A volunteer connecting later is told too: sockets.py sends it engine.status_frame().
        assert decode(engine.status_frame())["ended"] == "completed"
        engine.start(config(rounds=1))
        await until(lambda: last_status(v)["run"] == [0, 1], what="the new run's status")
        assert last_status(v)["ended"] is None
        await engine.stop()

    asyncio.run(main())


def test_a_run_stopped_by_the_operator_mid_round_says_stopped(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        v.ready()
        engine.start(config(rounds=5))
        await until(lambda: v.task() is not None, what="the task")
        assert await engine.stop()  # the open round is abandoned
        assert last_status(v)["run"] == [0, 5] and last_status(v)["ended"] == "stopped"

    asyncio.run(main())


def test_a_run_that_spent_its_privacy_budget_says_max_epsilon(tmp_path):
    z = 2.0
    cap = (rdp_epsilon(z, 1) + rdp_epsilon(z, 2)) / 2  # one round fits, a second would not

    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        v.ready()
        engine.start(dp_run({"noise_multiplier": z, "clip": 1.0, "max_epsilon": cap}, rounds=10, clients_per_round=1))
        await until(lambda: v.task() is not None, what="the task")
        assert (await v.update(small(0))).accepted
        await until(lambda: not engine.running, what="the run to stop")
        assert last_status(v)["run"] == [1, 10] and last_status(v)["ended"] == "max_epsilon"

    asyncio.run(main())


def test_the_volunteer_keeps_a_known_reason_and_ignores_anything_else():
    v = joined()
    for ended, kept in (("stopped", "stopped"), ("max_epsilon", "max_epsilon"), ("<script>", None), (None, None)):
        v.receive(server("status", state="idle", round=2, model_version=2, connected=1, history=[], run=[2, 5], ended=ended))
        assert v.snapshot()["run_ended"] == kept
    v.receive(server("status", state="idle", round=2, model_version=2, connected=1, history=[]))  # an older server
    assert v.snapshot()["run_ended"] is None
