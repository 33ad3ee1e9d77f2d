"""Sync rounds in process: selection, over-selection, select timeout, deadline, abandon
and retry, min_updates, pace steering and the codec-capability check."""

import asyncio

import numpy as np
from rounds_harness import Volunteer, make_engine, make_engine_with, small, until

from webfl.core.protocol import decode, encode
from webfl.server.engine import PeerState, RunConfig


def run(coro):
    return asyncio.run(coro)


def test_over_selection_picks_the_cohort_steers_the_rest_and_closes_at_clients_per_round(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i}" for i in range(5)])
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=2, over_selection=1.5, deadline_s=30)))
        await until(lambda: sum(v.task() is not None for v in vs) == 3, what="3 tasks")
        chosen = [v for v in vs if v.task() is not None]
        others = [v for v in vs if v.task() is None]
        assert all(v.of("wait") and engine.peers.get(v.id).state is PeerState.WAITING for v in others)
        assert engine.status()["open_round"]["selected"] == 3 and engine.status()["waits_sent"] == 2
        before = engine.params.copy()
        for i, v in enumerate(chosen[:2]):
            assert (await v.update(small(i))).accepted
        await until(lambda: not engine.running, what="the run to end")  # closed at 2 of 3: no wait for the third
        late = await chosen[2].update(small(9))
        assert not late.accepted and late.kind == "round"
        await engine.commits.announcer.idle()
        (record,) = engine.history
        assert record.participants == 2 and engine.model_version == 1
        np.testing.assert_allclose(engine.params, before + (small(0) + small(1)) / 2, atol=1e-6)
        # Every connected volunteer heard of the commit by a notice, and none got the model
        # (it comes with a task); bytes_down counts the tasks and the notices.
        assert all([m["model_version"] for m in v.of("model")] == [0] for v in vs)  # on joining
        assert all([(m["model_version"], m["digest"]) for m in v.of("model_notice")] == [(1, engine.commits.chain.digest)] for v in vs)
        notice = min(len(encode(m)) for v in vs for m in v.of("model_notice"))
        assert record.bytes_down == engine.store.history()[0].bytes_down > 5 * notice
        assert record.bytes_down < engine.model.size * 4

    run(main())


def test_select_timeout_starts_with_fewer_but_never_below_min_updates(tmp_path):
    async def main():
        engine, coord, (a,) = make_engine_with(tmp_path, "a")
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=3, min_updates=2, select_timeout_s=0.05, deadline_s=30)))
        await asyncio.sleep(0.3)  # well past the select timeout: one is below min_updates
        assert engine.state.value == "selecting" and a.task() is None
        b = Volunteer(engine, coord, "b")
        b.ready()
        await until(lambda: a.task() is not None and b.task() is not None, what="a round of 2")
        assert engine.status()["open_round"]["selected"] == 2
        await engine.stop()

    run(main())


def test_deadline_abandons_a_round_below_min_updates_and_retries_it(tmp_path):
    async def main():
        engine, coord, (a, b) = make_engine_with(tmp_path, "a", "b")
        before = engine.params.copy()
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=2, min_updates=2, deadline_s=0.2, max_wait_s=0)))
        await until(lambda: a.task() and b.task(), what="tasks")
        first = a.task()
        assert (await a.update(small(0))).accepted  # b never answers
        await until(lambda: engine.state.value == "selecting", what="the round to be abandoned")
        np.testing.assert_array_equal(engine.params, before)
        assert engine.history == [] and engine.store.history() == []
        late = await b.update(small(1), task=b.task())
        assert not late.accepted and "not open" in late.reason
        a.ready()
        b.ready()
        await until(lambda: len(a.of("task")) == 2 and len(b.of("task")) == 2, what="the retry")
        assert a.task()["round"] == first["round"] == 1 and a.task()["token"] == first["token"]  # same round, same model
        assert (await a.update(small(2))).accepted and (await b.update(small(3))).accepted
        await until(lambda: not engine.running, what="the retried round to commit")
        assert [r.round for r in engine.history] == [1]

    run(main())


def test_a_volunteer_that_leaves_does_not_hold_the_round_to_its_deadline(tmp_path):
    async def main():
        engine, coord, (a, b) = make_engine_with(tmp_path, "a", "b")
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=2, min_updates=1, deadline_s=60)))
        await until(lambda: a.task() and b.task(), what="tasks")
        assert (await a.update(small(0))).accepted
        b.leave()
        await until(lambda: not engine.running, timeout=5, what="the round to close without b")
        assert engine.history[0].participants == 1

    run(main())


