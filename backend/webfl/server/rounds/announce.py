"""Telling every volunteer of a commit: ONE ``model_notice`` a volunteer, paced.

The notice carries the status as of the commit, and of the history only what a volunteer
connected may lack: the entries since the last commit every volunteer was told of
(``told``; one entry while passes keep up). Each pass encodes its frame once, the same
bytes for every volunteer of the task, so a commit costs the one event loop one small
send a volunteer, not two frames and the whole history.

Sent at once after every commit, the next round's tasks and updates would wait behind
10,000 sends, and with fast rounds the sends pile up. So they go out in batches, paced
(``Pace``), and the newest commit wins: notices are hints (the model itself comes with a
task, see ``tasks``), so a commit that lands while a pass is under way takes over the rest
of that pass, and one more pass then brings it to those that got an older one. Every
commit's notice goes out with the next batch, and the newest reaches every volunteer
connected; an intermediate one may reach only some, which is why a notice carries every
entry since the last one that reached all.

The round comes first: the pace is a bucket of volunteers (``Pace``), ``BATCH`` at once,
then ``BUSY_RATE`` a second while a round is in flight (its cohort and tasks going out,
updates due, the fold, the commit; a round of any task this process serves, since they share
its event loop: ``TaskSet.round_in_flight``), otherwise as many as keep the pass's share of the event
loop at ``QUIET_DUTY`` by the cost it measures of each batch (publishing it, and the
connections' writers sending it, until the loop comes back to the pass), between
``BUSY_RATE`` and ``QUIET_RATE``. So it never starves: a commit reaches every volunteer
connected at its commit (it or a newer one) within two passes' worth of sends (the rest of
the pass it took over, then the part that pass had told; if that was itself such a part,
everyone): with N connected, within ``2 N / BUSY_RATE`` plus the batches' own cost even
while rounds run back to back (10,000: about 41 s), and about ``2 N * cost / QUIET_DUTY``
once none is in flight (10,000 at 50 us each: 4 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...core.protocol import HISTORY_KEPT, Message, encode
from ..coordinator import Coordinator
from ..store import RoundRecord

__all__ = ["BATCH", "BUSY_RATE", "QUIET_DUTY", "QUIET_RATE", "Announcement", "Announcer", "Pace", "history_fields"]

log = logging.getLogger("webfl.engine")

#: Volunteers per batch: the event loop runs other work between two batches.
BATCH = 100
#: While a round is in flight: volunteers told per second (a batch every 0.2 s).
BUSY_RATE = 500.0
#: Otherwise: the share of the event loop's time a pass may take, measured ...
QUIET_DUTY = 0.25
#: ... and volunteers told per second at most, also where a batch costs this loop next to
#: nothing (a cluster's publish lands on other members).
QUIET_RATE = 5_000.0


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
    #: ``upto - 1``; ``status``: a run's start or end, no round's.
    kind: str = "model_notice"


class Pace:
    """A token bucket of volunteers to tell: ``BATCH`` at once, refilled at ``rate(busy)``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._tokens, self._at = float(BATCH), clock()
        self._cost = 0.0  # of the event loop per volunteer, as the last batch measured (0: not yet)

    def rate(self, busy: bool) -> float:
        """Volunteers a second: ``BUSY_RATE`` while a round is in flight, else what keeps the
        measured cost at ``QUIET_DUTY`` of the loop, within ``[BUSY_RATE, QUIET_RATE]``."""
        if busy:
            return BUSY_RATE
        return QUIET_RATE if self._cost <= 0.0 else min(QUIET_RATE, max(BUSY_RATE, QUIET_DUTY / self._cost))

    def take(self, n: int, busy: bool) -> float:
        """Spend ``n`` volunteers' tokens; how many seconds to wait before telling them."""
        now, rate = self.clock(), self.rate(busy)
        self._tokens = min(float(BATCH), self._tokens + (now - self._at) * rate) - n
        self._at = now
        return max(0.0, -self._tokens / rate)

    def measured(self, n: int, cost_s: float) -> None:
        """Telling ``n`` volunteers took the event loop ``cost_s``."""
        if n > 0:
            self._cost = cost_s / n


class Announcer:
    """One background pass at a time over the volunteers connected; latest wins."""

    def __init__(
        self, coordinator: Coordinator, recipients: Callable[[], list[str]], sent: Callable[[int, int], Awaitable[None]],
        history: Callable[[int, int], dict], told: int, busy: Callable[[], bool] = lambda: False, pace: Pace | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``recipients``: ids connected now; ``sent(index, nbytes)``: count notice bytes for
        a commit; ``history(since, upto)``: the notice's history fields, entries ``since``
        up to ``upto``; ``told``: the history entries every volunteer connected holds (a
        joining one gets all of them with its welcome); ``busy()``: a round is in flight on this process;
        ``pace``'s clock and ``sleep``: what measures a batch and waits (tests inject them)."""
        self._coordinator, self._recipients, self._sent, self._history = coordinator, recipients, sent, history
        self._busy, self._pace, self._sleep = busy, pace or Pace(), sleep
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
                    batch = ids[start : start + BATCH]
                    if (wait := self._pace.take(len(batch), self._busy())) > 0:
                        await self._sleep(wait)
                    if self._latest is not None:  # a newer commit takes over the rest of the pass
                        current, self._latest, switched = self._latest, None, start
                        frame = self.frame(current)
                    began = self._pace.clock()
                    sent[current.upto - 1 if current.kind == "model_notice" else None] += (
                        await self._coordinator.publish(frame, to=batch) * len(frame))
                    await asyncio.sleep(0)  # the writers woken by the publish send before the pass runs again
                    self._pace.measured(len(batch), self._pace.clock() - began)
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
