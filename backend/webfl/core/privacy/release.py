"""The server's DP release of one round: a streaming sum of clipped updates, noised.

``begin``, ``add`` per decoded update, ``finish``: the same three steps as an aggregation
rule, in O(model size) memory (one float64 accumulator). ``add`` measures each update's
L2 norm and re-clips anything above the round's clip ``C``: volunteers clip before the
codec, so a decoded norm a little above ``C`` is the codec's error (counted as
``CODEC`` if within ``tolerance``, relative), and more than that means the volunteer did
not clip (``EXCESS``). Either way the update enters the sum with norm at most ``C``, so
one volunteer moves the sum by at most ``C`` whatever it sends: the sensitivity the noise
is calibrated to.

``finish`` adds Gaussian noise of std ``z_sum * C`` to the sum and divides by the fixed
expected cohort size ``m``, never by the number of updates received, which depends on
who took part and would leak it. With adaptive clipping it also releases the noised
fraction of unclipped updates and moves ``C`` for the next round (``adaptive.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .adaptive import AdaptiveClip, Mechanism, split_noise
from .noise import SecureGaussian

__all__ = ["DEFAULT_TOLERANCE", "ClipVerdict", "DPSum", "Release", "ReleaseState"]

log = logging.getLogger("webfl.privacy")

#: Relative excess of a decoded norm over ``C`` still put down to the codec: float32
#: rounding of the volunteer's scaling (~1e-7) and fp16's 2^-11 relative error per value
#: fit in it. Stochastic quantizers (q1..q8) can exceed it on a clipped update; such
#: updates are re-clipped like any other, so the bound holds, only the count says EXCESS.
DEFAULT_TOLERANCE = 1e-3


class ReleaseState(str, Enum):
    IDLE = "idle"
    OPEN = "open"


class ClipVerdict(str, Enum):
    WITHIN = "within"  # norm <= C: summed as is
    CODEC = "codec"  # C < norm <= C * (1 + tolerance): the codec's error, re-clipped
    EXCESS = "excess"  # norm > C * (1 + tolerance): not clipped by its sender, re-clipped


@dataclass(frozen=True)
class Release:
    """One round's private output and what the status shows about it."""

    delta: np.ndarray  # float32, the noised sum over the expected cohort size
    count: int  # updates summed
    clip: float  # the clip norm this round used
    noise_std: float  # std of the noise added to the sum (z_sum * C)
    verdicts: dict[str, int] = field(default_factory=dict)  # ClipVerdict value -> count
    # Updates whose sender (or the server) clipped them; None when some came in a secure
    # aggregation sum, whose per-update clipped bits the server never sees (not 0: unknown).
    clipped: int | None = 0
    unclipped_fraction: float | None = None  # the noised b~ (adaptive clipping only)
    next_clip: float | None = None  # the adaptive clip norm of the next round