def test_rejections_are_classified_by_kind_and_leave_the_round_alone(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        a, spectator = Volunteer(engine, coord, "a"), Volunteer(engine, coord, "s")
        a.ready()
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=1, norm_bound="1.0", deadline_s=30)))
        await until(lambda: a.task() is not None, what="a task")
        nan = small(0)
        nan[3] = np.nan
        verdicts = [
            await a.update(nan),
            await a.update(small(0) * 1e4),
            await a.update(small(0), token="0" * 32),
            await a.update(small(0), model_version=7),
            await a.update(small(0), n=0),
            await a.update(small(0), codec="q8"),
            await a.update(np.zeros(10)),
            await spectator.update(small(0), task=a.task()),
        ]
        assert [v.kind for v in verdicts] == ["nan", "norm", "token", "model_version", "num_examples", "codec", "malformed", "not_selected"]
        assert (await a.update(small(0))).accepted
        dup = await a.update(small(0))
        assert dup.kind == "duplicate" and dup.reason == "duplicate update for round 1"
        await until(lambda: not engine.running, what="the commit")
        assert engine.status()["rejections"] == {k: 1 for k in ["codec", "duplicate", "malformed", "model_version", "nan", "norm", "not_selected", "num_examples", "token"]}

    run(main())


def test_sync_selects_only_volunteers_that_can_decode_the_codec(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        old, new = Volunteer(engine, coord, "old", codecs=["none"]), Volunteer(engine, coord, "new", codecs=["none", "q8"])
        old.ready()
        new.ready()
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=2, codec="q8", select_timeout_s=0.05, deadline_s=30)))
        await until(lambda: new.task() is not None, what="a task for the q8 volunteer")
        assert old.task() is None and new.task()["codec"] == "q8"
        assert (await new.update(small(0), codec="q8")).accepted
        await until(lambda: not engine.running, what="the commit")

    run(main())


def while_sent(coord, kind: str, action) -> None:
    """Call ``action(volunteer)`` while the first ``kind`` frame to one volunteer goes out:
    what its socket does then lands during the engine's await of the publish."""
    publish, done = coord.publish, []

    async def hooked(frame, to=None):
        sent = await publish(frame, to)
        if not done and to is not None and len(to) == 1 and decode(frame).type == kind:
            done.append(to[0])
            await asyncio.sleep(0)
            action(to[0])
        return sent

    coord.publish = hooked


def test_a_volunteer_that_leaves_while_its_task_goes_out_is_not_counted_and_the_round_goes_on(tmp_path):
    # The run failed with an IndexError from the registry's index when a simulator exited
    # at the first round.
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, "a", "b", "c")
        while_sent(coord, "task", lambda v: vs[0].leave())
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=3, min_updates=2, deadline_s=30)))
        await until(lambda: vs[1].task() is not None and vs[2].task() is not None, what="tasks")
        funnel = engine.status()["open_round"]["funnel"]
        assert (funnel["selected"], funnel["trained"]) == (3, 2)  # a's task never reached it
        assert engine.peers.in_state(PeerState.TRAINING) == ["b", "c"] and "a" not in engine.services.tasks.outstanding()
        for i, v in enumerate(vs[1:]):
            assert (await v.update(small(i))).accepted
        await until(lambda: not engine.running, what="the run to end")
        assert engine.model_version == 1 and [r["status"] for r in engine.store.runs()] == ["completed"]

    run(main())


def test_a_volunteer_that_pauses_while_its_task_goes_out_stays_paused_and_is_not_waited_for(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, "a", "b", "c")
        while_sent(coord, "task", engine.pause)
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=3, min_updates=2, deadline_s=30)))
        await until(lambda: all(v.task() is not None for v in vs), what="tasks")
        assert engine.peers.get("a").state is PeerState.PAUSED and engine.peers.in_state(PeerState.TRAINING) == ["b", "c"]
        for i, v in enumerate(vs[1:]):
            assert (await v.update(small(i))).accepted
        await until(lambda: not engine.running, what="the round to close without the paused volunteer")
        assert engine.history[0].participants == 2

    run(main())


def test_a_volunteer_that_pauses_while_its_wait_goes_out_stays_paused(tmp_path):
    # Moved to WAITING, it would be woken READY and selected while paused.
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, "a", "b", "c")
        paused = []
        while_sent(coord, "wait", lambda v: (engine.pause(v), paused.append(v)))
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=1, deadline_s=30)))
        await until(lambda: paused and sum(v.task() is not None for v in vs) == 1, what="a task and a wait")
        assert engine.peers.get(paused[0]).state is PeerState.PAUSED
        await engine.stop()

    run(main())
