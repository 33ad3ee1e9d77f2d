"""The pace of announcements (``rounds/announce.py``), on a fake clock: deterministic and fast.

While a round is in flight the pass tells ``BUSY_RATE`` volunteers a second; otherwise as
many as keep its measured cost at ``QUIET_DUTY`` of the loop. Either way, a commit reaches
every volunteer (it or a newer one) within two passes' worth of sends.
"""

from __future__ import annotations

import asyncio
import math

from rounds_harness import RecordingCoordinator

from webfl.core.downlink import model_url
from webfl.core.protocol import decode
from webfl.server.rounds.announce import BATCH, BUSY_RATE, QUIET_DUTY, QUIET_RATE, Announcement, Announcer, Pace


class FakeTime:
    """A clock that moves only when the pass sleeps or pays for a send; commits land on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.at: list[tuple[float, int]] = []  # (time, version) commits still to land
        self.announcer: Announcer | None = None

    def advance(self, to: float) -> None:
        while self.at and self.at[0][0] <= to:
            self.now, version = self.at.pop(0)
            self.announcer.announce(notice(version))
        self.now = max(self.now, to)

    async def sleep(self, seconds: float) -> None:
        self.advance(self.now + seconds)
        await asyncio.sleep(0)


class CostlyCoordinator(RecordingCoordinator):
    """Each volunteer told costs the event loop ``cost_s``; records when each heard what."""

    def __init__(self, time: FakeTime, ids: list[str], cost_s: float) -> None:
        super().__init__()
        self.time, self.cost_s = time, cost_s
        self.heard: dict[str, list[tuple[float, int]]] = {i: [] for i in ids}
        self.sends: list[tuple[float, int]] = []  # (time, volunteers) of each batch

    async def publish(self, frame, to=None):
        version = decode(frame)["model_version"]
        self.sends.append((self.time.now, len(to)))
        for v in to:
            self.heard[v].append((self.time.now, version))
        self.time.advance(self.time.now + self.cost_s * len(to))
        return len(to)


def notice(version: int) -> Announcement:
    fields = {"model_version": version, "digest": "d", "url": model_url("d"), "state": "training", "round": version,
              "connected": 0, "run": [version, 1000], "privacy": None, "ended": None}
    return Announcement(version, version, fields)


def setup(n: int, cost_s: float, busy: dict) -> tuple[FakeTime, CostlyCoordinator, Announcer]:
    time = FakeTime()
    ids = [f"v{i:05d}" for i in range(n)]
    coord = CostlyCoordinator(time, ids, cost_s)

    async def counted(index: int, nbytes: int) -> None:
        pass

    time.announcer = Announcer(coord, lambda: ids, counted, lambda since, upto: {"history": [], "history_from": since}, told=0,
                               busy=lambda: busy["on"], pace=Pace(clock=lambda: time.now), sleep=time.sleep)
    return time, coord, time.announcer


def most_in_a_window(sends: list[tuple[float, int]], window_s: float) -> int:
    """The most volunteers told within any ``window_s`` (windows starting at a send)."""
    return max(sum(n for t, n in sends if start <= t < start + window_s) for start, _ in sends)


def test_quiet_a_pass_takes_its_duty_of_the_loop_by_the_cost_it_measures():
    async def main():
        n, cost = 4_000, 200e-6  # 0.25 / 200 us: 1,250 a second, between BUSY_RATE and QUIET_RATE
        time, coord, announcer = setup(n, cost, {"on": False})
        announcer.announce(notice(1))
        await announcer.idle()
        took = time.now
        assert all([got for _, got in heard] == [1] for heard in coord.heard.values())
        # The loop's share: the cost of n sends over the pass's time; the first batch is free.
        assert QUIET_DUTY * 0.95 <= n * cost / took <= QUIET_DUTY * n / (n - BATCH) * 1.01
        assert most_in_a_window(coord.sends, 1.0) <= BATCH + QUIET_DUTY / cost

    asyncio.run(main())


def test_quiet_and_cheap_a_pass_keeps_to_its_top_rate():
    async def main():
        n = 10_000
        time, coord, announcer = setup(n, 1e-6, {"on": False})
        announcer.announce(notice(1))
        await announcer.idle()
        assert (n - BATCH) / QUIET_RATE <= time.now <= n / QUIET_RATE + n * 1e-6
        assert most_in_a_window(coord.sends, 1.0) <= BATCH + QUIET_RATE

    asyncio.run(main())


def test_while_rounds_run_back_to_back_the_pass_holds_back_but_every_commit_reaches_everyone_in_time():
    async def main():
        n, cost, every = 2_000, 50e-6, 0.05  # a commit every 50 ms for 30 s, rounds in flight throughout
        busy = {"on": True}
        time, coord, announcer = setup(n, cost, busy)
        time.at = [(k * every, k + 1) for k in range(1, 600)]
        announcer.announce(notice(1))
        while time.at:
            await announcer.idle()  # a pass can end between two commits; the next one starts another
            if time.at:
                await time.sleep(time.at[0][0] - time.now)
        stopped = time.now
        assert most_in_a_window(coord.sends, 1.0) <= BATCH + BUSY_RATE  # the round comes first
        # The bound: two passes' worth of sends at BUSY_RATE, plus their own cost and one batch.
        bound = 2 * n / BUSY_RATE + 2 * n * cost + BATCH / BUSY_RATE
        commits = [(0.0, 1)] + [(k * every, k + 1) for k in range(1, 600)]
        for t, version in commits:
            if t + bound <= stopped:
                for v, heard in coord.heard.items():
                    assert any(when <= t + bound and got >= version for when, got in heard), (v, version, t)
        # Not a bound that cannot fail: commit 1 took most of it (a pass and a half here).
        assert min(w for w, got in coord.heard["v00000"] if got >= 1) == 0.0
        first_everywhere = max(min(w for w, got in h if got >= 300) for h in coord.heard.values())
        assert first_everywhere - 299 * every > n / BUSY_RATE * 0.9
        # The run goes quiet: the last commit reaches everyone at the quiet pace.
        busy["on"] = False
        await announcer.idle()
        last = commits[-1][1]
        assert all(heard[-1][1] == last for heard in coord.heard.values())
        quiet_rate = min(QUIET_RATE, QUIET_DUTY / cost)
        assert time.now - stopped <= 2 * n / quiet_rate + BATCH / BUSY_RATE + 2 * n * cost

    asyncio.run(main())


def test_a_burst_of_one_batch_goes_at_once_so_small_federations_hear_at_once():
    async def main():
        time, coord, announcer = setup(6, 50e-6, {"on": True})
        for version in (1, 2, 3):
            announcer.announce(notice(version))
            await announcer.idle()
        # 18 sends within a batch's tokens: none waited, though a round is in flight.
        assert [t for t, _ in coord.sends] == [0.0, 6 * 50e-6, 12 * 50e-6]
        assert math.isclose(time.now, 18 * 50e-6)

    asyncio.run(main())
