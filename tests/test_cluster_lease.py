"""The leader lease on a real redis-server, and fencing in process: two lease holders,
and the older one's commit aborts with the store unchanged (Kleppmann's fencing)."""

import asyncio
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from rounds_harness import Volunteer, make_engine, small, until

from webfl.server.cluster.lease import Holder, Lease
from webfl.server.engine import RunConfig
from webfl.server.coordinator import SlowConsumer
from webfl.server.store import Fenced

redis_asyncio = pytest.importorskip("redis.asyncio")


def test_one_holder_at_a_time_renewal_keeps_it_expiry_hands_it_over_with_a_larger_token(redis_server):
    async def main():
        redis = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            a, b = Lease(redis, "a", 0.4), Lease(redis, "b", 0.4)
            first = await a.acquire()
            assert first is not None and first.member == "a"
            assert await b.acquire() is None
            assert await b.holder() == first
            for _ in range(4):  # renewed well within the lease: held past several leases
                await asyncio.sleep(0.15)
                assert await a.renew(first)
                assert await b.acquire() is None
            await asyncio.sleep(0.6)  # a pauses past its lease
            second = await b.acquire()
            assert second is not None and second.member == "b" and second.token > first.token
            assert not await a.renew(first)  # the paused holder learns it lost
            assert await b.holder() == second
            await a.release(first)  # not a's to release any more
            assert await b.holder() == second
            await b.release(second)
            assert await b.holder() is None
            third = await a.acquire()
            assert third.token > second.token
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_holder_values_parse_strictly():
    assert Holder.parse(b"host-8001 12") == Holder("host-8001", 12)
    assert Holder.parse("x 3").value == "x 3"
    assert Holder.parse(None) is None and Holder.parse(b"12") is None and Holder.parse(b"x y") is None


def test_a_stale_leaders_commit_aborts_and_leaves_the_store_unchanged(tmp_path):
    async def main():
        old, coord = make_engine(tmp_path)  # the leader of term 1
        old.commits.fence = 1
        old.store.store.fenced_tx(1, [])
        a = Volunteer(old, coord, "a")
        a.ready()
        old.start(RunConfig.from_json({"rounds": 3, "clients_per_round": 1, "deadline_s": 30}))
        await until(lambda: a.task() is not None, what="a task")
        assert (await a.update(small(0))).accepted
        await until(lambda: old.model_version == 1, what="commit 1 under token 1")
        a.ready()
        await until(lambda: len(a.of("task")) == 2, what="round 2")
        # Term 2 begins elsewhere while this leader is paused: its token reaches the store.
        old.store.store.fenced_tx(2, [])
        before = (old.store.latest_checkpoint(), old.store.history(), old.store.component_states(old.run.id))
        assert (await a.update(small(1))).accepted
        await until(lambda: not old.running, what="the stale leader to give up")
        version, params = old.store.latest_checkpoint()
        assert version == before[0][0] == 1 and np.array_equal(params, before[0][1])
        assert old.store.history() == before[1] and len(before[1]) == 1
        assert old.store.component_states(old.run.id).keys() == before[2].keys()
        assert old.model_version == 1 and not old.leading
        # Not ended: the run is the new leader's to resume.
        assert old.store.interrupted_runs() == [old.run.id]
        fresh = replace(old.store.history()[0], round=2, model_version=2)  # a row nothing else refuses
        with pytest.raises(Fenced):
            old.store.commit_round(fresh, params, fence=1)
        assert len(old.store.history()) == 1 and old.store.store.fence_token() == 2
        old.store.commit_round(fresh, params, fence=2)  # the current token commits it
        assert len(old.store.history()) == 2

    asyncio.run(main())


