"""Federated evaluation: sums a volunteer reports about a model on its own holdout.

In federated learning the server holds no data, so a model is evaluated where the data
is: each volunteer keeps a seeded holdout of its examples (never trained on), computes
:class:`EvalSums` there and sends only the sums. Sums add up, so the server's
example-weighted accuracy and loss over all volunteers is exactly what one evaluation
over the pooled holdouts would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .models import softmax

__all__ = ["MAX_PER_CLASS", "EvalSums", "evaluation_sums", "holdout_split"]

#: Per-class counts are reported for tasks with at most this many classes.
MAX_PER_CLASS = 20


@dataclass(frozen=True)
class EvalSums:
    """``examples``, summed cross-entropy, ``correct``; per class (<= 20 classes) examples and correct."""

    examples: int
    loss_sum: float
    correct: int
    class_examples: tuple[int, ...] = field(default=())
    class_correct: tuple[int, ...] = field(default=())

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.examples if self.examples else 0.0

    def per_class_accuracy(self) -> list[float | None]:
        """Accuracy per class; ``None`` for a class with no holdout example."""
        return [c / e if e else None for e, c in zip(self.class_examples, self.class_correct)]

    def __add__(self, other: EvalSums) -> EvalSums:
        if len(self.class_examples) != len(other.class_examples):
            raise ValueError("cannot add evaluation sums of different class counts")
        return EvalSums(
            self.examples + other.examples,
            self.loss_sum + other.loss_sum,
            self.correct + other.correct,
            tuple(a + b for a, b in zip(self.class_examples, other.class_examples)),
            tuple(a + b for a, b in zip(self.class_correct, other.class_correct)),
        )

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "class_examples": list(self.class_examples),
            "class_correct": list(self.class_correct),
        }

    @classmethod
    def from_dict(cls, d: object, num_classes: int) -> EvalSums:
        """Sums as a volunteer reported them, checked: a ValueError says what does not add up."""
        if not isinstance(d, dict) or set(d) != {"examples", "loss_sum", "correct", "class_examples", "class_correct"}:
            raise ValueError("evaluation sums need exactly examples, loss_sum, correct, class_examples, class_correct")
        examples, correct, loss_sum = d["examples"], d["correct"], d["loss_sum"]
        if not _count(examples) or not _count(correct) or correct > examples:
            raise ValueError("examples and correct must be integers with 0 <= correct <= examples")
        if isinstance(loss_sum, bool) or not isinstance(loss_sum, (int, float)) or not (0 <= loss_sum < float("inf")):
            raise ValueError("loss_sum must be a finite number >= 0")
        per_class = num_classes if num_classes <= MAX_PER_CLASS else 0
        ce, cc = d["class_examples"], d["class_correct"]
        if not isinstance(ce, list) or not isinstance(cc, list) or len(ce) != per_class or len(cc) != per_class:
            raise ValueError(f"class_examples and class_correct must be lists of {per_class} counts")
        if not all(_count(e) and _count(c) and c <= e for e, c in zip(ce, cc)):
            raise ValueError("per-class counts must be integers with 0 <= correct <= examples")
        if per_class and (sum(ce) != examples or sum(cc) != correct):
            raise ValueError("per-class counts do not add up to examples and correct")
        return cls(examples, float(loss_sum), correct, tuple(ce), tuple(cc))


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def evaluation_sums(model, params: np.ndarray, x: np.ndarray, y: np.ndarray, num_classes: int, batch: int = 500) -> EvalSums:
    """:class:`EvalSums` of ``model`` (any with ``logits``) on ``(x, y)``, in batches to bound memory."""
    loss_sum, correct = 0.0, 0
    per_class = num_classes <= MAX_PER_CLASS
    class_examples = np.zeros(num_classes if per_class else 0, dtype=np.int64)
    class_correct = np.zeros_like(class_examples)
    for start in range(0, x.shape[0], batch):
        # intp: bincount refuses int64 on wasm32 (Pyodide), where intp is 32 bits.
        yb = np.asarray(y[start : start + batch], dtype=np.intp)
        z = model.logits(params, x[start : start + batch])
        probs = softmax(z)
        loss_sum += float(-np.log(probs[np.arange(len(yb)), yb] + 1e-12).sum())
        hit = z.argmax(axis=1) == yb
        correct += int(hit.sum())
        if per_class:
            class_examples += np.bincount(yb, minlength=num_classes)
            class_correct += np.bincount(yb[hit], minlength=num_classes)
    return EvalSums(int(x.shape[0]), loss_sum, correct, tuple(class_examples.tolist()), tuple(class_correct.tolist()))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, holdout)`` sorted indices of ``n`` examples; the holdout is ``round(fraction * n)`` of them.

    A volunteer with at least two examples keeps one of each kind whenever ``fraction > 0``,
    so it can both train and evaluate. The same seed gives the same split every session.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])
