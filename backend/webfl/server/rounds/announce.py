"""Telling every volunteer of a commit: ONE ``model_notice`` a volunteer, paced.

The notice carries the status as of the commit, and of the history only what a volunteer
connected may lack: the entries since the last commit every volunteer was told of
(``told``; one entry while passes keep up). Each pass encodes its frame once, the same
bytes for every volunteer of the task, so a commit costs the one event loop one small
send a volunteer, not two frames and the whole history.

Sent at once after every commit, the next round's tasks and updates would wait behind
10,000 sends, and with fast rounds the sends pile up. So they go out in batches at a
bounded rate (``ANNOUNCE_RATE``), and the newest commit wins: notices are hints (the model
itself comes with a task, see ``tasks``), so a commit that lands while a pass is under
way takes over the rest of that pass, and one more pass then brings it to those that got
an older one. Every commit's notice starts out at once, and the newest reaches every
volunteer connected; an intermediate one may reach only some, which is why a notice
carries every entry since the last one that reached all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...core.protocol import HISTORY_KEPT, Message, encode
from ..coordinator import Coordinator
from ..store import RoundRecord

__all__ = ["ANNOUNCE_RATE", "Announcement", "Announcer", "history_fields"]

log = logging.getLogger("webfl.engine")

#: Volunteers told per second at most: about a fifth of one core of this machine's
#: event loop, so a round's own work keeps the rest (see docs/scale.md).
ANNOUNCE_RATE = 2_000
#: Volunteers per batch: the event loop runs other work between two batches.
BATCH = 100


def history_fields(history: list[RoundRecord], since: int | None = None, upto: int | None = None) -> dict:
    """``history`` entries ``since`` (None: the last ``HISTORY_KEPT``) up to ``upto`` (None:
    all), as ``[round, accuracy]``, with the index of the first (``history_from``)."""
    upto = len(history) if upto is None else upto
    start = max(upto - HISTORY_KEPT, 0 if since is None else since)
    return {"history": [[r.round, r.accuracy] for r in history[start:upto]], "history_from": start}


@dataclass(frozen=True)
class Announcement:
    round: int
    upto: int  # the history entries it covers: a commit's is the one it made and those before
    fields: dict  # the notice's, and the status's but its history, as of the commit
    #: ``model_notice``: a commit's, whose bytes count to the bytes_down of history entry
    #: ``upto - 1``; ``status``: a run's start, no round's.
    kind: str = "model_notice"


class Announcer:
    """One background pass at a time over the volunteers connected; latest wins."""

    def __init__(
        self, coordinator: Coordinator, recipients: Callable[[], list[str]], sent: Callable[[int, int], Awaitable[None]],
        history: Callable[[int, int], dict], told: int,
    ) -> None:
        """``recipients``: ids connected now; ``sent(index, nbytes)``: count notice bytes for
        a commit; ``history(since, upto)``: the notice's history fields, entries ``since``
        up to ``upto``; ``told``: the history entries every volunteer connected holds (a
        joining one gets all of them with its welcome)."""
        self._coordinator, self._recipients, self._sent, self._history = coordinator, recipients, sent, history
        self.told = told
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

    def frame(self, announcement: Announcement) -> bytes:
        """The notice of ``announcement`` with the history since the last one that reached all."""
        history = self._history(self.told, announcement.upto)
        return encode(Message(announcement.kind, {**announcement.fields, **history}))

    async def _run(self) -> None:
        targets: list[str] | None = None  # None: everyone connected
        while (current := self._latest) is not None:
            self._latest = None
            ids = self._recipients() if targets is None else targets
            frame = self.frame(current)
            sent: Counter[int | None] = Counter()
            switched = 0  # volunteers before this index got an older notice than ``current``
            failed = False
            try:
                for start in range(0, len(ids), BATCH):
                    if self._latest is not None:
                        current, self._latest, switched = self._latest, None, start
                        frame = self.frame(current)
                    batch = ids[start : start + BATCH]
                    sent[current.upto - 1 if current.kind == "model_notice" else None] += await self._coordinator.publish(frame, to=batch) * len(frame)
                    await asyncio.sleep(len(batch) / ANNOUNCE_RATE)
            except Exception:
                log.exception("announcing round %d failed", current.round)
                failed = True
            finally:
                for index, nbytes in sent.items():
                    if index is not None:
                        await self._sent(index, nbytes)
            if not failed and not switched:
                # Everyone connected holds ``current``: those of this pass from it, those
                # of the pass before (a pass to its first part) too, joiners from welcome.
                self.told = max(self.told, current.upto)
            if self._latest is None and switched:
                # A pass to those that got an older notice; if this was already such a
                # pass, the rest of the one before got an older one too: tell everyone.
                self._latest, targets = current, ids[:switched] if targets is None else None
            else:
                targets = None