class DPSum:
    """DP-FedAvg's noised mean of clipped updates, streamed; one instance per run.

    ``clip`` is a fixed norm or an ``AdaptiveClip`` (the current norm and its knobs);
    ``noise_multiplier`` is the operator's ``z`` for the whole round (split between the
    sum and the count when adaptive). ``normal`` is injectable for tests only.
    """

    def __init__(
        self,
        *,
        clip: float | AdaptiveClip,
        noise_multiplier: float,
        expected_cohort: int,
        tolerance: float = DEFAULT_TOLERANCE,
        normal: SecureGaussian | None = None,
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a number >= 0, got {noise_multiplier!r}")
        if not (isinstance(expected_cohort, int) and expected_cohort >= 1):
            raise ValueError(f"expected_cohort must be a positive integer, got {expected_cohort!r}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
        self.adaptive = clip if isinstance(clip, AdaptiveClip) else None
        self._fixed_clip = None if self.adaptive is not None else float(clip)
        if self._fixed_clip is not None and not (math.isfinite(self._fixed_clip) and self._fixed_clip > 0):
            raise ValueError(f"clip must be a positive number, got {clip!r}")
        if self.adaptive is None:
            self.mechanism = Mechanism(noise_multiplier)
        else:
            count_multiplier = 2.0 * self.adaptive.count_noise
            self.mechanism = Mechanism(split_noise(noise_multiplier, self.adaptive.count_noise), count_multiplier)
        self.noise_multiplier = noise_multiplier
        self.expected_cohort = expected_cohort
        self.tolerance = tolerance
        self._normal = normal or SecureGaussian()
        self.state = ReleaseState.IDLE
        self._sum: np.ndarray | None = None
        self._reset_round()

    @property
    def clip(self) -> float:
        """The clip norm of the open (or next) round: what tasks tell volunteers."""
        return self.adaptive.clip if self.adaptive is not None else self._fixed_clip  # type: ignore[return-value]

    def _to(self, new: ReleaseState) -> None:
        log.info("dp release: %s -> %s", self.state.value, new.value)
        self.state = new

    def _reset_round(self) -> None:
        self.count = 0
        self.clipped = 0
        self.unclipped = 0
        self.hidden = 0  # updates folded in as a sum (add_sum): their clipped bits are unknown
        self.verdicts = {v.value: 0 for v in ClipVerdict}

    def begin(self, size: int) -> None:
        if self.state is not ReleaseState.IDLE:
            raise RuntimeError(f"begin in state {self.state.value}")
        if size < 1:
            raise ValueError(f"model size must be positive, got {size}")
        self.size = size
        self._sum = np.zeros(size, dtype=np.float64)
        self._reset_round()
        self._to(ReleaseState.OPEN)

    def add(self, update: np.ndarray, clipped: bool | None = None, weight: float = 1.0) -> ClipVerdict:
        """Fold one decoded update in; ``clipped`` is its sender's report (adaptive clipping).

        ``weight`` in [0, 1] scales the clipped update (FedBuff's staleness discount): a
        weight above 1 would raise the sensitivity, example counts must not be used. Raises ``ValueError`` (nothing changed) for a wrong shape, dtype or a non-finite
        value. Without a report, an update whose decoded norm reaches ``C * (1 - tolerance)``
        counts as clipped: an honest volunteer's clipped delta lands there.
        """
        if self.state is not ReleaseState.OPEN or self._sum is None:
            raise RuntimeError(f"add in state {self.state.value}")
        if not isinstance(update, np.ndarray) or update.dtype.kind != "f" or update.shape != (self.size,):
            raise ValueError(f"a DP update must be a float vector of {self.size} values")
        if clipped is not None and not isinstance(clipped, bool):
            raise ValueError("clipped must be true or false")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"a DP update's weight must be in [0, 1], got {weight!r}")
        u = update.astype(np.float64)
        norm = float(np.linalg.norm(u))
        if not math.isfinite(norm):
            raise ValueError("update has non-finite values")
        c = self.clip
        if norm <= c:
            verdict = ClipVerdict.WITHIN
        else:
            verdict = ClipVerdict.CODEC if norm <= c * (1.0 + self.tolerance) else ClipVerdict.EXCESS
            u *= c / norm
        if weight != 1.0:
            u *= weight
        if clipped is None:
            clipped = norm >= c * (1.0 - self.tolerance)
        np.add(self._sum, u, out=self._sum)
        self.count += 1
        self.verdicts[verdict.value] += 1
        self.clipped += clipped or verdict is ClipVerdict.EXCESS
        self.unclipped += not (clipped or verdict is ClipVerdict.EXCESS)
        return verdict

    def add_sum(self, total: np.ndarray, count: int) -> None:
        """Fold in the sum of ``count`` updates the server cannot see one by one (secure
        aggregation, ``server/secagg``): each was clipped to ``C`` by its sender, so the
        sum's sensitivity is ``C`` as with ``add``; no clipped bits are known, so adaptive
        clipping cannot use it. ``ValueError`` (nothing changed) for a bad vector or count."""
        if self.state is not ReleaseState.OPEN or self._sum is None:
            raise RuntimeError(f"add_sum in state {self.state.value}")
        if self.adaptive is not None:
            raise ValueError("adaptive clipping needs each update's clipped bit; a sum has none")
        if not isinstance(total, np.ndarray) or total.dtype.kind != "f" or total.shape != (self.size,) or not np.isfinite(total).all():
            raise ValueError(f"a summed update must be a finite float vector of {self.size} values")
        if not (isinstance(count, int) and count >= 1):
            raise ValueError(f"a sum holds at least one update, not {count!r}")
        np.add(self._sum, total, out=self._sum)
        self.count += count
        self.hidden += count

    def abandon(self) -> None:
        """Drop the open round (too few updates): nothing is released, nothing is charged."""
        self._sum = None
        self._to(ReleaseState.IDLE)

    def finish(self) -> Release:
        """The noised mean; the caller charges the accountant once for it (``mechanism``)."""
        if self.state is not ReleaseState.OPEN or self._sum is None:
            raise RuntimeError(f"finish in state {self.state.value}")
        c = self.clip
        noise_std = self.mechanism.sum_multiplier * c
        total = self._sum
        if noise_std > 0:
            total += noise_std * self._normal.standard_normal(self.size)
        delta = (total / self.expected_cohort).astype(np.float32)
        fraction = next_clip = None
        if self.adaptive is not None:
            (normal,) = self._normal.standard_normal(1)
            fraction = self.adaptive.noisy_fraction(self.unclipped, self.count, self.expected_cohort, float(normal))
            self.adaptive = self.adaptive.step(fraction)
            next_clip = self.adaptive.clip
        clipped = None if self.hidden else self.clipped
        release = Release(delta, self.count, c, noise_std, dict(self.verdicts), clipped, fraction, next_clip)
        self._sum = None
        self._to(ReleaseState.IDLE)
        return release
