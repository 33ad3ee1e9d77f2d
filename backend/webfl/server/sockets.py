"""``/ws``: one volunteer's connection.

The first frame must be ``hello`` from a matching client version. After it the
volunteer gets ``welcome`` (with a credential to resume its id on a later connection,
see ``resume``), the current model and status; then one task reads
frames from the socket and another writes the frames the engine addresses to it. In a
cluster (``--redis``) a follower checks each frame here and relays it to the leader's
engine (``cluster.relay``), whose answers come back through the coordinator; an update
of a shared round it vets and folds itself (``cluster.partial``).
Anything malformed ends the connection with a close code and a reason; content
problems in an ``update`` get a ``reject`` and the connection stays up.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import __version__
from ..core.protocol import (
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TRY_LATER,
    CLOSE_UNSUPPORTED,
    Message,
    ProtocolError,
    decode,
    encode,
)
from ..core.secagg.wire import TYPES as SECAGG_TYPES
from .cluster.lease import Holder
from .cluster.relay import Kind
from .coordinator import SlowConsumer
from .datasets import DEMO_TASK
from .engine import RoundEngine
from .limits import ConnectionLimits, RateLimited
from .logsafe import untrusted
from .origins import origin_allowed
from .rounds.validation import Verdict
from .security import ResumeTokens
from .web.services import Services, services

if TYPE_CHECKING:
    from .cluster.member import ClusterMember

__all__ = ["VOLUNTEER_FRAMES", "answer_update", "dispatch", "joined", "volunteer_socket"]

log = logging.getLogger("webfl.sockets")


@dataclass
class _Closed(Exception):
    code: int
    reason: str


async def volunteer_socket(websocket: WebSocket) -> None:
    svc = services(websocket)
    engine, settings = svc.engine, svc.settings
    if not origin_allowed(websocket.headers.get("origin"), svc.browser_origins):
        # Refuse before accepting: the browser sees a failed handshake (HTTP 403).
        await websocket.close(code=CLOSE_POLICY, reason="origin not allowed")
        return
    await websocket.accept()
    address = websocket.client.host if websocket.client else "?"
    limits = svc.limits.open(address)
    if limits is None:
        _refused(svc, engine, "connections")
        await _close(websocket, CLOSE_TRY_LATER, f"too many connections from {address}; try again later")
        return
    peer_id: str | None = None
    relay_to: Holder | None = None
    try:
        hello = await asyncio.wait_for(_receive(websocket, settings.max_frame_bytes, limits), settings.hello_timeout_s)
        if hello.type != "hello":
            raise _Closed(CLOSE_PROTOCOL_ERROR, f"expected hello, got {hello.type}")
        if hello["version"] != __version__:
            raise _Closed(
                CLOSE_POLICY,
                f"client version {hello['version']} does not match server version {__version__}; reload the page",
            )
        wanted = hello.fields.get("task")
        if wanted is not None:
            if wanted not in svc.tasks and svc.cluster is not None:
                svc.tasks.refresh()  # the leader may have created it
            if wanted not in svc.tasks:
                raise _Closed(CLOSE_POLICY, f"this server has no task named {wanted[:40]!r}")
            engine = svc.tasks.get(wanted)
        resume = svc.resume_tokens
        cluster = svc.cluster
        # A follower relays to the leader of the term it saw; none: no leader to relay to.
        relay_to = None if cluster is None or cluster.leads else cluster.term
        if cluster is not None and not cluster.leads and relay_to is None:
            raise _Closed(CLOSE_TRY_LATER, "the cluster is electing its leader; try again in a few seconds")
        # No await from the check to connect(): no other connection can take the id between.
        peer_id = _resumed_id(svc, resume, hello.fields.get("resume")) or secrets.token_hex(6)
        subscription = svc.coordinator.subscribe(peer_id)
        frames = joined(engine, peer_id, hello, address) if relay_to is None else []
        if cluster is not None:
            cluster.attach(peer_id, websocket, engine.task.name, relay_to)
        welcome = {"version": __version__, "volunteer": peer_id, "task": engine.task.to_dict(), "resume": resume.issue(peer_id),
                   "evaluate": not engine.evaluates_on_server}
        if svc.demo_shards is not None and engine.task.name == DEMO_TASK:
            welcome["shard"] = svc.demo_shards.assign(DEMO_TASK)
        await websocket.send_bytes(encode(Message("welcome", welcome)))
        for frame in frames:
            await websocket.send_bytes(frame)
        if relay_to is None:
            handle = _local(engine, peer_id)
        else:
            await cluster.relay.send(relay_to, Kind.JOIN, engine.task.name, peer_id, address, encode(hello))
            handle = _relayed(cluster, relay_to, engine.task.name, peer_id)
        writer = asyncio.create_task(_write(websocket, subscription))
        try:
            await _read(websocket, handle, settings.max_frame_bytes, limits, settings.idle_timeout_s)
        finally:
            writer.cancel()
            subscription.close()
    except TimeoutError:
        _refused(svc, engine, "idle")
        await _close(websocket, CLOSE_POLICY, "no hello in time")
    except ProtocolError as exc:
        _refused(svc, engine, "protocol")
        await _close(websocket, exc.code, exc.reason)
    except RateLimited as exc:
        _refused(svc, engine, "rate")
        await _close(websocket, CLOSE_POLICY, exc.reason)
    except _Closed as exc:
        _refused(svc, engine, "idle" if exc.code == CLOSE_TRY_LATER else "protocol")
        await _close(websocket, exc.code, exc.reason)
    except SlowConsumer:
        await _close(websocket, CLOSE_TRY_LATER, "too slow to receive frames")
    except WebSocketDisconnect:
        pass
    finally:
        svc.limits.close(address)
        if peer_id is not None:
            if svc.cluster is not None:
                await svc.cluster.detach(peer_id)  # a relayed volunteer's leave goes to the leader
            if relay_to is None:
                engine.disconnect(peer_id)


def _refused(svc: Services, engine: RoundEngine, kind: str) -> None:
    """Count a frame or connection refused here; a follower also tells the leader, whose status counts them all."""
    engine.rejections.add(kind)
    if svc.cluster is not None:
        svc.cluster.count_refusal(engine.task.name, kind)


def _resumed_id(svc: Services, tokens: ResumeTokens, claim: object) -> str | None:
    """The id a ``hello.resume`` claim proves, unless a live connection (of any task) still holds it."""
    if claim is None:
        return None
    peer_id = tokens.claimed_id(claim)
    if peer_id is None:
        log.info("resume refused: the credential does not verify")
    elif any(peer_id in engine.peers for engine in svc.tasks) or (svc.cluster is not None and svc.cluster.holds(peer_id)):
        # Two tabs must not share an id (one could submit the other's round); the old
        # connection of a reloaded tab is normally gone by the time the new one says hello.
        log.info("resume of %s refused: it is still connected", peer_id)
        peer_id = None
    return peer_id


async def _receive(websocket: WebSocket, max_bytes: int, limits: ConnectionLimits) -> Message:

    event = await websocket.receive()
    if event["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(event.get("code", 1000))
    data = event.get("bytes")
    limits.charge(len(data or event.get("text") or ""))
    if data is None:
        raise _Closed(CLOSE_UNSUPPORTED, "text frames are not accepted; send binary frames")
    return decode(data, max_bytes)


#: What a volunteer may send after ``hello``.
VOLUNTEER_FRAMES = frozenset({"ready", "pause", "eval", "stats", "update", *SECAGG_TYPES})

#: Acts on one frame; a refusal that closes the socket (a SecAgg frame out of place), or None.
Handler = Callable[[Message, bytes], Awaitable[ProtocolError | None]]


def joined(engine: RoundEngine, peer_id: str, hello: Message, address: str) -> list[bytes]:
    """Register a volunteer that said ``hello`` with its task's engine (on the leader):
    the frames it needs after ``welcome`` (its model, the status)."""
    engine.connect(peer_id, hello.fields.get("agent", "?")[:64], address, hello["codecs"])
    model = engine.welcome_frames(peer_id, hello.fields.get("model_version"), hello.fields.get("model_digest"))
    return [*model, engine.status_frame()]


async def dispatch(engine: RoundEngine, peer_id: str, msg: Message, nbytes: int) -> ProtocolError | None:
    """Act on one checked frame (one of ``VOLUNTEER_FRAMES``) of a connected volunteer; the
    answers go through the engine's coordinator, so they find the volunteer on any member.
    Returns why the volunteer's socket must close (a refused SecAgg frame), or None."""
    if msg.type == "ready":
        engine.ready(peer_id, msg["num_examples"])
    elif msg.type == "pause":
        engine.pause(peer_id)
    elif msg.type == "eval":
        engine.report_evaluation(peer_id, msg)  # no answer: a refused report changes nothing
    elif msg.type == "stats":
        engine.report_statistics(peer_id, msg)
    elif msg.type == "update":
        await answer_update(engine, peer_id, msg, nbytes)
    elif msg.type in SECAGG_TYPES:
        return await engine.secagg(peer_id, msg, nbytes)
    return None


