"""The Redis-backed ``Coordinator``: frames to volunteers whichever member holds their socket.

A volunteer of this member gets its frames through its local queue (the slow-consumer
protection of ``InProcessCoordinator``, per socket); one whose socket lives on another
member (``homes``, which the leader learns from the relay) gets them through that
member's pub/sub channel, one message per frame and member with the ids it is for.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable

from redis.asyncio import Redis

from ..coordinator import Coordinator, InProcessCoordinator, Subscription

__all__ = ["RedisCoordinator", "member_channel", "pack", "unpack"]

log = logging.getLogger("webfl.cluster")


def member_channel(member: str) -> str:
    return f"webfl:member:{member}"


def pack(ids: list[str], frame: bytes) -> bytes:
    """One pub/sub message: the ids' JSON, its length first, then the frame as it goes out."""
    header = json.dumps(ids).encode()
    return len(header).to_bytes(4, "little") + header + frame


def unpack(message: bytes) -> tuple[list[str], bytes]:
    n = int.from_bytes(message[:4], "little")
    return json.loads(message[4 : 4 + n]), message[4 + n :]


class RedisCoordinator(Coordinator):
    def __init__(self, redis: Redis, member: str, queue_size: int = 16) -> None:
        self.redis, self.member = redis, member
        self.local = InProcessCoordinator(queue_size)
        #: Volunteer id -> the member holding its socket, for volunteers of other members.
        self.homes: dict[str, str] = {}

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
        for home, volunteers in remote.items():
            await self.redis.publish(member_channel(home), pack(volunteers, frame))
            sent += len(volunteers)
        return sent

    async def listen(self) -> None:
        """Deliver what other members publish for this member's volunteers (runs until cancelled)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(member_channel(self.member))
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message["type"] != "message":
                    continue
                try:
                    ids, frame = unpack(message["data"])
                except (ValueError, UnicodeDecodeError):
                    log.error("a malformed message on %s; dropped", member_channel(self.member))
                    continue
                await self.local.publish(frame, ids)
        finally:
            await pubsub.aclose()
