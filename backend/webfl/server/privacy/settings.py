"""The ``"dp"`` run setting, parsed once into a typed, frozen ``DPSettings``.

    "dp": {"noise_multiplier": z, "clip": C | "adaptive", "delta": d, "max_epsilon": E,
           "sampling": "none" | "poisson", "population": N, "accountant": "rdp" | "pld",
           "initial_clip": C0, "target_quantile": g, "clip_lr": eta, "count_noise": s}

Defaults: ``delta`` 1e-5; ``max_epsilon`` none (no cap); ``sampling`` ``"none"``;
``accountant`` ``"rdp"``. With ``"clip": "adaptive"`` (Andrew et al. 2021's defaults):
``initial_clip`` 0.1, ``target_quantile`` 0.5, ``clip_lr`` 0.2, ``count_noise``
``expected_cohort / 20``. ``noise_multiplier`` and ``clip`` are required.

Every error is a ``ValueError`` naming the field (the admin API answers 400 with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ...core.privacy import AdaptiveClip, DPSum, Mechanism, split_noise

__all__ = ["AccountantKind", "DPSettings", "Sampling"]

DEFAULT_DELTA = 1e-5
DEFAULT_INITIAL_CLIP = 0.1
DEFAULT_TARGET_QUANTILE = 0.5
DEFAULT_CLIP_LR = 0.2
#: Andrew et al.'s count noise: ``expected_cohort / COUNT_NOISE_DIVISOR``.
COUNT_NOISE_DIVISOR = 20
_ADAPTIVE_KEYS = ("initial_clip", "target_quantile", "clip_lr", "count_noise")
_KEYS = ("noise_multiplier", "clip", "delta", "max_epsilon", "sampling", "population", "accountant", *_ADAPTIVE_KEYS)


class Sampling(str, Enum):
    #: No amplification: volunteers choose when to come, so nothing is random about who is in a round.
    NONE = "none"
    #: The engine selects each ready volunteer independently with q = expected_cohort / population.
    POISSON = "poisson"


class AccountantKind(str, Enum):
    RDP = "rdp"
    PLD = "pld"


def _number(obj: dict, key: str, *, default: float | None = None, required: bool = False, low: float = -math.inf,
            low_open: bool = False, high: float = math.inf, high_open: bool = False) -> float | None:
    """``obj[key]`` checked; null or absent is ``default`` (an error if ``required``)."""
    value = obj.get(key)
    if value is None:
        value = default
    if value is None:
        if required:
            raise ValueError(f"dp.{key} must be a finite number, got null")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"dp.{key} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"dp.{key} must be in {interval}, got {value!r}")
    return float(value)


def _choice(obj: dict, key: str, enum: type[Enum], default: Enum) -> Any:
    value = obj.get(key, default.value)
    try:
        return enum(value)
    except ValueError:
        options = " | ".join(repr(e.value) for e in enum)
        raise ValueError(f"dp.{key} must be {options}, got {value!r}") from None


@dataclass(frozen=True)
class DPSettings:
    """A run's differential-privacy settings; see the module docstring for the JSON."""

    noise_multiplier: float
    expected_cohort: int  # clients_per_round (sync) or buffer_size (FedBuff): the divisor m
    clip: float | None  # None: adaptive, see ``adaptive``
    adaptive: AdaptiveClip | None = None  # the initial clip and the knobs, when adaptive
    delta: float = DEFAULT_DELTA
    max_epsilon: float | None = None
    sampling: Sampling = Sampling.NONE
    population: int | None = None
    accountant: AccountantKind = AccountantKind.RDP

    @classmethod
    def from_json(cls, obj: object, *, expected_cohort: int) -> DPSettings:
        if not isinstance(obj, dict):
            raise ValueError(f"dp must be an object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_KEYS))
        if unknown:
            raise ValueError(f"dp: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(_KEYS)}")
        if not (isinstance(expected_cohort, int) and not isinstance(expected_cohort, bool) and expected_cohort >= 1):
            raise ValueError(f"the expected cohort size must be a positive integer, got {expected_cohort!r}")
        for key in ("noise_multiplier", "clip"):
            if key not in obj:
                raise ValueError(f"dp.{key} is required")
        z = _number(obj, "noise_multiplier", required=True, low=0.0)
        delta = _number(obj, "delta", default=DEFAULT_DELTA, low=0.0, low_open=True, high=1.0, high_open=True)
        max_epsilon = _number(obj, "max_epsilon", low=0.0, low_open=True)
        if max_epsilon is not None and z == 0:
            raise ValueError("dp.max_epsilon needs dp.noise_multiplier > 0: without noise epsilon is unbounded")
        sampling = _choice(obj, "sampling", Sampling, Sampling.NONE)
        accountant = _choice(obj, "accountant", AccountantKind, AccountantKind.RDP)
        population = obj.get("population")
        if sampling is Sampling.POISSON:
            if population is None:
                raise ValueError("dp.population is required with dp.sampling 'poisson' (q = expected cohort / population)")
            if isinstance(population, bool) or not isinstance(population, int) or population < expected_cohort:
                raise ValueError(f"dp.population must be an integer >= the expected cohort size {expected_cohort}, got {population!r}")
            if delta >= 1.0 / population:
                raise ValueError(f"dp.delta must be below 1/population ({1.0 / population:.3g}): a larger delta allows one volunteer's data to leak outright")
        elif population is not None:
            raise ValueError("dp.population is only used with dp.sampling 'poisson'")
        clip_value = obj["clip"]
        adaptive = None
        if clip_value == "adaptive":
            clip = None
            count_noise = _number(obj, "count_noise", default=expected_cohort / COUNT_NOISE_DIVISOR, low=0.0)
            adaptive = AdaptiveClip(
                clip=_number(obj, "initial_clip", default=DEFAULT_INITIAL_CLIP, low=0.0, low_open=True),
                target_quantile=_number(obj, "target_quantile", default=DEFAULT_TARGET_QUANTILE, low=0.0, high=1.0),
                clip_lr=_number(obj, "clip_lr", default=DEFAULT_CLIP_LR, low=0.0, low_open=True),
                count_noise=count_noise,
            )
            try:
                split_noise(z, count_noise)
            except ValueError as exc:
                raise ValueError(f"dp.{exc}") from None
        else:
            if isinstance(clip_value, str):
                raise ValueError(f"dp.clip must be a positive number or 'adaptive', got {clip_value!r}")
            clip = _number(obj, "clip", required=True, low=0.0, low_open=True)
            given = [k for k in _ADAPTIVE_KEYS if k in obj]
            if given:
                raise ValueError(f"dp.{given[0]} is only used with dp.clip 'adaptive'")
        return cls(z, expected_cohort, clip, adaptive, delta, max_epsilon, sampling, population, accountant)

    def to_json(self) -> dict:
        """The settings with every default filled in; ``from_json`` of it gives them back."""
        out: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "clip": "adaptive" if self.adaptive is not None else self.clip,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "sampling": self.sampling.value,
            "accountant": self.accountant.value,
        }
        if self.population is not None:
            out["population"] = self.population
        if self.adaptive is not None:
            a = self.adaptive
            out |= {"initial_clip": a.clip, "target_quantile": a.target_quantile, "clip_lr": a.clip_lr, "count_noise": a.count_noise}
        return out

    @property
    def sampling_rate(self) -> float | None:
        """Poisson's q, or ``None`` (no amplification)."""
        return None if self.population is None else self.expected_cohort / self.population

    @property
    def mechanism(self) -> Mechanism:
        """The round's Gaussian releases: what the accountant charges per committed round."""
        if self.adaptive is None:
            return Mechanism(self.noise_multiplier)
        return Mechanism(split_noise(self.noise_multiplier, self.adaptive.count_noise), 2.0 * self.adaptive.count_noise)

    def status(self, epsilon: float | None, clip: float) -> dict:
        """The status's ``run.privacy``: ``epsilon`` ``None`` means no finite guarantee."""
        return {
            "epsilon": epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip": clip,
            "adaptive": self.adaptive is not None,
            "sampling": self.sampling.value,
            "accountant": self.accountant.value,
        }

    def release(self, clip: float | None = None) -> DPSum:
        """The run's ``DPSum``; ``clip`` resumes adaptive clipping at a checkpointed norm."""
        if self.adaptive is None:
            return DPSum(clip=self.clip, noise_multiplier=self.noise_multiplier, expected_cohort=self.expected_cohort)  # type: ignore[arg-type]
        a = self.adaptive if clip is None else AdaptiveClip(clip, self.adaptive.target_quantile, self.adaptive.clip_lr, self.adaptive.count_noise)
        return DPSum(clip=a, noise_multiplier=self.noise_multiplier, expected_cohort=self.expected_cohort)