def test_frames_reach_volunteers_on_this_member_locally_and_on_others_through_their_channel(redis_server):
    from webfl.server.cluster.bus import RedisCoordinator

    async def main():
        redis = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            leader, follower = RedisCoordinator(redis, "L", queue_size=4), RedisCoordinator(redis, "F", queue_size=4)
            listening = asyncio.create_task(follower.listen())
            await asyncio.sleep(0.2)  # subscribed
            here, there = leader.subscribe("here"), follower.subscribe("there")
            leader.homes["there"] = "F"
            assert await leader.publish(b"to both", to=["here", "there", "nobody"]) == 2
            assert await asyncio.wait_for(here.get(), 5) == b"to both"
            assert await asyncio.wait_for(there.get(), 5) == b"to both"
            assert await leader.publish(b"everyone") == 2  # None: local and known remote volunteers
            assert await asyncio.wait_for(there.get(), 5) == b"everyone"
            # The slow-consumer protection is per socket, on the member holding it.
            for i in range(6):
                await leader.publish(b"%d" % i, to=["there"])
            await asyncio.sleep(0.3)
            got = []
            with pytest.raises(SlowConsumer):
                while True:
                    got.append(await asyncio.wait_for(there.get(), 5))
            assert got == [b"1", b"2", b"3"]  # the queue of 4 overflowed: its oldest made room for the drop notice
            # A large frame (a model) goes once into a key by digest; the channel carries only its name.
            messages = redis.pubsub(ignore_subscribe_messages=True)
            await messages.subscribe("webfl:member:F")
            model = np.random.default_rng(0).bytes(800_000)
            joining = follower.subscribe("joining")  # "there" overflowed above
            leader.homes["joining"] = "F"
            for _ in range(3):
                assert await leader.publish(model, to=["joining"]) == 1
                assert await asyncio.wait_for(joining.get(), 5) == model
            sizes, deadline = [], asyncio.get_running_loop().time() + 5
            while len(sizes) < 3 and asyncio.get_running_loop().time() < deadline:
                # None also stands for the subscription's own confirmation, which is skipped.
                if (message := await messages.get_message(timeout=0.5)) is not None:
                    sizes.append(len(message["data"]))
            assert len(sizes) == 3 and max(sizes) < 200, sizes
            assert len(await redis.keys("webfl:frame:*")) == 1  # the same bytes, one key
            await messages.aclose()
            # The leader has a member close a socket it cannot take, saying why; junk on the channel is dropped.
            closed = asyncio.Queue()
            follower.closer = lambda ids, code, reason: closed.put((ids, code, reason))
            await redis.publish("webfl:member:F", b"\xff\xff\xff\x7fjunk")
            await leader.close("F", ["there"], 1013, "this volunteer id is still connected; try again later")
            assert await asyncio.wait_for(closed.get(), 5) == (["there"], 1013, "this volunteer id is still connected; try again later")
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_a_term_reads_its_own_relay_stream_from_the_start_and_nothing_of_another(redis_server):
    from webfl.server.cluster.relay import Kind, Relay

    async def main():
        redis = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            old, new = Holder("a", 1), Holder("b", 2)
            relay = Relay(redis, "f", 1.0)
            await relay.send(old, Kind.FRAME, "mnist", "v1", data=b"late for a")
            await relay.send(new, Kind.JOIN, "mnist", "v2", "10.0.0.9", b"\x00hello")  # before b reads at all
            await relay.send(new, Kind.LEAVE, "mnist", "v2")
            last, events = await relay.read(new, "0", block_ms=100)
            assert [(e.kind, e.member, e.task, e.volunteer, e.address, e.data) for e in events] == [
                (Kind.JOIN, "f", "mnist", "v2", "10.0.0.9", b"\x00hello"), (Kind.LEAVE, "f", "mnist", "v2", "", b"")]
            assert (await relay.read(new, last, block_ms=100))[1] == []
            await redis.xadd("webfl:relay:2", {"k": "nonsense"})  # a malformed entry is skipped, not fatal
            await relay.send(new, Kind.RESET)
            assert [e.kind for e in (await relay.read(new, last, block_ms=100))[1]] == [Kind.RESET]
            assert 0 < await redis.pttl("webfl:relay:2") <= 10_000  # a dead term's stream expires
        finally:
            await redis.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("url, code, says", [
    ("redis://:hunter2secret@127.0.0.1:1/0", 3, "cannot use the cluster's Redis at redis://127.0.0.1:1/0"),
    ("http://:hunter2secret@example/0", 2, "it looks like redis://"),
])
def test_serve_refuses_a_redis_it_cannot_use_before_listening_and_never_shows_its_password(tmp_path, url, code, says):
    done = subprocess.run([sys.executable, "-m", "webfl.cli", "serve", "--port", "0", "--data-dir", str(tmp_path), "--redis", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code and says in done.stderr, done.stderr
    assert "hunter2secret" not in done.stdout + done.stderr and "Traceback" not in done.stderr
