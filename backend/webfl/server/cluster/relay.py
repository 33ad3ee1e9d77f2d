"""A follower's volunteers, relayed to the leader over a Redis Stream.

The socket lives on the member the load balancer picked; the engine runs on the leader.
The follower checks each frame at the edge (rate limits, size, the protocol's schema;
``sockets``) and appends what passes to the stream of the leader's term,
``webfl:relay:<token>``, as one entry: a volunteer joined (its ``hello``), sent a frame,
or left, or a member (re)started and its old volunteers are gone; what it refused at
the edge, so that the leader's status counts every member's refusals; its share of a
round it folded itself, or a batch of the updates it vetted for the leader to fold
(``partial``). The leader reads its term's stream from the start, so nothing addressed
to it is lost between its election and its first read, and nothing addressed to an
earlier leader reaches it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the ``cluster`` extra; one process runs without it
    from redis.asyncio import Redis

from .lease import Holder

__all__ = ["Event", "Kind", "Relay", "stream_key"]

log = logging.getLogger("webfl.cluster")

#: Entries a stream keeps at most (trimmed approximately): far more than a leader lags.
MAX_LEN = 100_000


class Kind(Enum):
    JOIN = "join"
    FRAME = "frame"
    LEAVE = "leave"
    RESET = "reset"  # a member started: the leader forgets volunteers it had there
    REFUSED = "refused"  # the follower refused a frame or connection at its edge (data: the reason key)
    SHARE = "share"  # the follower's share of a shared round (data: ``rounds.shares.Share.encode``)
    VETTED = "vetted"  # updates the follower vetted for the leader to fold (data: ``rounds.shares.Vetted.encode``)


@dataclass(frozen=True)
class Event:
    kind: Kind
    member: str
    task: str = ""
    volunteer: str = ""
    address: str = ""
    data: bytes = b""


def stream_key(term: Holder) -> str:
    return f"webfl:relay:{term.token}"


class Relay:
    def __init__(self, redis: Redis, member: str, lease_s: float) -> None:
        self.redis, self.member = redis, member
        # A dead term's stream outlives any reader by a while, then Redis drops it.
        self._ttl_ms = int(lease_s * 10_000)

    async def send(self, term: Holder, kind: Kind, task: str = "", volunteer: str = "", address: str = "", data: bytes = b"") -> None:
        fields = {"k": kind.value, "m": self.member, "t": task, "v": volunteer, "a": address, "d": data}
        key = stream_key(term)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=MAX_LEN, approximate=True)
            pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

    async def read(self, term: Holder, after: str, block_ms: int = 1000) -> tuple[str, list[Event]]:
        """The entries after id ``after`` ("0": from the start); the last id read."""
        reply = await self.redis.xread({stream_key(term): after}, count=500, block=block_ms)
        events = []
        for _, entries in reply:
            for entry_id, fields in entries:
                after = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    events.append(_event(fields))
                except (KeyError, ValueError, UnicodeDecodeError):
                    log.error("a malformed relay entry %s; skipped", after)
        return after, events


def _event(fields: dict) -> Event:
    text = {k.decode(): v for k, v in fields.items()}
    return Event(Kind(text["k"].decode()), text["m"].decode(), text["t"].decode(), text["v"].decode(), text["a"].decode(), text["d"])
