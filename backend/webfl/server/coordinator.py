"""Coordination between the round engine and the volunteer connections.

Everything that crosses from the engine to a connection goes through this one
small interface: frames published to all volunteers or to chosen ones.
``InProcessCoordinator`` serves a single server process; a cluster
(``--redis``) swaps in ``cluster.bus.RedisCoordinator`` (a pub/sub channel per member)
without touching the engine.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

__all__ = ["Coordinator", "InProcessCoordinator", "SlowConsumer", "Subscription", "TaskChannel"]

log = logging.getLogger("webfl.coordinator")


class SlowConsumer(Exception):
    """The volunteer could not keep up with its frames and was dropped."""


class Subscription(ABC):
    """Frames addressed to one volunteer, in order."""

    @abstractmethod
    async def get(self) -> bytes:
        """The next frame; raises ``SlowConsumer`` once the queue overflowed."""

    @abstractmethod
    def close(self) -> None: ...


class Coordinator(ABC):
    @abstractmethod
    def subscribe(self, volunteer_id: str) -> Subscription: ...

    @abstractmethod
    async def publish(self, frame: bytes, to: Iterable[str] | None = None) -> int:
        """Queue ``frame`` for the given volunteers (all if ``None``); returns how many."""


class _QueueSubscription(Subscription):
    def __init__(self, owner: InProcessCoordinator, volunteer_id: str, maxsize: int) -> None:
        self._owner, self.volunteer_id = owner, volunteer_id
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, frame: bytes) -> bool:
        if self.overflowed:
            return False
        try:
            self._queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            # A volunteer that cannot drain its queue would pin server memory.
            self.overflowed = True
            self._queue.get_nowait()
            self._queue.put_nowait(None)
            log.warning("volunteer %s is too slow; dropping it", self.volunteer_id)
            return False

    async def get(self) -> bytes:
        frame = await self._queue.get()
        if frame is None:
            raise SlowConsumer(self.volunteer_id)
        return frame

    def close(self) -> None:
        # A resumed connection may already hold this id with a subscription of its own.
        if self._owner._subscribers.get(self.volunteer_id) is self:
            del self._owner._subscribers[self.volunteer_id]


class InProcessCoordinator(Coordinator):
    def __init__(self, queue_size: int = 16) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, _QueueSubscription] = {}

    def subscribe(self, volunteer_id: str) -> Subscription:
        sub = _QueueSubscription(self, volunteer_id, self._queue_size)
        self._subscribers[volunteer_id] = sub
        return sub

    def subscribers(self) -> list[str]:
        """The ids with a subscription here."""
        return list(self._subscribers)

    async def publish(self, frame: bytes, to: Iterable[str] | None = None) -> int:
        targets = self._subscribers.values() if to is None else [s for v in to if (s := self._subscribers.get(v))]
        return sum(sub.offer(frame) for sub in list(targets))


class TaskChannel(Coordinator):
    """One task's view of a shared coordinator: "every volunteer" means this task's.

    Several tasks share one server's connections; a commit of one task must not send
    its model to the volunteers of another.
    """

    def __init__(self, base: Coordinator, members: Callable[[], Iterable[str]]) -> None:
        self._base, self._members = base, members

    def subscribe(self, volunteer_id: str) -> Subscription:
        return self._base.subscribe(volunteer_id)

    async def publish(self, frame: bytes, to: Iterable[str] | None = None) -> int:
        return await self._base.publish(frame, list(self._members()) if to is None else to)
