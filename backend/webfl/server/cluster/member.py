"""One member of a cluster: its role, its lease, its heartbeat, and what changes with the leader.

Every beat (``min(1 s, lease/3)``) a member renews its lease (LEADER) or tries to take
it (FOLLOWER), and writes its heartbeat (its volunteers, the time) into the
``webfl:members`` hash. The leader runs the rounds of every task: on taking the lease it
records its fencing token in the store (so an older leader can commit nothing more),
rebuilds its engines from the store and resumes the interrupted runs there
(``RoundEngine.resume``), reads its term's relay stream, and publishes each committed
model under ``webfl:model:<digest>`` and each task's status under
``webfl:status:<task>``. A follower relays its volunteers (``relay``) and answers
``/api/status`` with the leader's latest; it folds its volunteers' updates of a shared
round itself and ships the sum (``partial``). When the leader changes, every member closes
the sockets of the old term with 1013 (try again later): the volunteers reconnect and
join the new leader's engine, which knew nothing of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from enum import Enum

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from ...core.protocol import CLOSE_POLICY, CLOSE_TRY_LATER, ProtocolError, decode
from ..engine import RoundEngine
from ..sockets import VOLUNTEER_FRAMES, dispatch, joined
from ..store import Fenced, Store
from ..taskset import TaskSet, UnknownTask
from .bus import RedisCoordinator
from ..rounds.shares import Share
from .lease import Holder, Lease
from .partial import FollowerShares, LeaderHub, take_vetted
from .relay import Event, Kind, Relay

__all__ = ["MEMBERS_KEY", "ClusterMember", "Role", "model_key"]

log = logging.getLogger("webfl.cluster")

MEMBERS_KEY = "webfl:members"
#: How long a committed model's bytes stay in Redis: far longer than a volunteer that
#: got its notice takes to fetch it, and than the downlink chain reaches back.
MODEL_TTL_S = 6 * 3600


def model_key(digest: str) -> str:
    return f"webfl:model:{digest}"


def status_key(task: str) -> str:
    return f"webfl:status:{task}"


#: The leader announces each status it stores here (the task's name): followers read it at once.
STATUS_CHANNEL = "webfl:status"


class Role(Enum):
    STARTING = "starting"
    FOLLOWER = "follower"
    LEADER = "leader"
    STOPPED = "stopped"


_MOVES = {
    Role.STARTING: {Role.FOLLOWER, Role.LEADER, Role.STOPPED},
    Role.FOLLOWER: {Role.LEADER, Role.STOPPED},
    Role.LEADER: {Role.FOLLOWER, Role.STOPPED},
    Role.STOPPED: set(),
}


@dataclass(frozen=True)
class _Socket:
    websocket: WebSocket
    task: str
    term: Holder | None  # the leader's term it connected in
    relay_to: Holder | None  # the term whose stream its frames go to; None: this member's engine


class ClusterMember:
    def __init__(self, redis: Redis, member: str, lease_s: float, tasks: TaskSet, store: Store, coordinator: RedisCoordinator,
                 max_frame_bytes: int, url: str = "http://127.0.0.1:8000") -> None:
        self.redis, self.member, self.lease_s, self.url = redis, member, lease_s, url
        self.tasks, self.store, self.coordinator, self.max_frame_bytes = tasks, store, coordinator, max_frame_bytes
        self.lease = Lease(redis, member, lease_s)
        self.relay = Relay(redis, member, lease_s)
        self.shares = FollowerShares(redis, member, self.relay, coordinator, tasks.get, self.holds, self.count_refusal)
        self.beat_s = min(1.0, lease_s / 3)
        self.role = Role.STARTING
        #: The leader's term as this member last saw it (None: no leader); sockets read it.
        self.term: Holder | None = None
        self._own: Holder | None = None  # this member's term while it leads
        self._renewed = 0.0
        self._sockets: dict[str, _Socket] = {}
        self._members: list[dict] = []
        self._urls: dict[str, str] = {}  # member id -> where its admin API answers
        self._snapshots: dict[str, dict] = {}
        self._background: set[asyncio.Task] = set()
        self._loop: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self._status_listener: asyncio.Task | None = None
        self._consumer: asyncio.Task | None = None
        self._stopping = False

    # -- what sockets, engines and handlers ask ---------------------------------------

    @property
    def leads(self) -> bool:
        return self.role is Role.LEADER

    def holds(self, volunteer: str) -> bool:
        """A socket of this member holds ``volunteer``."""
        return volunteer in self._sockets

    def attach(self, volunteer: str, websocket: WebSocket, task: str, relay_to: Holder | None) -> None:
        self._sockets[volunteer] = _Socket(websocket, task, self.term, relay_to)

    async def detach(self, volunteer: str) -> None:
        sock = self._sockets.pop(volunteer, None)
        if sock is not None and sock.relay_to is not None:
            try:
                await self.shares.left(volunteer)  # on the stream before the leave: the leader still knows it
                await self.relay.send(sock.relay_to, Kind.LEAVE, sock.task, volunteer)
            except RedisError as exc:  # the leader forgets it with this member's heartbeat
                log.warning("could not relay that %s left: %s", volunteer, exc)

    def describe(self) -> dict:
        return {"member": self.member, "role": self.role.value, "leader": None if self.term is None else self.term.member,
                "members": self._members}

    def count_refusal(self, task: str, kind: str) -> None:
        """A follower's socket refused something: the leader's ``rejections`` count it too."""
        if not self.leads and self.term is not None:
            self._spawn(self.relay.send(self.term, Kind.REFUSED, task, data=kind.encode()))

    def leader_url(self) -> str | None:
        """Where the leader's admin API answers, from its heartbeat; None while there is no leader."""
        return None if self.term is None or self.leads else self._urls.get(self.term.member)

    def leader_status(self, task: str) -> dict | None:
        return self._snapshots.get(task)

    async def read_status(self, task: str) -> None:
        """Take the leader's stored status of ``task`` now (a beat or an announcement would, later)."""
        if self.leads:
            return
        try:
            await self._read_statuses([task])
        except RedisError as exc:
            log.warning("status of %s: Redis unreachable (%s); the next beat reads it", task, exc)

    async def publish_status(self, engine: RoundEngine) -> None:
        if not engine.leading:
            return
        name = engine.task.name
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(status_key(name), json.dumps(engine.status()), px=int(3 * self.lease_s * 1000))
            pipe.publish(STATUS_CHANNEL, name)
            await pipe.execute()

    def prepare(self, engine: RoundEngine) -> None:
        """Give an engine this member's role (``TaskSet.prepare``)."""
        engine.cluster = self
        engine.leading = self._own is not None
        engine.commits.fence = None if self._own is None else self._own.token
        engine.services.sharing.hub = None if self._own is None else LeaderHub(self.redis, self._own, self.coordinator)
        engine.on_commit.append(self._share_model)

    async def model_blob(self, digest: str) -> bytes | None:
        """A committed model's bytes from Redis, if they are there and are what the digest names."""
        try:
            data = await self.redis.get(model_key(digest))
        except RedisError as exc:
            log.warning("model %s: Redis unreachable (%s)", digest, exc)
            return None
        return data if data is not None and hashlib.sha256(data).hexdigest()[:32] == digest else None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster: the first election happens before the member serves."""
        self.tasks.prepare = self.prepare
        self.coordinator.closer = self._close_volunteers
        self.coordinator.flusher = self._flush
        for engine in self.tasks:
            self.prepare(engine)
        self._listener = asyncio.create_task(self._supervised(lambda: self.coordinator.listen(lambda: self._stopping)), name="cluster-listen")
        self._status_listener = asyncio.create_task(self._supervised(self._follow_statuses), name="cluster-statuses")
        await self._tick()
        if self.term is not None and not self.leads:
            # Volunteers the leader still lists on this member are from its previous life.
            await self.relay.send(self.term, Kind.RESET)
        self._loop = asyncio.create_task(self._run(), name="cluster-beat")

    async def stop(self) -> None:
        """Leave: a leader hands its runs on (they stay running in the store) and frees the lease at once."""
        # The flag ends each loop at its next turn even if a library swallowed the cancellation.
        self._stopping = True
        loops = [t for t in (self._loop, self._consumer, self._listener, self._status_listener) if t is not None]
        for task in loops:
            task.cancel()
        if loops:
            _, pending = await asyncio.wait(loops, timeout=self.beat_s + 5)
            if pending:
                log.warning("member %s: %d background loop(s) did not stop in time", self.member, len(pending))
        own = self._own
        self._own = None
        for engine in self.tasks:
            await engine.step_down()
        self._to(Role.STOPPED, "shutting down")
        try:
            if own is not None:
                await self.lease.release(own)
            await self.redis.hdel(MEMBERS_KEY, self.member)
        except RedisError as exc:
            log.warning("leaving the cluster: Redis unreachable (%s)", exc)

    def _to(self, role: Role, why: str) -> None:
        if role is self.role:
            return
        assert role in _MOVES[self.role], f"{self.role.value} -> {role.value}"
        log.info("member %s: %s -> %s (%s)", self.member, self.role.value, role.value, why)
        self.role = role

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.beat_s)
            try:
                await self._tick()
            except (RedisError, OSError) as exc:
                log.warning("member %s: Redis unreachable (%s)", self.member, exc)
                if self.leads and loop.time() - self._renewed > self.lease_s:
                    await self._step_down("the lease could not be renewed in time")
            except Exception:
                log.exception("member %s: beat failed", self.member)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self.leads:
            assert self._own is not None
            if await self.lease.renew(self._own):
                self._renewed = loop.time()
            else:
                await self._step_down("the lease renewal failed: another member holds it, or it expired")
        if not self.leads:
            term = await self.lease.acquire()
            if term is not None:
                self._renewed = loop.time()
                await self._lead(term)
            else:
                await self._follow(await self.lease.holder())
        await self._heartbeat()

    async def _lead(self, term: Holder) -> None:
        self._own = term
        try:
            # The token goes to the store first: from here an older leader's commit aborts.
            await asyncio.to_thread(self.store.fenced_tx, term.token, [])
        except Fenced as exc:
            self._own = None
            log.error("member %s: elected with a stale token (%s)", self.member, exc)
            return
        await self.tasks.reload()  # prepare(): leading, with this term's fence
        self.term = term
        self._to(Role.LEADER, f"took the lease, fencing token {term.token}")
        await self._close_sockets(keep=term)
        self._consumer = asyncio.create_task(self._consume(term), name="cluster-relay")
        self.tasks.resume()
        for engine in self.tasks:
            self._share_model(engine)  # and its status: the resumed run, at once

    async def _step_down(self, why: str) -> None:
        self._own = None
        self._to(Role.FOLLOWER, why)
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
            self._consumer = None
        self.coordinator.homes.clear()
        self.term = None
        await self.tasks.reload()
        await self._close_sockets(keep=None)

    async def _follow(self, holder: Holder | None) -> None:
        if self.role is Role.STARTING:
            self._to(Role.FOLLOWER, "the lease is held" if holder else "joined")
        if holder != self.term:
            log.info("member %s: the leader is now %s", self.member, holder.value if holder else "nobody")
            # The old leader's last status stays until the new one's: an empty one would
            # tell a client watching a run (webfl simulate) that it ended.
            self.term = holder
            self.shares.reset()
            await self._close_sockets(keep=holder)

    async def _close_sockets(self, keep: Holder | None) -> None:
        """Close the sockets of every term but ``keep``: the new leader's engine lacks them."""
        stale = [(v, s) for v, s in self._sockets.items() if s.term != keep or keep is None]
        for volunteer, sock in stale:
            try:
                await sock.websocket.close(code=CLOSE_TRY_LATER, reason="the cluster's leader changed; reconnect")
            except RuntimeError:
                pass  # closed already
        if stale:
            log.info("member %s: closed %d volunteer socket(s) of the previous term", self.member, len(stale))

    async def _flush(self, task: str, round_: int) -> None:
        if self.term is not None and not self.leads:
            await self.shares.flush(self.term, task, round_)

    async def _close_volunteers(self, volunteers: list[str], code: int, reason: str) -> None:
        for volunteer in volunteers:
            if (sock := self._sockets.get(volunteer)) is not None:
                try:
                    await sock.websocket.close(code=code, reason=reason[:120])
                except RuntimeError:
                    pass

    async def _heartbeat(self) -> None:
        now = time.time()
        dead_after = 3 * self.lease_s
        beat = json.dumps({"volunteers": len(self._sockets), "at": now, "url": self.url})
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(MEMBERS_KEY, self.member, beat)
            pipe.pexpire(MEMBERS_KEY, int(dead_after * 1000))
            pipe.hgetall(MEMBERS_KEY)
            *_, seen = await pipe.execute()
        members, urls = [], {}
        for member, value in sorted(seen.items()):
            try:
                entry = json.loads(value)
                ago = max(0.0, now - float(entry["at"]))
                members.append({"id": member.decode(), "volunteers": int(entry["volunteers"]), "seen_s_ago": round(ago, 2)})
                urls[member.decode()] = str(entry["url"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                continue
        self._urls = urls
        self._members = [m for m in members if m["seen_s_ago"] <= dead_after]
        if self.leads:
            self._forget_dead({m["id"] for m in self._members})
            for engine in self.tasks:
                await self.publish_status(engine)
        else:
            await self._read_statuses([engine.task.name for engine in self.tasks])

    async def _read_statuses(self, names: list[str]) -> None:
        """A follower takes the leader's stored statuses of ``names``; its own copy of a task
        the leader committed since (``/api/model``, the exports, ``/models``) follows from the store."""
        values = await self.redis.mget([status_key(n) for n in names]) if names else []
        self._snapshots.update({n: json.loads(v) for n, v in zip(names, values) if v is not None})
        behind = {e.task.name for e in self.tasks if (s := self._snapshots.get(e.task.name)) and s["model_version"] != e.model_version}
        if behind:
            await self.tasks.reload(behind)

    async def _follow_statuses(self) -> None:
        """Read each status the leader announces as it is announced (runs until cancelled)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(STATUS_CHANNEL)
        try:
            while not self._stopping:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message" and not self.leads:
                    name = message["data"].decode(errors="replace")
                    if name in self.tasks:
                        await self._read_statuses([name])
        finally:
            await pubsub.aclose()

    async def _supervised(self, listen) -> None:
        """Run a pub/sub listener for good: subscribed afresh after Redis comes back."""
        while not self._stopping:
            try:
                await listen()
            except (RedisError, OSError) as exc:
                log.warning("member %s: a subscription lost Redis (%s); subscribing again", self.member, exc)
                await asyncio.sleep(self.beat_s)

    def _forget_dead(self, alive: set[str]) -> None:
        gone = [v for v, home in self.coordinator.homes.items() if home not in alive]
        for volunteer in gone:
            self._forget(volunteer)
        if gone:
            log.warning("member %s: forgot %d volunteer(s) of members that stopped beating", self.member, len(gone))

    def _forget(self, volunteer: str) -> None:
        self.coordinator.homes.pop(volunteer, None)
        for engine in self.tasks:
            engine.disconnect(volunteer)

    def _share_model(self, engine: RoundEngine) -> None:
        """Put the engine's committed model in Redis (``on_commit``): members serve it by digest."""
        if not engine.leading:
            return
        chain = engine.commits.chain
        self._spawn(self.redis.set(model_key(chain.digest), chain.raw(), px=MODEL_TTL_S * 1000))
        self._spawn(self.publish_status(engine))

    def _spawn(self, aw) -> None:
        task = asyncio.create_task(self._logged(aw))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _logged(aw) -> None:
        try:
            await aw
        except (RedisError, OSError) as exc:  # the next beat publishes again
            log.warning("Redis unreachable (%s); the next beat catches up", exc)

    # -- the leader's side of the relay -----------------------------------------------

    async def _consume(self, term: Holder) -> None:
        after = "0"
        while not self._stopping:
            try:
                after, events = await self.relay.read(term, after)
            except RedisError as exc:
                log.warning("relay: Redis unreachable (%s)", exc)
                await asyncio.sleep(self.beat_s)
                continue
            for event in events:
                try:
                    await self._apply(event)
                except (ProtocolError, UnknownTask, ValueError, KeyError) as exc:
                    log.warning("relay: %s from %s refused (%s)", event.kind.value, event.member, exc)
                except Exception:
                    log.exception("relay: %s from %s failed", event.kind.value, event.member)

    async def _apply(self, event: Event) -> None:
        homes = self.coordinator.homes
        if event.kind is Kind.RESET:
            for volunteer in [v for v, home in homes.items() if home == event.member]:
                self._forget(volunteer)
            return
        if event.kind is Kind.REFUSED:
            if event.task in self.tasks:
                self.tasks.get(event.task).rejections.add(event.data.decode(errors="replace"))  # unknown keys count as malformed
            return
        if event.kind is Kind.LEAVE:
            if homes.get(event.volunteer) == event.member:
                self._forget(event.volunteer)
            return
        if event.task not in self.tasks:
            self.tasks.refresh()
        if event.kind is Kind.JOIN:
            await self._join(event)
            return
        if event.kind is Kind.SHARE:
            engine = self.tasks.get(event.task)
            share = Share.decode(event.data, engine.commits.model.size)  # a ShareError is a ValueError: logged, refused
            if share.member != event.member or share.task != event.task:
                raise ValueError(f"a share of {share.member}/{share.task} on {event.member}'s entry for {event.task}")
            if (why := engine.merge_share(share)) is not None:
                log.warning("relay: share of round %d from %s refused: %s", share.round, event.member, why)
            return
        if event.kind is Kind.VETTED:
            await take_vetted(self.tasks.get(event.task), homes, event.member, event.data, self.max_frame_bytes)
            return
        engine = self.tasks.get(event.task)
        if homes.get(event.volunteer) == event.member and event.volunteer in engine.peers:
            msg = decode(event.data, self.max_frame_bytes)
            if msg.type in VOLUNTEER_FRAMES and (refused := await dispatch(engine, event.volunteer, msg, len(event.data))):
                await self.coordinator.close(event.member, [event.volunteer], refused.code, refused.reason)

    async def _join(self, event: Event) -> None:
        """Register a follower's volunteer, or have its member close the socket saying why."""
        v, homes = event.volunteer, self.coordinator.homes
        if event.task not in self.tasks:
            code, reason = CLOSE_POLICY, f"this server has no task named {event.task[:40]!r}"
        elif any(v in e.peers for e in self.tasks) or v in homes or self.holds(v):
            # A resumed id still connected through another member: it may come back once that one is gone.
            code, reason = CLOSE_TRY_LATER, "this volunteer id is still connected; try again later"
        else:
            engine = self.tasks.get(event.task)
            hello = decode(event.data, self.max_frame_bytes)
            homes[v] = event.member
            for frame in joined(engine, v, hello, event.address):
                await self.coordinator.publish(frame, to=[v])
            return
        log.info("relay: join of %s from %s refused: %s", v, event.member, reason)
        await self.coordinator.close(event.member, [v], code, reason)
