"""Adaptive clipping (Andrew et al. 2021) and the noise multipliers one release uses.

Each round every volunteer reports whether its delta was clipped. The server releases a
noised fraction of *unclipped* updates and moves the clip norm geometrically towards the
``target_quantile`` of the update norms:

    b~ = (sum_i (b_i - 1/2) + N(0, count_noise^2)) / m + 1/2
    C <- C * exp(-clip_lr * (b~ - target_quantile))

with ``b_i = 1`` for an unclipped update and ``m`` the expected cohort size. Centring the
bits halves the count's sensitivity to 1/2, so its noise multiplier is ``2 * count_noise``.
The two Gaussian releases of a round (the sum and the count) compose to one Gaussian of
multiplier ``z`` when ``z_sum = (z^-2 - (2 count_noise)^-2)^-1/2``: the operator's
``noise_multiplier`` is the whole round's budget, and the sum gets a little more noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AdaptiveClip", "Mechanism", "split_noise"]


def split_noise(noise_multiplier: float, count_noise: float) -> float:
    """The sum's multiplier so that the sum and the count together spend ``noise_multiplier``."""
    if noise_multiplier == 0:
        return 0.0
    count_multiplier = 2.0 * count_noise
    if not count_multiplier > noise_multiplier:
        raise ValueError(
            f"count_noise must be more than noise_multiplier/2 ({noise_multiplier / 2:g}) to leave any budget"
            f" for the sum, got {count_noise:g}"
        )
    return (noise_multiplier**-2 - count_multiplier**-2) ** -0.5


@dataclass(frozen=True)
class Mechanism:
    """The Gaussian releases of one round, as noise multipliers (what the accountant charges).

    ``sum_multiplier``: the clipped sum's noise std over the clip norm; ``count_multiplier``:
    the clipped-count's noise std over its sensitivity (1/2), ``None`` with a fixed clip.
    """

    sum_multiplier: float
    count_multiplier: float | None = None

    @property
    def multipliers(self) -> tuple[float, ...]:
        return (self.sum_multiplier,) if self.count_multiplier is None else (self.sum_multiplier, self.count_multiplier)

    @property
    def effective_multiplier(self) -> float:
        """The one Gaussian the round's releases amount to: ``(sum of z_i^-2)^-1/2``.

        Both releases see the same cohort, so together they are one Gaussian mechanism on
        the vector (sum / z_sum C, count / 2 count_noise), whose sensitivity is the square
        root of the summed squares; under Poisson sampling that joint release is what is
        subsampled, so the accountant charges this multiplier, not two events.
        """
        if 0.0 in self.multipliers:
            return 0.0
        return sum(z**-2 for z in self.multipliers) ** -0.5


@dataclass(frozen=True)
class AdaptiveClip:
    """The clip norm of the next round and how it moves; ``step`` returns the next one."""

    clip: float
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive number, got {self.clip!r}")
        if not (0.0 <= self.target_quantile <= 1.0):
            raise ValueError(f"target_quantile must be in [0, 1], got {self.target_quantile!r}")
        if not (math.isfinite(self.clip_lr) and self.clip_lr > 0):
            raise ValueError(f"clip_lr must be a positive number, got {self.clip_lr!r}")
        if not (math.isfinite(self.count_noise) and self.count_noise >= 0):
            raise ValueError(f"count_noise must be a number >= 0, got {self.count_noise!r}")

    def noisy_fraction(self, unclipped: int, count: int, expected_cohort: int, normal: float) -> float:
        """``b~`` from ``unclipped`` of ``count`` updates and one standard normal draw."""
        return (unclipped - count / 2.0 + self.count_noise * normal) / expected_cohort + 0.5

    def step(self, fraction: float) -> AdaptiveClip:
        """The geometric update towards the target quantile."""
        clip = self.clip * math.exp(-self.clip_lr * (fraction - self.target_quantile))
        return AdaptiveClip(clip, self.target_quantile, self.clip_lr, self.count_noise)
