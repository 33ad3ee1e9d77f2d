"""Feed-forward classifiers on one flat float32 parameter vector.

Federated learning moves, averages and compresses whole parameter vectors, so a
model is a layout over a flat array: every layer's weights and bias are views
into it, and gradients are written into a vector of the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["MLP", "MODELS", "build_model"]


@dataclass(frozen=True)
class MLP:
    """A multilayer perceptron with ReLU hidden layers and a softmax output.

    ``MLP((784, 10))`` is softmax regression; ``MLP((784, 200, 200, 10))`` is the
    "2NN" of McMahan et al. 2017.
    """

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"an MLP needs at least two positive layer sizes, got {self.sizes}")

    @cached_property
    def layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Names and shapes of the parameter tensors, in storage order."""
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            shapes += [(f"w{i}", (fan_in, fan_out)), (f"b{i}", (fan_out,))]
        return tuple(shapes)

    @cached_property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.layout)

    @property
    def num_classes(self) -> int:
        return self.sizes[-1]

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named, shaped views into ``flat`` (writes go through to it)."""
        if flat.shape != (self.size,):
            raise ValueError(f"expected {self.size} parameters, got shape {flat.shape}")
        out, offset = {}, 0
        for name, shape in self.layout:
            n = int(np.prod(shape))
            out[name] = flat[offset : offset + n].reshape(shape)
            offset += n
        return out

    def init(self, seed: int) -> np.ndarray:
        """He-uniform weights and zero biases, deterministic for ``seed``."""
        rng = np.random.default_rng(seed)
        flat = np.zeros(self.size, dtype=np.float32)
        for name, view in self.views(flat).items():
            if name.startswith("w"):
                bound = np.sqrt(6.0 / view.shape[0])
                view[...] = rng.uniform(-bound, bound, size=view.shape)
        return flat

    def _activations(self, params: np.ndarray, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        v = self.views(params)
        depth = len(self.sizes) - 1
        acts = [x]
        for i in range(depth):
            z = acts[-1] @ v[f"w{i}"] + v[f"b{i}"]
            if i < depth - 1:
                np.maximum(z, 0, out=z)
                acts.append(z)
            else:
                return acts, z
        raise AssertionError("unreachable")

    def logits(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._activations(params, x)[1]

    def loss_and_grad(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy on ``(x, y)`` and its gradient as a flat vector."""
        acts, z = self._activations(params, x)
        probs = _softmax(z)
        n = x.shape[0]
        loss = float(-np.mean(np.log(probs[np.arange(n), y] + 1e-12)))
        dz = probs
        dz[np.arange(n), y] -= 1.0
        dz /= n
        grad = np.empty_like(params)
        g, v = self.views(grad), self.views(params)
        for i in range(len(self.sizes) - 2, -1, -1):
            h = acts[i]
            # A contiguous transpose makes this matmul ~1.8x faster in Pyodide (no BLAS).
            g[f"w{i}"][...] = np.ascontiguousarray(h.T) @ dz
            g[f"b{i}"][...] = dz.sum(axis=0)
            if i:
                dz = (dz @ v[f"w{i}"].T) * (h > 0)
        return loss, grad

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> tuple[float, float]:
        """Mean cross-entropy and accuracy, in batches to bound memory."""
        loss_sum, correct = 0.0, 0
        for start in range(0, x.shape[0], batch):
            z = self.logits(params, x[start : start + batch])
            yb = y[start : start + batch]
            probs = _softmax(z)
            loss_sum += float(-np.log(probs[np.arange(len(yb)), yb] + 1e-12).sum())
            correct += int((z.argmax(axis=1) == yb).sum())
        n = max(x.shape[0], 1)
        return loss_sum / n, correct / n


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


MODELS: dict[str, tuple[int, ...]] = {
    "softmax": (784, 10),
    "2nn": (784, 200, 200, 10),
}


def build_model(name: str, num_features: int = 784, num_classes: int = 10) -> MLP:
    """The named architecture for a task's input and output sizes."""
    try:
        hidden = MODELS[name][1:-1]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return MLP((num_features, *hidden, num_classes))
