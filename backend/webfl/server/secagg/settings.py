"""The ``"secagg"`` run setting, parsed once into a typed, frozen ``SecAggSettings``.

    "secagg": {"neighbors": k, "threshold": t, "bits": q, "range": B, "clip": C, "stage_s": s}

All optional but ``clip`` outside a dp run (a dp run clips to ``dp.clip``, and then
``clip`` is refused: one clip norm, the one the noise is calibrated to). ``neighbors``
absent: per round, the smallest degree that survives 30% dropout (``default_neighbors``);
``threshold`` absent: ``floor(k/2) + 1``, the least that stops a server lying about who
dropped; ``bits`` 8; ``range`` absent: ``RANGE_FACTOR * C / sqrt(d)`` per coordinate
(docs/secagg.md's accuracy note); ``stage_s`` 10 s, the deadline of the key, share and
unmask stages (the masked upload has the run's ``deadline_s``, it includes training).

Every error is a ``ValueError`` that starts with ``secagg`` (the admin API answers 400).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...core.secagg import Quantizer, modulus_bits
from ...core.secagg.wire import MAX_COHORT

__all__ = ["DEFAULT_STAGE_S", "DROPOUT", "RANGE_FACTOR", "SecAggSettings", "default_neighbors"]

#: The per-coordinate range is this many times C / sqrt(d) (``bench/secagg.py`` measures it).
RANGE_FACTOR = 4.0
DEFAULT_BITS = 8
DEFAULT_STAGE_S = 10.0
#: The dropout the default degree is sized for, and the chance it may fail at it.
DROPOUT = 0.3
FAILURE = 0.01
_KEYS = ("neighbors", "threshold", "bits", "range", "clip", "stage_s")


def _unmask_failure(n: int, k: int, t: int, dropped: int) -> float:
    """A union bound on the chance some volunteer keeps fewer than ``t`` of its ``k``
    neighbours when ``dropped`` of the ``n`` vanish (hypergeometric per volunteer)."""
    others, alive = n - 1, n - 1 - min(dropped, n - 1)
    total = math.comb(others, k)
    short = sum(math.comb(alive, j) * math.comb(others - alive, k - j) for j in range(t))
    return min(1.0, n * short / total)


def default_neighbors(n: int, dropout: float = DROPOUT, failure: float = FAILURE) -> int:
    """The smallest even k (capped at n - 1) whose rounds unmask, with ``t = floor(k/2) + 1``,
    when ``dropout`` of the cohort vanishes, but for a chance below ``failure``.

    SecAgg+'s k ~ log2 n fails at 30% dropout (docs/secagg.md's table): a volunteer with
    half its neighbours gone cannot be rebuilt.
    """
    if n < 2:
        raise ValueError("a SecAgg cohort has at least 2 volunteers")
    dropped = round(dropout * n)
    for k in range(2, n - 1, 2):
        if _unmask_failure(n, k, k // 2 + 1, dropped) <= failure:
            return k
    return n - 1


def _number(obj: dict, key: str, *, integer: bool = False, low: float, high: float) -> float | int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (integer and value != int(value)):
        raise ValueError(f"secagg.{key} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    if not low <= value <= high or (not integer and value == low == 0):
        raise ValueError(f"secagg.{key} must be in {'(' if value == low == 0 else '['}{low:g}, {high:g}], got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class RoundParams:
    """What one round fixes from the settings and its cohort: degree, threshold, quantizer."""

    neighbors: int
    threshold: int
    quantizer: Quantizer


@dataclass(frozen=True)
class SecAggSettings:
    neighbors: int | None = None
    threshold: int | None = None
    bits: int = DEFAULT_BITS
    range: float | None = None
    clip: float | None = None
    stage_s: float = DEFAULT_STAGE_S

    @classmethod
    def from_json(cls, obj: object, *, cohort: int, dp_clip: float | None) -> SecAggSettings:
        """Parse and check against the run: ``cohort`` the most volunteers a round selects,
        ``dp_clip`` the dp run's clip norm (None: no dp)."""
        if not isinstance(obj, dict):
            raise ValueError('secagg must be an object like {"clip": 1.0} (or null)')
        unknown = obj.keys() - set(_KEYS)
        if unknown:
            raise ValueError(f"secagg: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(_KEYS)}")
        settings = cls(
            neighbors=_number(obj, "neighbors", integer=True, low=1, high=100_000),
            threshold=_number(obj, "threshold", integer=True, low=1, high=100_000),
            bits=_number(obj, "bits", integer=True, low=1, high=24) or DEFAULT_BITS,
            range=_number(obj, "range", low=0, high=1e6),
            clip=_number(obj, "clip", low=0, high=1e6),
            stage_s=_number(obj, "stage_s", low=0.1, high=3_600) or DEFAULT_STAGE_S,
        )
        if dp_clip is None and settings.clip is None:
            raise ValueError("secagg.clip is required without dp: each volunteer clips its update to it before quantizing,"
                             " which bounds every coordinate so that the sum cannot wrap")
        if dp_clip is not None and settings.clip is not None:
            raise ValueError("secagg.clip cannot be set in a dp run: volunteers clip to dp.clip, the norm the noise is calibrated to")
        if not 2 <= cohort <= MAX_COHORT:
            raise ValueError(f"secagg needs rounds of 2 to {MAX_COHORT} volunteers (every party builds the n x n"
                             f" neighbour graph); this run selects up to {cohort}")
        k = min(settings.neighbors, cohort - 1) if settings.neighbors is not None else None
        if settings.threshold is not None:
            if k is not None and settings.threshold > k:
                raise ValueError(f"secagg.threshold {settings.threshold} exceeds the {k} neighbours each volunteer has"
                                 " (neighbors, capped at the cohort minus one)")
            if cohort < settings.threshold + 1:
                raise ValueError(f"secagg.threshold {settings.threshold} needs a cohort of at least {settings.threshold + 1};"
                                 f" this run selects at most {cohort}")
        try:
            modulus_bits(settings.bits, cohort)
        except ValueError as exc:
            raise ValueError(f"secagg.bits: {exc}") from None
        return settings

    def to_json(self) -> dict:
        return {key: getattr(self, key) for key in _KEYS}

    def for_round(self, n: int, size: int, clip: float, dp: bool) -> RoundParams:
        """The degree, threshold and quantizer of a round of ``n`` volunteers on a model of
        ``size``; ``ValueError`` if the cohort is too small for the threshold.

        In a dp run the volunteers clip to a little less than ``clip``: rounding to a level
        moves each coordinate by less than one step, so the quantized update's norm stays
        within ``clip``, the sensitivity the noise assumes, though the server cannot re-clip.
        """
        k = min(self.neighbors if self.neighbors is not None else default_neighbors(n), n - 1)
        t = self.threshold if self.threshold is not None else k // 2 + 1
        if t > k:
            raise ValueError(f"a cohort of {n} gives each volunteer {k} neighbours, fewer than the threshold {t}")
        bound = self.range if self.range is not None else RANGE_FACTOR * clip / math.sqrt(size)
        levels = (1 << self.bits) - 1
        own = clip
        if dp:
            own = clip - 2 * bound / levels * math.sqrt(size)
            if own <= 0:
                raise ValueError(f"secagg.range {bound:g} is too coarse for {self.bits} bits: the rounding alone may exceed dp.clip")
        return RoundParams(k, t, Quantizer.for_cohort(own, self.bits, n, bound=bound))
