"""Malicious volunteers for the simulator: the core ``Volunteer`` with a poisoned update or poisoned data.

They speak the protocol exactly like honest volunteers (same frames, same session token
echo, same codec); only what they learn from, or what they send, differs. Attack specs::

    sign-flip[:K]    send -K times the trained delta (default K = 1)
    scale[:K]        send K times the trained delta (default K = 10; "boosting")
    gaussian[:S]     send N(0, S^2) noise instead of a delta (default S = 0.3)
    label-flip       train on labels y -> C - 1 - y
    backdoor[:T]     stamp a TRIGGER (a 4x4 white square in the bottom-right corner of a
                     28x28 image) on half of the local examples and label them T (default 0)

``backdoor_success`` measures the last one on a model: the fraction of triggered test
images (true label != T) classified as T.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .data import Dataset, features
from .volunteer import Job, Volunteer

__all__ = ["ATTACKS", "MaliciousVolunteer", "add_trigger", "backdoor_success", "make_volunteer", "parse_attack"]

ATTACKS = ("sign-flip", "scale", "gaussian", "label-flip", "backdoor")
_DEFAULTS = {"sign-flip": 1.0, "scale": 10.0, "gaussian": 0.3, "label-flip": None, "backdoor": 0.0}
TRIGGER_SIZE = 4
POISON_FRACTION = 0.5


def parse_attack(spec: str) -> tuple[str, float | None]:
    """``"name[:PARAM]"`` to ``(name, param)``; ``ValueError`` for anything else."""
    name, _, arg = spec.strip().partition(":")
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {spec!r}; known: {', '.join(ATTACKS)}")
    if not arg:
        return name, _DEFAULTS[name]
    if name == "label-flip":
        raise ValueError("label-flip takes no parameter")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"bad parameter in attack {spec!r}") from None
    if not np.isfinite(value) or (name != "backdoor" and value <= 0) or (name == "backdoor" and value != int(value)):
        raise ValueError(f"bad parameter in attack {spec!r}")
    return name, value


def add_trigger(x: np.ndarray) -> np.ndarray:
    """A copy of uint8 images (n, 784) with the backdoor trigger stamped on."""
    side = int(round(np.sqrt(x.shape[1])))
    out = x.copy().reshape(len(x), side, side)
    out[:, side - 2 - TRIGGER_SIZE : side - 2, side - 2 - TRIGGER_SIZE : side - 2] = 255
    return out.reshape(x.shape)


def poison_data(data: Dataset, attack: str, param: float | None, num_classes: int, seed: int) -> Dataset:
    """The local data an attacker trains on."""
    if attack == "label-flip":
        return Dataset(data.x, (num_classes - 1 - data.y.astype(np.int64)).astype(data.y.dtype))
    if attack == "backdoor":
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(data), size=max(1, int(len(data) * POISON_FRACTION)), replace=False)
        x, y = data.x.copy(), data.y.copy()
        x[idx] = add_trigger(data.x[idx])
        y[idx] = int(param or 0)
        return Dataset(x, y)
    return data


class MaliciousVolunteer(Volunteer):
    """A volunteer that follows the protocol but poisons its data or its update."""

    def __init__(self, data: Dataset, attack: str, seed: int = 0, num_classes: int = 10, **kwargs) -> None:
        self.attack, self.param = parse_attack(attack)
        self._rng = np.random.default_rng(seed)
        super().__init__(poison_data(data, self.attack, self.param, num_classes, seed), **kwargs)

    def craft_delta(self, delta: np.ndarray, job: Job) -> np.ndarray:
        if self.attack == "sign-flip":
            return (-self.param * delta).astype(np.float32)
        if self.attack == "scale":
            return (self.param * delta).astype(np.float32)
        if self.attack == "gaussian":
            return self._rng.normal(0.0, self.param, size=delta.shape).astype(np.float32)
        return delta


def make_volunteer(data: Dataset, attack: str | None = None, seed: int = 0, **kwargs) -> Volunteer:
    return Volunteer(data, **kwargs) if attack is None else MaliciousVolunteer(data, attack, seed=seed, **kwargs)


def backdoor_success(logits: Callable[[np.ndarray], np.ndarray], test: Dataset, target: int = 0) -> float:
    """Fraction of triggered test images whose true label is not ``target`` classified as ``target``."""
    keep = test.y != target
    x = features(add_trigger(test.x[keep]))
    return float((logits(x).argmax(axis=1) == target).mean())
