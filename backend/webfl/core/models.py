"""Feed-forward classifiers on one flat float32 parameter vector.

Federated learning moves, averages and compresses whole parameter vectors, so a
model is a layout over a flat array: every layer's weights and bias are views
into it, and gradients are written into a vector of the same layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .kernels import Kernels, active, for_dtype

__all__ = ["MLP", "MODELS", "GradientSteps", "PlainWorkspace", "Workspace", "build_model", "he_uniform", "layout_views", "softmax"]


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
        return layout_views(self.layout, flat)

    def init(self, seed: int) -> np.ndarray:
        """He-uniform weights and zero biases, deterministic for ``seed``."""
        return he_uniform(self.layout, seed, lambda name: name.startswith("w"))

    def workspace(self, params: np.ndarray, kernels: Kernels | None = None) -> Workspace:
        """Buffers for in-place SGD on ``params`` (see :meth:`sgd_step`)."""
        return Workspace(self, params, kernels or active())

    def _forward(self, v: dict[str, np.ndarray], x: np.ndarray, acts: list[np.ndarray], kernels: Kernels) -> np.ndarray:
        """Logits of ``x``; hidden activations go into ``acts[1:]`` (``acts[0]`` is ``x``)."""
        depth = len(self.sizes) - 1
        acts[0] = x
        for i in range(depth):
            kernels.gemm(acts[i], v[f"w{i}"], acts[i + 1], bias=v[f"b{i}"], relu=i < depth - 1)
        return acts[-1]

    def _backward(
        self, v: dict[str, np.ndarray], acts: list[np.ndarray], dz: np.ndarray, dzs: list[np.ndarray],
        ones: np.ndarray, out: dict[str, np.ndarray], alpha: float, beta: float, kernels: Kernels,
    ) -> None:
        """``out = alpha * gradient + beta * out``, layer by layer from the top.

        ``out`` may be the parameters themselves (the SGD step, ``alpha=-lr, beta=1``):
        each layer's weights are read for the gradient below before they are updated.
        Biases are ``(1, n)`` rows in ``out``; ``ones`` is a ``(1, rows)`` row of ones.
        """
        for i in range(len(self.sizes) - 2, -1, -1):
            h = acts[i]
            if i:
                # The ReLU's derivative is the mask h > 0, folded into the product.
                kernels.gemm(dz, v[f"w{i}"], dzs[i - 1], trans_b=True, mask=h)
            kernels.gemm(h, dz, out[f"w{i}"], trans_a=True, alpha=alpha, beta=beta)
            # The bias gradient (column sums of dz) as a product too: in Pyodide a NumPy
            # sum along axis 0 costs ~9x a kernel call, three times a step.
            kernels.gemm(ones, dz, out[f"b{i}"], alpha=alpha, beta=beta)
            if i:
                dz = dzs[i - 1]

    def logits(self, params: np.ndarray, x: np.ndarray, kernels: Kernels | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=params.dtype)
        acts = [x, *_buffers(self.sizes[1:], len(x), params.dtype)]
        return self._forward(self.views(params), x, acts, for_dtype(kernels or active(), params.dtype))

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, kernels: Kernels | None = None
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy on ``(x, y)`` and its gradient as a flat vector."""
        kernels = for_dtype(kernels or active(), params.dtype)
        v = self.views(params)
        x = np.ascontiguousarray(x, dtype=params.dtype)
        acts = [x, *_buffers(self.sizes[1:], len(x), params.dtype)]
        dzs = _buffers(self.sizes[1:-1], len(x), params.dtype)
        loss, dz = _loss_and_delta(self._forward(v, x, acts, kernels), y)
        grad = np.empty_like(params)
        ones = np.ones((1, len(x)), params.dtype)
        self._backward(v, acts, dz, dzs, ones, _bias_rows(self.views(grad)), 1.0, 0.0, kernels)
        return loss, grad

    def sgd_step(self, ws: Workspace, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step on the batch ``(x, y)``, written into ``ws.params``; the batch's loss.

        The update is folded into the gradient's products: no gradient vector is made.
        """
        acts, dzs, ones = ws.buffers(len(x))
        loss, dz = _loss_and_delta(self._forward(ws.views, x, acts, ws.kernels), y)
        self._backward(ws.views, acts, dz, dzs, ones, ws.rows, -lr, 1.0, ws.kernels)
        return loss

    def evaluate(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch: int = 1000, kernels: Kernels | None = None
    ) -> tuple[float, float]:
        """Mean cross-entropy and accuracy, in batches to bound memory."""
        loss_sum, correct = 0.0, 0
        for start in range(0, x.shape[0], batch):
            z = self.logits(params, x[start : start + batch], kernels)
            yb = y[start : start + batch]
            probs = softmax(z)
            loss_sum += float(-np.log(probs[np.arange(len(yb)), yb] + 1e-12).sum())
            correct += int((z.argmax(axis=1) == yb).sum())
        n = max(x.shape[0], 1)
        return loss_sum / n, correct / n


Layout = tuple[tuple[str, tuple[int, ...]], ...]


def layout_views(layout: Layout, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Named, shaped views into the flat vector ``flat`` laid out as ``layout``.

    Sizes by ``math.prod``: ``np.prod`` costs ~20 us a call in Pyodide, and a CNN step
    takes these views twice.
    """
    size = sum(math.prod(shape) for _, shape in layout)
    if flat.shape != (size,):
        raise ValueError(f"expected {size} parameters, got shape {flat.shape}")
    out, offset = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = flat[offset : offset + n].reshape(shape)
        offset += n
    return out


def he_uniform(layout: Layout, seed: int, is_weight) -> np.ndarray:
    """A flat vector for ``layout``: He-uniform weights (fan-in = rows of each matrix) where
    ``is_weight(name)``, zeros elsewhere (biases); deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(sum(math.prod(shape) for _, shape in layout), dtype=np.float32)
    for name, view in layout_views(layout, flat).items():
        if is_weight(name):
            bound = np.sqrt(6.0 / view.shape[0])
            view[...] = rng.uniform(-bound, bound, size=view.shape)
    return flat


class Workspace:
    """In-place SGD state: views of one parameter vector and buffers per batch size.

    The buffers outlive the steps so a kernel can cache their addresses; an epoch uses at
    most two batch sizes (full batches and the last one).
    """

    def __init__(self, model: MLP, params: np.ndarray, kernels: Kernels) -> None:
        if params.dtype != np.float32 or not params.flags.c_contiguous:
            raise ValueError("SGD works in place on a C-contiguous float32 vector")
        self.model, self.params, self.kernels = model, params, kernels
        self.views = model.views(params)
        #: The views with biases as ``(1, n)`` rows, as ``MLP._backward`` writes them.
        self.rows = _bias_rows(self.views)
        self._buffers: dict[int, tuple[list[np.ndarray], list[np.ndarray], np.ndarray]] = {}

    def buffers(self, rows: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """``(activations, deltas, ones)`` for a batch of ``rows``; ``activations[0]`` holds the batch."""
        found = self._buffers.get(rows)
        if found is None:
            sizes = self.model.sizes
            found = self._buffers[rows] = (_buffers(sizes, rows), _buffers(sizes[1:-1], rows), np.ones((1, rows), np.float32))
        return found

    def batch(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of ``x`` copied into the batch's persistent slot (not a fresh array)."""
        slot = self.buffers(len(idx))[0][0]
        np.take(x, idx, axis=0, out=slot)
        return slot

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean loss and accuracy of the workspace's parameters, with its kernels."""
        return self.model.evaluate(self.params, x, y, kernels=self.kernels)


class PlainWorkspace:
    """The parameters a ``GradientSteps`` model updates in place, its batches and its kernels."""

    def __init__(self, model: GradientSteps, params: np.ndarray, kernels: Kernels) -> None:
        if params.dtype != np.float32 or not params.flags.c_contiguous:
            raise ValueError("SGD works in place on a C-contiguous float32 vector")
        self.model, self.params, self.kernels = model, params, kernels

    def batch(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return x[idx]

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        return self.model.evaluate(self.params, x, y)


class GradientSteps:
    """Local SGD for models without a fused update (the CNN, standardised models): the
    gradient from ``loss_and_grad`` (its products through the workspace's kernels), then
    the update, on the same in-place interface as ``MLP.workspace``/``MLP.sgd_step`` so
    ``training`` drives every model alike."""

    def workspace(self, params: np.ndarray, kernels: Kernels | None = None) -> PlainWorkspace:
        return PlainWorkspace(self, params, kernels or active())

    def sgd_step(self, ws: PlainWorkspace, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        loss, grad = self.loss_and_grad(ws.params, x, y, kernels=ws.kernels)
        ws.params -= np.float32(lr) * grad
        return loss


def _buffers(sizes: tuple[int, ...], rows: int, dtype=np.float32) -> list[np.ndarray]:
    """One ``(rows, size)`` buffer per layer size."""
    return [np.empty((rows, s), dtype) for s in sizes]


def _bias_rows(views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``views`` with each bias ``(n,)`` as a ``(1, n)`` row (still a view)."""
    return {name: view.reshape(1, -1) if view.ndim == 1 else view for name, view in views.items()}


def _loss_and_delta(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of logits ``z`` and its derivative with respect to ``z``."""
    probs = softmax(z)
    n = z.shape[0]
    rows = np.arange(n)
    # A sum and a division: np.mean's machinery costs ~5x as much in Pyodide.
    loss = -float(np.log(probs[rows, y] + 1e-12).sum()) / n
    probs[rows, y] -= 1.0
    probs /= n
    return loss, probs


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``z`` (n, classes), shifted by each row's max so exp cannot overflow."""
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
