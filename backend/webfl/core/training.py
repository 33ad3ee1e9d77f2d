"""Local training: minibatch SGD on a volunteer's own examples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .models import MLP

__all__ = ["BOUNDS", "TrainConfig", "TrainResult", "describe_bounds", "in_bounds", "local_train"]

#: ``progress(epoch, batch, batches_per_epoch, loss)``, called after every batch.
Progress = Callable[[int, int, int, float], None]


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


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    #: FedProx (Li et al. 2020): adds ``prox_mu * (w - w_global)`` to every gradient.
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        for name, (lo, hi, closed) in BOUNDS.items():
            if not in_bounds(getattr(self, name), lo, hi, closed):
                raise ValueError(f"{name} must be in {describe_bounds(lo, hi, closed)}")

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
) -> TrainResult:
    """``config.epochs`` passes of shuffled minibatch SGD from ``params`` (not modified)."""
    if x.shape[0] == 0:
        raise ValueError("no local examples to train on")
    rng = np.random.default_rng(config.seed)
    w = params.astype(np.float32, copy=True)
    lr = np.float32(config.lr)
    mu = np.float32(config.prox_mu)
    w_global = params.astype(np.float32, copy=True) if mu else None
    n = x.shape[0]
    batches = -(-n // config.batch_size)
    epoch_loss = 0.0
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        epoch_loss = 0.0
        for b in range(batches):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            loss, grad = model.loss_and_grad(w, x[idx], y[idx])
            if w_global is not None:
                grad = grad + mu * (w - w_global)
            w -= lr * grad
            epoch_loss += loss * len(idx)
            if progress is not None:
                progress(epoch, b, batches, loss)
    _, accuracy = model.evaluate(w, x, y)
    return TrainResult(w, n, epoch_loss / n, accuracy)
