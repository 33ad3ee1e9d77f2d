"""Group commit: what arrives while a write is in flight goes out together in the next one.

A follower ships the updates it vetted for the leader to fold (``partial``) on the relay
stream. One stream entry each would cost the leader one read and one Redis round trip per
update; waiting to fill a batch would delay every update. Here the first entry is written
at once, and the entries that arrive meanwhile form the next write: batches grow exactly
as fast as Redis falls behind. ``put`` returns once its entry is written, so a volunteer's
later frames (its leave, say) reach the stream after its update, as they would unbatched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Batches"]

T = TypeVar("T")


class _Batch(Generic[T]):
    def __init__(self) -> None:
        self.entries: list[T] = []
        self.written: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Batches(Generic[T]):
    """Entries written through ``write`` in batches, one write in flight at a time."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write = write
        self._next: _Batch[T] | None = None
        self._writer: asyncio.Task | None = None

    async def put(self, entry: T) -> None:
        """Add ``entry`` to the next write and wait until it is written; raises what the write raised."""
        if self._next is None:
            self._next = _Batch()
        batch = self._next
        batch.entries.append(entry)
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        await asyncio.shield(batch.written)  # one waiter cancelled (its socket closed) cancels no one else's write

    async def _drain(self) -> None:
        try:
            while (batch := self._next) is not None:
                self._next = None
                try:
                    await self._write(batch.entries)
                except Exception as exc:  # every waiter of the batch gets it, as an unbatched write would raise it
                    batch.written.set_exception(exc)
                    batch.written.exception()  # retrieved here too: a batch whose waiters all left logs no warning
                else:
                    batch.written.set_result(None)
        finally:
            self._writer = None
