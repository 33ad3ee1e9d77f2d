"""Local training: minibatch SGD on a volunteer's own examples."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

from .kernels import Kernels
from .models import MLP

__all__ = ["BOUNDS", "Step", "TrainConfig", "TrainResult", "check_bounds", "describe_bounds", "in_bounds", "local_train", "run_steps", "train_steps"]

#: ``progress(epoch, batch, batches_per_epoch, loss)``, called after every batch.
Progress = Callable[[int, int, int, float], None]
#: What :func:`train_steps` yields after every batch: ``(epoch, batch, batches_per_epoch, loss)``.
Step = tuple[int, int, int, float]
R = TypeVar("R")


#: The accepted range of each training setting: ``(low, high, low end included)``. The
#: server checks a run's settings against these, so a task never carries one a volunteer refuses.
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "epochs": (1, 100, True),
    "batch_size": (1, 10_000, True),
    "lr": (0.0, 10.0, False),
    "prox_mu": (0.0, 100.0, True),
}


def in_bounds(value: float, lo: float, hi: float, closed: bool) -> bool:
    """``lo <= value <= hi`` (``lo < value`` unless ``closed``); False for NaN."""
    return (lo <= value if closed else lo < value) and value <= hi


def describe_bounds(lo: float, hi: float, closed: bool) -> str:
    return f"{'[' if closed else '('}{lo:g}, {hi:g}]"


def check_bounds(name: str, value: float, bounds: tuple[float, float, bool]) -> None:
    """A ValueError naming ``name`` unless ``value`` is within ``bounds`` (a :data:`BOUNDS` entry's shape)."""
    lo, hi, closed = bounds
    if not in_bounds(value, lo, hi, closed):
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}" if closed else f"{name} must be in {describe_bounds(lo, hi, closed)}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    #: FedProx (Li et al. 2020): adds ``prox_mu * (w - w_global)`` to every gradient.
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        for name, bounds in BOUNDS.items():
            check_bounds(name, getattr(self, name), bounds)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(int(d["epochs"]), int(d["batch_size"]), float(d["lr"]), int(d["seed"]), float(d.get("prox_mu", 0.0)))


@dataclass(frozen=True)
class TrainResult:
    params: np.ndarray
    num_examples: int
    loss: float  # mean training loss over the last epoch
    accuracy: float  # training accuracy of the returned parameters


def local_train(
    model: MLP,
    params: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
    kernels: Kernels | None = None,
) -> TrainResult:
    """``config.epochs`` passes of shuffled minibatch SGD from ``params`` (not modified)."""
    return run_steps(train_steps(model, params, x, y, config, kernels), progress)


def run_steps(steps: Generator[Step, None, R], progress: Progress | None = None) -> R:
    """Drive a step generator to its end, reporting each step; its return value."""
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value
        if progress is not None:
            progress(*step)


def train_steps(
    model: MLP,
    params: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    kernels: Kernels | None = None,
) -> Generator[Step, None, TrainResult]:
    """:func:`local_train` one batch at a time: yields after each, returns the result.

    The browser's worker runs one step per turn of its event loop, so a pause or a rest
    between batches (the CPU-use setting) takes effect within a batch. Each step updates
    the weights in place from within the gradient's products (:meth:`MLP.sgd_step`);
    ``kernels`` defaults to the active backend.
    """
    if x.shape[0] == 0:
        raise ValueError("no local examples to train on")
    rng = np.random.default_rng(config.seed)
    w = params.astype(np.float32, copy=True)
    ws = model.workspace(w, kernels)
    x = np.ascontiguousarray(x, dtype=np.float32)
    mu = np.float32(config.prox_mu)
    # FedProx's term lr * mu * (w - w_global) is taken at the step's starting w.
    prox = np.float32(config.lr) * mu
    w_global = params.astype(np.float32, copy=True) if mu else None
    n = x.shape[0]
    batches = -(-n // config.batch_size)
    epoch_loss = 0.0
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        epoch_loss = 0.0
        for b in range(batches):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            pull = None if w_global is None else prox * (w - w_global)
            loss = model.sgd_step(ws, ws.batch(x, idx), y[idx], config.lr)
            if pull is not None:
                w -= pull
            epoch_loss += loss * len(idx)
            yield epoch, b, batches, loss
    _, accuracy = ws.evaluate(x, y)
    return TrainResult(w, n, epoch_loss / n, accuracy)
