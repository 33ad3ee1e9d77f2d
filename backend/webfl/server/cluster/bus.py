"""The Redis-backed ``Coordinator``: frames to volunteers whichever member holds their socket.

A volunteer of this member gets its frames through its local queue (the slow-consumer
protection of ``InProcessCoordinator``, per socket); one whose socket lives on another
member (``homes``, which the leader learns from the relay) gets them through that
member's pub/sub channel, one message per frame and member with the ids it is for. The
same channel carries the leader's order to close sockets there (``close``): a volunteer
the leader cannot take (its id is connected elsewhere, its task unknown) is told why; and
its request for the member's share of a closing round (``flush``, see ``partial``).

A large frame (a model in ``welcome`` frames, a delta with a task) goes once into a key
named by its digest, and the channel carries only that name (``ref``): sixty volunteers
joining a follower at once would otherwise queue sixty copies of the model on one
subscription, past Redis's pub/sub output limit (32 MB by default), which then drops it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis

from ..coordinator import Coordinator, InProcessCoordinator, Subscription

__all__ = ["BY_REFERENCE_BYTES", "RedisCoordinator", "member_channel", "pack", "unpack"]

log = logging.getLogger("webfl.cluster")

#: Frames from this size on travel by reference (a key by digest), not in the message.
BY_REFERENCE_BYTES = 64 * 1024
#: How long such a key lives: the receiving member reads it as the message arrives.
REFERENCE_TTL_S = 120


def member_channel(member: str) -> str:
    return f"webfl:member:{member}"


def frame_key(digest: str) -> str:
    return f"webfl:frame:{digest}"


def pack(header: dict, frame: bytes = b"") -> bytes:
    """One pub/sub message: a JSON header (``to``: ids, or ``close``: ids with ``code`` and
    ``reason``), its length first, then the frame as it goes out."""
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "little") + encoded + frame


def unpack(message: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(message[:4], "little")
    header = json.loads(message[4 : 4 + n])
    if not isinstance(header, dict):
        raise ValueError("the header is not an object")
    return header, message[4 + n :]


Closer = Callable[[list[str], int, str], Awaitable[None]]
#: Ships this member's share of a task's round, as the leader asks at the round's close (``partial``).
Flusher = Callable[[str, int], Awaitable[None]]


class RedisCoordinator(Coordinator):
    def __init__(self, redis: Redis, member: str, queue_size: int = 16) -> None:
        self.redis, self.member = redis, member
        self.local = InProcessCoordinator(queue_size)
        #: Volunteer id -> the member holding its socket, for volunteers of other members.
        self.homes: dict[str, str] = {}
        #: Closes this member's sockets of the given ids, as another member asks (``close``).
        self.closer: Closer | None = None
        self.flusher: Flusher | None = None

    def subscribe(self, volunteer_id: str) -> Subscription:
        return self.local.subscribe(volunteer_id)

    async def publish(self, frame: bytes, to: Iterable[str] | None = None) -> int:
        if to is None:  # every volunteer this member knows of
            to = [*self.local.subscribers(), *self.homes]
        ids = list(to)
        sent = await self.local.publish(frame, ids)
        remote: dict[str, list[str]] = defaultdict(list)
        for volunteer in ids:
            if (home := self.homes.get(volunteer)) is not None:
                remote[home].append(volunteer)
        if remote and len(frame) >= BY_REFERENCE_BYTES:
            digest = hashlib.sha256(frame).hexdigest()
            await self.redis.set(frame_key(digest), frame, ex=REFERENCE_TTL_S)
            header, frame = {"ref": digest}, b""
        else:
            header = {}
        for home, volunteers in remote.items():
            await self.redis.publish(member_channel(home), pack({**header, "to": volunteers}, frame))
            sent += len(volunteers)
        return sent

    async def _referenced(self, header: dict, frame: bytes) -> bytes | None:
        """The frame a message carries, read from its key when it travelled by reference;
        None if the key is gone or does not hold what its name says."""
        if "ref" not in header:
            return frame
        digest = str(header["ref"])
        stored = await self.redis.get(frame_key(digest))
        if stored is None or hashlib.sha256(stored).hexdigest() != digest:
            log.error("frame %s for %d volunteer(s) is gone from Redis; dropped", digest[:12], len(header["to"]))
            return None
        return stored

    async def close(self, member: str, volunteers: list[str], code: int, reason: str) -> None:
        """Have ``member`` close its sockets of ``volunteers`` with ``code`` and ``reason``."""
        await self.redis.publish(member_channel(member), pack({"close": volunteers, "code": code, "reason": reason}))

    async def listen(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Deliver what other members publish for this member's volunteers, until cancelled
        or ``stopping()`` (checked every second: a cancellation lost in a library still ends it)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(member_channel(self.member))
        try:
            while not stopping():
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message["type"] != "message":
                    continue
                try:
                    header, frame = unpack(message["data"])
                    if "flush" in header:
                        if self.flusher is not None:
                            await self.flusher(str(header["flush"]), int(header["round"]))
                    elif "close" in header:
                        if self.closer is not None:
                            await self.closer([str(v) for v in header["close"]], int(header["code"]), str(header["reason"]))
                    elif (frame := await self._referenced(header, frame)) is not None:
                        await self.local.publish(frame, [str(v) for v in header["to"]])
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    log.error("a malformed message on %s; dropped", member_channel(self.member))
        finally:
            await pubsub.aclose()
