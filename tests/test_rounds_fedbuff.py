"""FedBuff in process: staleness weighting and refusal, the buffer, task expiry, pace
steering and the codec-capability check (the same selection service as sync rounds)."""

import asyncio

import numpy as np
from rounds_harness import TASK, Volunteer, make_engine, make_engine_with, small, until

from webfl.server.engine import RunConfig
from webfl.server.rounds.fedbuff import staleness_weight

SIZE = TASK.build_model().size


def fedbuff(**kw) -> RunConfig:
    return RunConfig.from_json({"mode": "fedbuff", "deadline_s": 30, **kw})


def test_updates_weigh_examples_times_the_staleness_discount_and_too_stale_ones_are_refused(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        vs = {p: Volunteer(engine, coord, p) for p in "abcd"}
        for v in vs.values():
            v.ready()
        engine.start(fedbuff(rounds=3, clients_per_round=4, buffer_size=1, max_staleness=1, staleness_exponent=1.0))
        await until(lambda: all(v.task() for v in vs.values()), what="4 tasks on model 0")
        stale_tasks = {p: v.task() for p, v in vs.items()}
        # a's fresh update commits version 1; b's (1 stale) version 2; c's is then 2 stale.
        assert (await vs["a"].update(small(0), n=100)).accepted
        await until(lambda: engine.model_version == 1, what="commit 1")
        before = engine.params.copy()
        assert (await vs["b"].update(small(1), n=300, task=stale_tasks["b"])).accepted
        await until(lambda: engine.model_version == 2, what="commit 2")
        # A one-update buffer's mean is the update itself (weights: next test); the staleness shows here.
        assert engine.status()["fedbuff"]["mean_staleness"] == 0.5
        np.testing.assert_allclose(engine.params, before + small(1), atol=1e-6)
        verdict = await vs["c"].update(small(2), task=stale_tasks["c"])
        assert not verdict.accepted and verdict.kind == "stale" and "2 model versions stale" in verdict.reason
        again = await vs["c"].update(small(2), task=stale_tasks["c"])  # its task was used up
        assert not again.accepted and again.kind == "duplicate"
        assert engine.status()["fedbuff"]["rejected_stale"] == 1
        await engine.stop()
        assert staleness_weight(0) == 1.0 and staleness_weight(3) == 0.5 and staleness_weight(3, 1.0) == 0.25

    asyncio.run(main())


def test_a_buffer_commits_the_staleness_weighted_mean_of_exactly_buffer_size_updates(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i}" for i in range(3)])
        engine.start(fedbuff(rounds=2, clients_per_round=3, buffer_size=2, staleness_exponent=0.5))
        await until(lambda: all(v.task() for v in vs), what="3 tasks")
        first = [v.task() for v in vs]
        assert (await vs[0].update(small(0), n=100)).accepted
        assert (await vs[1].update(small(1), n=100)).accepted
        await until(lambda: engine.model_version == 1, what="the first buffer")
        assert engine.history[0].participants == 2
        before = engine.params.copy()
        # v2's update is 1 version stale, v0 trains again on model 1 (fresh).
        vs[0].ready()
        await until(lambda: len(vs[0].of("task")) == 2, what="v0's second task")
        assert vs[0].task()["model_version"] == 1
        assert (await vs[2].update(small(2), n=300, task=first[2])).accepted
        assert (await vs[0].update(small(3), n=100)).accepted
        await until(lambda: not engine.running, what="the second buffer")
        w = np.array([300 / np.sqrt(2.0), 100.0])
        np.testing.assert_allclose(engine.params, before + (w[0] * small(2) + w[1] * small(3)) / w.sum(), atol=1e-6)

    asyncio.run(main())


def test_expired_tasks_free_their_slot_and_surplus_volunteers_are_steered(tmp_path):
    async def main():
        engine, coord, (a, b) = make_engine_with(tmp_path, "a", "b")
        engine.start(RunConfig.from_json({"mode": "fedbuff", "rounds": 1, "clients_per_round": 1, "buffer_size": 1, "deadline_s": 0.2,
                                              "max_wait_s": 0.05}))
        await until(lambda: a.task() or b.task(), what="one task")
        busy, spare = (a, b) if a.task() else (b, a)
        assert spare.of("wait") and engine.status()["fedbuff"]["in_flight"] == 1
        late_task = busy.task()
        await until(lambda: spare.task() is not None, what="the expired slot to go to the spare")
        late = await busy.update(small(0), task=late_task)
        assert not late.accepted and late.kind == "not_selected" and "expired" in late.reason
        assert (await spare.update(small(1))).accepted
        await until(lambda: not engine.running, what="the commit")

    asyncio.run(main())


def test_fedbuff_gives_tasks_only_to_volunteers_that_can_decode_the_codec(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        old, new = Volunteer(engine, coord, "old", codecs=["none"]), Volunteer(engine, coord, "new", codecs=["none", "q8"])
        old.ready()
        new.ready()
        engine.start(fedbuff(rounds=1, clients_per_round=2, buffer_size=1, codec="q8"))
        await until(lambda: new.task() is not None, what="a task for the q8 volunteer")
        await asyncio.sleep(0.05)
        assert old.task() is None and engine.status()["fedbuff"]["in_flight"] == 1
        assert (await new.update(small(0), codec="q8")).accepted
        await until(lambda: not engine.running, what="the commit")

    asyncio.run(main())
