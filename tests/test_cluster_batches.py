"""Group commit for the follower's vetted updates (``cluster.batches``): what arrives while a
write is in flight goes in the next write, each ``put`` returns once its entry is written,
and a failed write fails its own entries only."""

from __future__ import annotations

import asyncio

import pytest

from webfl.server.cluster.batches import Batches


class Writes:
    """Records each write; a write waits until the test lets it finish (or fail)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Future] = []

    async def __call__(self, entries: list[int]) -> None:
        self.batches.append(list(entries))
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_entries_that_arrive_during_a_write_go_together_in_the_next_and_each_put_waits_for_its_own():
    async def main():
        writes = Writes()
        batches = Batches(writes)
        first = asyncio.create_task(batches.put(1))
        await settle()
        assert writes.batches == [[1]]  # the first goes at once, alone
        rest = [asyncio.create_task(batches.put(i)) for i in (2, 3, 4)]
        await settle()
        assert writes.batches == [[1]] and not first.done()  # waiting behind the write in flight
        writes.gates[0].set_result(None)
        await settle()
        assert first.done() and writes.batches == [[1], [2, 3, 4]] and not any(t.done() for t in rest)
        writes.gates[1].set_result(None)
        await asyncio.gather(first, *rest)

    asyncio.run(main())


def test_a_failed_write_fails_its_own_entries_and_the_next_write_goes_on():
    async def main():
        writes = Writes()
        batches = Batches(writes)
        first = asyncio.create_task(batches.put(1))
        await settle()
        second = asyncio.create_task(batches.put(2))
        await settle()
        writes.gates[0].set_exception(ConnectionError("Redis went away"))
        await settle()
        with pytest.raises(ConnectionError):
            await first
        assert writes.batches == [[1], [2]]
        writes.gates[1].set_result(None)
        await second
        third = asyncio.create_task(batches.put(3))  # the writer stopped when it ran dry; a new one starts
        await settle()
        writes.gates[2].set_result(None)
        await third
        assert writes.batches == [[1], [2], [3]]

    asyncio.run(main())


def test_a_waiter_that_goes_away_cancels_nobody_elses_write():
    async def main():
        writes = Writes()
        batches = Batches(writes)
        first = asyncio.create_task(batches.put(1))
        await settle()
        second, third = asyncio.create_task(batches.put(2)), asyncio.create_task(batches.put(3))
        await settle()
        second.cancel()  # its socket closed
        writes.gates[0].set_result(None)
        await settle()
        writes.gates[1].set_result(None)
        await asyncio.gather(first, third)
        assert writes.batches == [[1], [2, 3]] and second.cancelled()

    asyncio.run(main())
