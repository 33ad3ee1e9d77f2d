"""Partial aggregates in process: a real leader engine, a follower's ``FollowerShares`` and a
real redis-server between them (the facts key, the relay stream, the flush channel). Two
of the four volunteers are the follower's: it vets and folds their updates, and the leader
merges its share. The multi-member test (``test_cluster.py``) runs the same through real
sockets and processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Coroutine

import numpy as np
import pytest
from rounds_harness import TASK, Volunteer, make_engine, make_engine_with, until

from webfl.core.codecs import Encoded, get_codec
from webfl.core.protocol import Message, decode, encode
from webfl.server import crashpoints
from webfl.server.engine import RunConfig
from webfl.server.rounds.shares import Share, ShareError, Vetted
from webfl.server.rounds.validation import fold

redis_asyncio = pytest.importorskip("redis.asyncio")

from webfl.server.cluster.bus import RedisCoordinator  # noqa: E402  (the cluster extra)
from webfl.server.cluster.lease import Holder  # noqa: E402
from webfl.server.cluster.partial import FollowerShares, LeaderHub, take_vetted  # noqa: E402
from webfl.server.cluster.relay import Kind, Relay  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

TERM = Holder("L", 7)
SIZE = TASK.build_model().size
HERE, THERE = ("a", "b"), ("c", "d")  # the leader's volunteers, the follower's


def delta(i: int) -> np.ndarray:
    """Multiples of 2**-10: every sum of them is exact, so arrival order cannot matter."""
    return (np.random.default_rng(i).integers(-8, 9, SIZE) * 2.0**-10).astype(np.float32)


def update(task: Message, d: np.ndarray, n: int = 100, **overrides) -> Message:
    fields = dict(round=task["round"], model_version=task["model_version"], num_examples=n, loss=1.0, accuracy=0.5, codec="none",
                  codec_params={}, token=task["token"])
    return Message("update", {**fields, **overrides}, (np.asarray(d, np.float32),))


def one_process(config: RunConfig, deltas: list[np.ndarray]) -> np.ndarray:
    """What one process commits from these updates: the run's own rule and optimizer."""
    rule, codec = config.rule(), get_codec("none")
    rule.begin(SIZE, len(deltas))
    for d in deltas:
        assert fold(rule, codec, Encoded({}, [d]), config.weight(100)) is None
    return config.optimizer().step(TASK.build_model().init(0), rule.finish())


class Cluster:
    """The leader's engine with its hub, and one follower's shares; the follower's volunteers are
    connected to the leader (as a relayed join registers them) and their tasks read from its inboxes."""

    def __init__(self, tmp_path, redis) -> None:
        self.engine, self.coordinator, self.volunteers = make_engine_with(tmp_path, *HERE, *THERE)
        self.leader_bus = RedisCoordinator(redis, "L")
        self.leader_bus.homes.update({v: "F" for v in THERE})
        self.engine.services.sharing.hub = LeaderHub(redis, TERM, self.leader_bus)
        follower_engine, _ = make_engine(tmp_path)  # the same store: the same task-token key
        self.follower_bus = RedisCoordinator(redis, "F")
        self.replies = {v: self.follower_bus.subscribe(v) for v in THERE}
        self.refused: list[str] = []
        self.shares = FollowerShares(redis, "F", Relay(redis, "F", 10.0), self.follower_bus, lambda task: follower_engine,
                                     lambda v: v in THERE, lambda task, kind: self.refused.append(kind))
        self.relay = Relay(redis, "L", 10.0)

    def volunteer(self, v: str) -> Volunteer:
        return next(x for x in self.volunteers if x.id == v)

    async def tasks(self) -> dict[str, Message]:
        await until(lambda: all(x.task() is not None for x in self.volunteers), what="every task")
        return {x.id: x.task() for x in self.volunteers}

    async def on_follower(self, v: str, msg: Message) -> Message:
        assert await self.shares.update(TERM, TASK.name, v, msg, encode(msg))
        return decode(await asyncio.wait_for(self.replies[v].get(), 5))

    async def shipped(self) -> list[Share]:
        _, events = await self.relay.read(TERM, "0", block_ms=100)
        return [Share.decode(e.data, SIZE) for e in events if e.kind is Kind.SHARE]