async def answer_update(engine: RoundEngine, peer_id: str, msg: Message, nbytes: int) -> Verdict:
    """The engine's verdict on an ``update``, answered to the volunteer wherever its socket is."""
    verdict = await engine.submit(peer_id, msg, nbytes)
    reply = Message("accept", {"round": msg["round"]}) if verdict.accepted else Message(
        "reject", {"reason": verdict.reason, "round": msg["round"]}
    )
    await engine.coordinator.publish(encode(reply), to=[peer_id])
    return verdict


def _local(engine: RoundEngine, peer_id: str) -> Handler:
    return lambda msg, data: dispatch(engine, peer_id, msg, len(data))


def _relayed(cluster: ClusterMember, term: Holder, task: str, peer_id: str) -> Handler:
    async def handle(msg: Message, data: bytes) -> None:
        # An update of a round with published facts is vetted (and, if it merges, folded) here
        # (``cluster.partial``); anything else goes to the leader.
        if msg.type == "update" and await cluster.shares.update(term, task, peer_id, msg, data):
            return
        await cluster.relay.send(term, Kind.FRAME, task, peer_id, data=data)  # the leader closes what it refuses

    return handle


async def _read(websocket: WebSocket, handle: Handler, max_bytes: int, limits: ConnectionLimits, idle_s: float) -> None:
    while True:
        # Receive returns whole messages only, so this also ends a slow-loris sender whose
        # frame never completes (uvicorn's keepalive pings catch one that stops answering).
        try:
            event = await asyncio.wait_for(websocket.receive(), idle_s)
        except TimeoutError:
            raise _Closed(CLOSE_TRY_LATER, f"no complete frame for {idle_s:g} s; reconnect when you have something to send") from None
        if event["type"] == "websocket.disconnect":
            return
        data = event.get("bytes")
        limits.charge(len(data or event.get("text") or ""))
        if data is None:
            raise _Closed(CLOSE_UNSUPPORTED, "text frames are not accepted; send binary frames")
        msg = decode(data, max_bytes)
        if msg.type not in VOLUNTEER_FRAMES:
            raise _Closed(CLOSE_PROTOCOL_ERROR, f"unexpected {msg.type} frame from a volunteer")
        if (refused := await handle(msg, data)) is not None:
            await _close(websocket, refused.code, refused.reason)  # counted by the engine, once
            return


async def _write(websocket: WebSocket, subscription) -> None:
    try:
        while True:
            await websocket.send_bytes(await subscription.get())
    except SlowConsumer:
        await _close(websocket, CLOSE_TRY_LATER, "too slow to receive frames")
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    log.info("closing volunteer socket: %d %s", code, untrusted(reason))
    try:
        await websocket.close(code=code, reason=reason[:120])
    except (RuntimeError, WebSocketDisconnect):
        pass
