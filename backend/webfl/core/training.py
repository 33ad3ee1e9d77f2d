"""Local training: minibatch SGD on a volunteer's own examples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .models import MLP

__all__ = ["TrainConfig", "TrainResult", "local_train"]

#: ``progress(epoch, batch, batches_per_epoch, loss)``, called after every batch.
Progress = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    #: FedProx (Li et al. 2020): adds ``prox_mu * (w - w_global)`` to every gradient.
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if not (1 <= self.epochs <= 100):
            raise ValueError("epochs must be in 1..100")
        if not (1 <= self.batch_size <= 10_000):
            raise ValueError("batch_size must be in 1..10000")
        if not (0.0 < self.lr <= 10.0):
            raise ValueError("lr must be in (0, 10]")
        if not (0.0 <= self.prox_mu <= 100.0):
            raise ValueError("prox_mu must be in [0, 100]")

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