def run_in_redis(redis_server, test) -> None:
    async def main():
        redis = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            await test(redis)
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_a_follower_folded_round_commits_what_one_process_would_hostile_updates_never_reach_the_sum_a_second_share_is_ignored(
        tmp_path, redis_server):
    config = RunConfig.from_json({"rounds": 1, "clients_per_round": 4, "min_updates": 4, "deadline_s": 30})

    async def test(redis):
        c = Cluster(tmp_path, redis)
        c.engine.start(config)
        tasks = await c.tasks()
        for i, v in enumerate(HERE):
            assert (await c.volunteer(v).update(delta(i))).accepted
        # Refused at the follower with the leader's own checks, answered there, counted by the leader.
        hostile = [
            ("c", update(tasks["c"], np.full(SIZE, np.nan, np.float32)), "nan"),
            ("c", update(tasks["c"], delta(2), token="forged"), "token"),
            ("c", update(tasks["c"], delta(2)[:-1]), "malformed"),
            ("c", update(tasks["c"], delta(2), model_version=5), "model_version"),
            ("d", update(tasks["c"], delta(3)), "token"),  # another volunteer's task
            ("x", update(tasks["c"], delta(3)), "not_selected"),
        ]
        c.replies["x"] = c.follower_bus.subscribe("x")
        for v, msg, kind in hostile:
            reply = await c.on_follower(v, msg)
            assert reply.type == "reject", (kind, reply.fields)
        assert c.refused == [kind for *_, kind in hostile]
        assert await c.shipped() == []  # still waiting for c and d
        for i, v in enumerate(THERE, start=2):
            assert (await c.on_follower(v, update(tasks[v], delta(i)))).type == "accept"
        again = await c.on_follower("c", update(tasks["c"], delta(2)))
        assert again.type == "reject" and "not open" in again["reason"]  # the share is shipped: its round closed here
        (share,) = await c.shipped()  # both answered: shipped at once, without being asked
        assert sorted(share.accepted) == ["c", "d"] and share.partial.count == 2 and not share.pending
        assert c.engine.merge_share(share) is None
        await until(lambda: c.engine.model_version == 1, what="the commit")
        np.testing.assert_array_equal(c.engine.params, one_process(config, [delta(i) for i in range(4)]))
        assert c.engine.merge_share(share) is not None  # a replayed entry: the round is over
        record = c.engine.history[-1]
        assert record.funnel["accepted"] == 4 and record.funnel["rejected"] == {"malformed": 1, "model_version": 1, "nan": 1,
                                                                                   "not_selected": 1, "token": 2}

    run_in_redis(redis_server, test)


def test_a_second_share_of_a_round_from_one_member_is_refused_and_changes_nothing(tmp_path, redis_server, monkeypatch):
    """And the ``training`` crash point fires at the merge: the sum lives only in the
    leader's memory, as an update accepted there does."""
    config = RunConfig.from_json({"rounds": 1, "clients_per_round": 4, "min_updates": 4, "deadline_s": 30})
    kills = []
    monkeypatch.setenv("WEBFL_CRASHPOINT", "training:1")
    monkeypatch.setattr(crashpoints.os, "kill", lambda pid, sig: kills.append(sig))  # os.kill, for this test only

    async def test(redis):
        c = Cluster(tmp_path, redis)
        c.engine.start(config)
        tasks = await c.tasks()
        assert (await c.on_follower("c", update(tasks["c"], delta(2)))).type == "accept"
        # d has not answered: the share goes when the leader asks (as at the round's close).
        await c.shares.flush(TERM, TASK.name, 1)
        (share,) = await c.shipped()
        assert share.pending == {"d"} and sorted(share.accepted) == ["c"]
        assert kills == []  # the follower accepted, not the leader
        assert c.engine.merge_share(share) is None
        assert kills == [signal.SIGKILL]
        before = c.engine.run.rule.partial()
        assert "second share" in c.engine.merge_share(share)  # a replayed stream entry
        assert kills == [signal.SIGKILL]
        after = c.engine.run.rule.partial()
        assert c.engine.status()["open_round"]["received"] == 1 and after.count == before.count == 1
        np.testing.assert_array_equal(after.sum, before.sum)
        # Let the round see the merge first: Python 3.11's wait_for drops a cancellation that lands
        # as the event it waits on is set (the engine's stop() would then wait on a running round).
        await asyncio.sleep(0.05)
        await c.engine.stop()

    run_in_redis(redis_server, test)


