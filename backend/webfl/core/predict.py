"""The model on the volunteer's device: predictions, and a personal fine-tune that stays there.

Both take a task's own model (``Task.build_model``), so a prediction sees the inputs
exactly as training does: raw tabular features standardised by the model itself
(``Standardised``), images scaled to [0, 1] (``Task.images``). The fine-tune is the
federated rounds' local training (``training.local_train``) with the task's defaults,
not a second copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluation import EvalSums, evaluation_sums
from .models import softmax
from .tasks import Task
from .training import local_train

__all__ = ["Personalised", "Predictions", "personalise", "predict"]


@dataclass(frozen=True)
class Predictions:
    """Class probabilities of every input row; ``predicted`` is each row's most likely class."""

    probabilities: np.ndarray  # (n, classes) float32, rows sum to 1

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def to_dict(self, classes: tuple[str, ...], limit: int) -> dict:
        """The first ``limit`` rows for a page: class names, each row's class and probabilities."""
        shown = self.probabilities[:limit]
        return {
            "classes": list(classes),
            "rows": int(self.probabilities.shape[0]),
            "predicted": shown.argmax(axis=1).tolist(),
            "probabilities": np.round(shown.astype(np.float64), 4).tolist(),
        }


def predict(model, params: np.ndarray, x: np.ndarray, batch: int = 500) -> Predictions:
    """Softmax probabilities of ``model`` (any with ``logits``) on model inputs ``x``, in batches."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("nothing to predict on: no input rows")
    if params.shape != (model.size,):
        raise ValueError(f"the model needs {model.size} parameters, got {params.shape}")
    out = np.empty((x.shape[0], model.num_classes), dtype=np.float32)
    for start in range(0, x.shape[0], batch):
        out[start : start + batch] = softmax(model.logits(params, x[start : start + batch]))
    return Predictions(out)


@dataclass(frozen=True)
class Personalised:
    """A fine-tuned copy of a global model and both models' sums on the same holdout."""

    params: np.ndarray
    base_version: int
    global_sums: EvalSums
    personal_sums: EvalSums

    def to_dict(self) -> dict:
        return {
            "base_version": self.base_version,
            "holdout": self.global_sums.examples,
            "global_accuracy": self.global_sums.accuracy,
            "personal_accuracy": self.personal_sums.accuracy,
        }


def personalise(
    task: Task, params: np.ndarray, base_version: int, train: tuple[np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray], seed: int,
) -> Personalised:
    """Fine-tune the global ``params`` on ``train`` with the task's training defaults; compare on ``holdout``.

    ``params`` is not modified. Without holdout examples there is nothing to compare on,
    which is a ValueError the page shows.
    """
    (x, y), (hx, hy) = train, holdout
    if hx.shape[0] == 0:
        raise ValueError("personalising needs a holdout to compare the models on, and this data has none")
    model = task.build_model()
    result = local_train(model, params, x, y, task.training.config(seed))
    if not np.isfinite(result.params).all():
        raise ValueError("the fine-tune diverged (non-finite weights); the global model is kept")
    return Personalised(
        result.params, base_version,
        evaluation_sums(model, params, hx, hy, task.num_classes),
        evaluation_sums(model, result.params, hx, hy, task.num_classes),
    )
