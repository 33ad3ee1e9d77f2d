"""Pace steering (Bonawitz et al. 2019): tell surplus volunteers when to come back.

A volunteer that is ready when the server has no work for it gets a ``wait``
message with ``retry_after_s`` instead of idling on (or hammering) the server. The
delay grows with the load: with ``ready`` volunteers competing for ``needed`` slots
per round, one of them waits about ``ready / needed`` rounds for a turn. It is
jittered (0.5x to 1.5x) so a crowd told to wait does not come back as one, and
capped at ``max_wait_s``.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

__all__ = ["MIN_WAIT_S", "retry_after", "round_duration"]

MIN_WAIT_S = 1.0


def round_duration(recent: Sequence[float], fallback: float) -> float:
    """A robust estimate of the next round's duration: median of the last few."""
    recent = [d for d in recent[-5:] if d > 0]
    return statistics.median(recent) if recent else fallback


def retry_after(ready: int, needed: int, round_s: float, max_wait_s: float, rng: random.Random) -> float:
    rounds_away = max(1.0, ready / max(needed, 1))
    t = round_s * rounds_away * rng.uniform(0.5, 1.5)
    return round(min(max_wait_s, max(MIN_WAIT_S, t)), 2)
