"""Server optimizers: how the aggregated delta moves the global model (Reddi et al. 2021).

The aggregate of a round is a pseudo-gradient ``d`` (the mean of the volunteers'
``local - global``). A server optimizer turns it into the step the global model takes:

* ``fedavg[:lr=1]``: ``x += lr * d`` (plain FedAvg at ``lr=1``).
* ``fedavgm[:lr=1,momentum=0.9]``: ``m = momentum * m + d``; ``x += lr * m``.
* ``fedadam[:lr=0.01,b1=0.9,b2=0.99,tau=1e-3]``: ``m = b1 m + (1-b1) d``;
  ``v = b2 v + (1-b2) d^2``; ``x += lr * m / (sqrt(v) + tau)``.
* ``fedyogi[...]``: as FedAdam but ``v = v - (1-b2) d^2 sign(v - d^2)``.

As in Reddi et al.'s Algorithm 2 there is no bias correction and ``v`` starts at
``tau^2``. State is O(model): at most two float32 vectors, updated in place. It
round-trips through ``state()`` / ``load_state()`` as one float32 array, so the server
can checkpoint it in the same transaction as the model.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .specs import Params, SpecError, parse_spec

__all__ = ["FedAdam", "FedAvg", "FedAvgM", "FedYogi", "ServerOptimizer", "SERVER_OPTIMIZERS", "get_server_opt"]

GRAMMAR = "server_opt spec: fedavg[:lr=X] | fedavgm[:lr=X,momentum=M] | fedadam[:lr=X,b1=B,b2=B,tau=T] | fedyogi[:...]"
WHAT = "server optimizer spec"

#: Each parameter's range: (low, high, low excluded, high excluded).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0.0, 100.0, True, False),
    "momentum": (0.0, 1.0, False, True),
    "b1": (0.0, 1.0, False, True),
    "b2": (0.0, 1.0, False, True),
    "tau": (0.0, 1.0, True, False),
}


class ServerOptimizer:
    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]]
    #: How many model-sized state vectors the optimizer keeps.
    slots: ClassVar[int] = 0

    def __init__(self, **params: float) -> None:
        unknown = params.keys() - self.defaults.keys()
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; {GRAMMAR}")
        self.params = {**self.defaults, **{k: float(v) for k, v in params.items()}}
        for key, value in self.params.items():
            lo, hi, open_lo, open_hi = RANGES[key]
            if not ((value > lo if open_lo else value >= lo) and (value < hi if open_hi else value <= hi)):
                raise ValueError(f"{self.name}: {key} must be in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}")
        self._state: np.ndarray | None = None  # (slots, size) float32
        self.steps = 0

    @property
    def spec(self) -> str:
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in self.params.items())

    def _init_state(self, size: int) -> np.ndarray:
        return np.zeros((self.slots, size), np.float32)

    def step(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new global model after applying the round's aggregate ``delta``."""
        d = np.asarray(delta, np.float32)
        if d.shape != params.shape:
            raise ValueError(f"delta has shape {d.shape}, the model {params.shape}")
        if self._state is None or self._state.shape[1] != d.size:
            self._state = self._init_state(d.size)
        self.steps += 1
        return (params + self._direction(d)).astype(np.float32, copy=False)

    def _direction(self, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- checkpointing ----------------------------------------------------------

    def state(self) -> np.ndarray | None:
        """The optimizer's vectors as one float32 array (None if stateless or unused)."""
        return None if self.slots == 0 or self._state is None else self._state.reshape(-1)

    def load_state(self, flat: np.ndarray | None, size: int, steps: int = 0) -> None:
        self.steps = steps
        if self.slots == 0 or flat is None:
            self._state = None
            return
        flat = np.asarray(flat, np.float32)
        if flat.size != self.slots * size:
            raise ValueError(f"{self.name}: state of {flat.size} values, expected {self.slots * size}")
        self._state = flat.reshape(self.slots, size).copy()


class FedAvg(ServerOptimizer):
    name, defaults = "fedavg", {"lr": 1.0}

    def _direction(self, d: np.ndarray) -> np.ndarray:
        return d * np.float32(self.params["lr"])


class FedAvgM(ServerOptimizer):
    name, defaults, slots = "fedavgm", {"lr": 1.0, "momentum": 0.9}, 1

    def _direction(self, d: np.ndarray) -> np.ndarray:
        m = self._state[0]
        m *= np.float32(self.params["momentum"])
        m += d
        return m * np.float32(self.params["lr"])


class FedAdam(ServerOptimizer):
    name, defaults, slots = "fedadam", {"lr": 0.01, "b1": 0.9, "b2": 0.99, "tau": 1e-3}, 2

    def _init_state(self, size: int) -> np.ndarray:
        state = np.zeros((2, size), np.float32)
        state[1] = self.params["tau"] ** 2
        return state

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        b2 = np.float32(self.params["b2"])
        v *= b2
        v += (1 - b2) * d2

    def _direction(self, d: np.ndarray) -> np.ndarray:
        m, v = self._state
        b1 = np.float32(self.params["b1"])
        m *= b1
        m += (1 - b1) * d
        self._second_moment(v, d * d)
        return np.float32(self.params["lr"]) * m / (np.sqrt(v) + np.float32(self.params["tau"]))


class FedYogi(FedAdam):
    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        v -= np.float32(1 - self.params["b2"]) * d2 * np.sign(v - d2)


SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {c.name: c for c in (FedAvg, FedAvgM, FedAdam, FedYogi)}


def get_server_opt(spec: str) -> ServerOptimizer:
    """Parse ``name[:k=v,...]``; ``SpecError`` (a ``ValueError``) names the bad part and the grammar."""
    parsed = parse_spec(spec, what=WHAT, grammar=GRAMMAR)
    cls = SERVER_OPTIMIZERS.get(parsed.name)
    if cls is None:
        raise SpecError(WHAT, spec, parsed.name, f"unknown server optimizer; known: {', '.join(SERVER_OPTIMIZERS)}", GRAMMAR)
    p = Params(parsed, spec, what=WHAT, grammar=GRAMMAR)
    values = {}
    for key in cls.defaults:
        lo, hi, open_lo, open_hi = RANGES[key]
        value = p.number(key, lo, hi, open_lo=open_lo, open_hi=open_hi)
        if value is not None:
            values[key] = value
    p.done()
    return cls(**values)