@pytest.mark.parametrize("min_updates, commits", [(2, True), (3, False)])
def test_a_follower_that_never_ships_loses_only_its_volunteers_updates(tmp_path, redis_server, min_updates, commits):
    config = RunConfig.from_json({"rounds": 1, "clients_per_round": 4, "min_updates": min_updates, "deadline_s": 1})

    async def test(redis):
        c = Cluster(tmp_path, redis)
        c.engine.start(config)
        tasks = await c.tasks()
        for i, v in enumerate(HERE):
            assert (await c.volunteer(v).update(delta(i))).accepted
        assert (await c.on_follower("c", update(tasks["c"], delta(2)))).type == "accept"
        # The follower dies here: d never answers, nothing is shipped, and the leader's ask reaches nobody.
        if commits:
            await until(lambda: c.engine.model_version == 1, timeout=10, what="the commit without the follower")
            np.testing.assert_array_equal(c.engine.params, one_process(config, [delta(0), delta(1)]))
        else:
            await until(lambda: c.engine.store.abandoned_rounds(), timeout=10, what="the abandoned round")
            assert c.engine.store.abandoned_rounds()[0].why == "too_few_updates" and c.engine.model_version == 0
        await c.engine.stop()

    run_in_redis(redis_server, test)


class RefusesOnce(Relay):
    """A relay whose first shipment Redis refuses (a dropped connection, a full server)."""

    refusals = 1

    async def send(self, *args, **kwargs) -> None:
        if self.refusals:
            self.refusals -= 1
            raise RedisError("connection reset by peer")
        await super().send(*args, **kwargs)


async def merging(c: Cluster, verdicts: list[str | None]) -> None:
    """The leader's side of the relay for shares and vetted updates (``ClusterMember._apply``): each as it comes."""
    after = "0"
    while True:
        after, events = await c.relay.read(TERM, after, block_ms=100)
        for e in events:
            if e.kind is Kind.SHARE:
                verdicts.append(c.engine.merge_share(Share.decode(e.data, SIZE)))
            elif e.kind is Kind.VETTED:
                await take_vetted(c.engine, c.leader_bus.homes, e.member, e.data, 2**24)


@contextlib.asynccontextmanager
async def started(c: Cluster, config: RunConfig, *background: Coroutine) -> AsyncIterator[dict[str, Message]]:
    """The run started on the leader, its own volunteers' updates in and ``background`` running; yields the tasks."""
    running = [asyncio.create_task(b) for b in background]
    try:
        c.engine.start(config)
        tasks = await c.tasks()
        for i, v in enumerate(HERE):
            assert (await c.volunteer(v).update(delta(i))).accepted
        yield tasks
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


@pytest.mark.parametrize("lost", ["ask", "shipment"])
def test_a_lost_ask_or_a_refused_shipment_loses_no_update(tmp_path, redis_server, lost):
    # min_updates 3: without the follower's share the round is abandoned.
    config = RunConfig.from_json({"rounds": 1, "clients_per_round": 4, "min_updates": 3, "deadline_s": 1})

    async def test(redis):
        c = Cluster(tmp_path, redis)
        asks: list[int] = []

        async def flusher(task: str, round_: int) -> None:
            asks.append(round_)
            if lost == "ask" and len(asks) == 1:
                return  # pub/sub delivers at most once: this ask never arrives
            await c.shares.flush(TERM, task, round_)

        c.follower_bus.flusher = flusher
        if lost == "shipment":
            c.shares.relay = RefusesOnce(redis, "F", 10.0)
        verdicts: list[str | None] = []
        async with started(c, config, c.follower_bus.listen(), merging(c, verdicts)) as tasks:
            # "ask": d is a straggler, so c's share waits for the close's ask, and the first ask is lost.
            # "shipment": both answer, the share goes at once, and Redis refuses that shipment.
            followers = THERE if lost == "shipment" else THERE[:1]
            for i, v in enumerate(followers, start=2):
                assert (await c.on_follower(v, update(tasks[v], delta(i)))).type == "accept"
            await until(lambda: c.engine.model_version == 1 or c.engine.store.abandoned_rounds(), timeout=10, what="the round's end")
            assert c.engine.model_version == 1, c.engine.store.abandoned_rounds()
            np.testing.assert_array_equal(c.engine.params, one_process(config, [delta(i) for i in range(2 + len(followers))]))
            assert c.engine.history[-1].funnel["accepted"] == 2 + len(followers)
            assert verdicts[0] is None and all("second share" in why for why in verdicts[1:])  # copies change nothing
            if lost == "ask":
                assert len(asks) >= 2

    run_in_redis(redis_server, test)


