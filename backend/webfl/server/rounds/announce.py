"""Telling every volunteer of a commit: its ``model_notice`` and the status, paced.

Two small frames to each of 10,000 volunteers cost the one event loop about a second of
CPU; sent at once after every commit, the next round's tasks and updates wait behind
them, and with fast rounds the sends pile up. So they go out in batches at a bounded
rate (``ANNOUNCE_RATE``), and the newest commit wins: notices are hints (the model
itself comes with a task, see ``tasks``), so a commit that lands while a pass is under
way takes over the rest of that pass, and one more pass then brings it to those that got
an older one. Every commit's notice starts out at once, and the newest reaches every
volunteer connected; an intermediate one may reach only some.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..coordinator import Coordinator

__all__ = ["ANNOUNCE_RATE", "Announcement", "Announcer"]

log = logging.getLogger("webfl.engine")

#: Volunteers told per second at most: about a fifth of one core of this machine's
#: event loop, so a round's own work keeps the rest (see docs/scale.md).
ANNOUNCE_RATE = 2_000
#: Volunteers per batch: the event loop runs other work between two batches.
BATCH = 100


@dataclass(frozen=True)
class Announcement:
    round: int
    index: int  # of the commit in the history
    notice: bytes
    status: bytes


class Announcer:
    """One background pass at a time over the volunteers connected; latest wins."""

    def __init__(self, coordinator: Coordinator, recipients: Callable[[], list[str]], sent: Callable[[int, int], Awaitable[None]]) -> None:
        """``recipients``: ids connected now; ``sent(index, nbytes)``: count notice bytes for a commit."""
        self._coordinator, self._recipients, self._sent = coordinator, recipients, sent
        self._latest: Announcement | None = None
        self._task: asyncio.Task | None = None

    def announce(self, announcement: Announcement) -> None:
        self._latest = announcement
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="announce")

    async def idle(self) -> None:
        """Wait until every commit so far has been announced to everyone connected."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        targets: list[str] | None = None  # None: everyone connected
        while (current := self._latest) is not None:
            self._latest = None
            ids = self._recipients() if targets is None else targets
            sent: Counter[int] = Counter()
            switched = 0  # volunteers before this index got an older notice than ``current``
            try:
                for start in range(0, len(ids), BATCH):
                    if self._latest is not None:
                        current, self._latest, switched = self._latest, None, start
                    batch = ids[start : start + BATCH]
                    sent[current.index] += await self._coordinator.publish(current.notice, to=batch) * len(current.notice)
                    await self._coordinator.publish(current.status, to=batch)
                    await asyncio.sleep(len(batch) / ANNOUNCE_RATE)
            except Exception:
                log.exception("announcing round %d failed", current.round)
            finally:
                for index, nbytes in sent.items():
                    await self._sent(index, nbytes)
            if self._latest is None and switched:
                self._latest, targets = current, ids[:switched]
            else:
                targets = None