def test_a_buffered_round_is_vetted_on_the_follower_shipped_in_batches_and_folded_by_the_leader_as_one_process_would(
        tmp_path, redis_server):
    config = RunConfig.from_json({"rounds": 1, "clients_per_round": 4, "min_updates": 4, "deadline_s": 30, "aggregator": "median"})

    async def test(redis):
        c = Cluster(tmp_path, redis)
        async with started(c, config, merging(c, [])) as tasks:
            hostile = [
                ("c", update(tasks["c"], np.full(SIZE, np.nan, np.float32)), "nan"),
                ("c", update(tasks["c"], delta(2), token="forged"), "token"),
                ("c", update(tasks["c"], delta(2)[:-1]), "malformed"),
                ("d", update(tasks["c"], delta(3)), "token"),
                ("x", update(tasks["c"], delta(3)), "not_selected"),
            ]
            c.replies["x"] = c.follower_bus.subscribe("x")
            c.leader_bus.homes["x"] = "F"  # as its relayed join registers it
            for v, msg, kind in hostile:  # refused and answered at the follower's edge
                reply = await c.on_follower(v, msg)
                assert reply.type == "reject", (kind, reply.fields)
            assert c.refused == [kind for *_, kind in hostile]
            # Two updates at once: the second joins the first's write, one stream entry for both.
            mine = {v: update(tasks[v], delta(i)) for i, v in enumerate(THERE, start=2)}
            assert await asyncio.gather(*(c.shares.update(TERM, TASK.name, v, m, encode(m)) for v, m in mine.items())) == [True, True]
            await until(lambda: c.engine.model_version == 1, what="the commit")
            np.testing.assert_array_equal(c.engine.params, one_process(config, [delta(i) for i in range(4)]))
            _, events = await c.relay.read(TERM, "0", block_ms=100)
            batches = [Vetted.decode(e.data, 2**24) for e in events if e.kind is Kind.VETTED]
            assert [sorted(v for v, _ in b.updates) for b in batches if b.updates] == [["c", "d"]]
            assert sorted(r for b in batches for _, r in b.refused) == sorted(kind for *_, kind in hostile)
            assert not [e for e in events if e.kind in (Kind.FRAME, Kind.SHARE)]  # no frame relayed, no sum
            for v in THERE:  # the leader's verdict, answered to the volunteer
                assert [m.type for m in c.volunteer(v).inbox if m.type in ("accept", "reject")] == ["accept"]
            record = c.engine.history[-1]
            assert record.funnel["accepted"] == 4 and record.funnel["rejected"] == {"malformed": 1, "nan": 1, "not_selected": 1, "token": 2}

    run_in_redis(redis_server, test)


def test_a_batch_of_vetted_updates_that_does_not_fit_its_header_is_refused():
    good = Vetted(3, (("c", b"abc"), ("d", b"de")), (("x", "token"),))
    assert Vetted.decode(good.encode(), 16) == good
    data = good.encode()
    for bad in (data[:-1], data + b"!", data[:4], b"\xff\xff\xff\xff{}", data.replace(b'"round": 3', b'"round": 0')):
        with pytest.raises(ShareError):
            Vetted.decode(bad, 16)
    with pytest.raises(ShareError):
        Vetted.decode(data, 2)  # a frame longer than a frame may be


def test_the_leaders_verdict_on_a_vetted_update_is_final_a_norm_it_refuses_is_answered_and_logged(tmp_path, redis_server, caplog):
    config = RunConfig.from_json({"rounds": 1, "clients_per_round": 4, "min_updates": 4, "deadline_s": 30, "norm_bound": "1"})

    async def test(redis):
        c = Cluster(tmp_path, redis)
        async with started(c, config, merging(c, [])) as tasks:
            # Norm about 4, over the bound of 1: the follower cannot know (the bound is the leader's), so it ships it.
            big = update(tasks["c"], 10 * delta(2))
            assert await c.shares.update(TERM, TASK.name, "c", big, encode(big))
            await until(lambda: any(m.type == "reject" for m in c.volunteer("c").inbox), what="the leader's reject")
            assert "norm" in next(m for m in c.volunteer("c").inbox if m.type == "reject")["reason"]
            assert any("refused by the leader" in r.getMessage() and "norm" in r.getMessage() for r in caplog.records)
            for i, v in enumerate(THERE, start=2):  # c's task stayed open, as in one process
                m = update(tasks[v], delta(i))
                assert await c.shares.update(TERM, TASK.name, v, m, encode(m))
            await until(lambda: c.engine.model_version == 1, what="the commit")
            np.testing.assert_array_equal(c.engine.params, one_process(config, [delta(i) for i in range(4)]))
            assert c.engine.history[-1].funnel["rejected"] == {"norm": 1}

    run_in_redis(redis_server, test)
