"""A small convolutional classifier on one flat float32 parameter vector.

Same interface as :class:`webfl.core.models.MLP` (``layout``, ``size``, ``views``,
``init``, ``logits``, ``loss_and_grad``, ``evaluate``), so local SGD, the codecs and
aggregation treat it like any other model. Inputs are flat rows of ``height * width *
channels`` values in NHWC order (how the browser's image arrays flatten).

Each conv stage is a ``kernel x kernel`` convolution (stride 1, same padding) as one
matrix product over im2col patches, ReLU, then 2x2 max-pooling (an odd last row or
column is dropped); dense ReLU layers and a softmax output follow. Every matrix product,
forward and backward, goes through the compute backend (:mod:`webfl.core.kernels`): the
WebAssembly kernel in the browser, NumPy elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .evaluation import evaluation_sums
from .kernels import Kernels, active, for_dtype
from .models import GradientSteps, he_uniform, layout_views, softmax

__all__ = ["CNN"]


@dataclass(frozen=True)
class CNN(GradientSteps):
    """``CNN((8, 8, 1), conv=(16, 32), kernel=3, dense=(64,), num_classes=10)``."""

    input_shape: tuple[int, int, int]  # (height, width, channels)
    conv: tuple[int, ...]
    kernel: int
    dense: tuple[int, ...]
    num_classes: int

    def __post_init__(self) -> None:
        h, w, c = self.input_shape
        if min(h, w, c, self.num_classes) < 1 or not self.conv or min(self.conv) < 1 or min(self.dense, default=1) < 1:
            raise ValueError(f"a CNN needs positive sizes and at least one conv stage, got {self}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive (same padding), got {self.kernel}")
        if min(h, w) >> len(self.conv) < 1:
            raise ValueError(f"{h}x{w} images are too small for {len(self.conv)} 2x2 poolings")

    @cached_property
    def _stages(self) -> tuple[tuple[int, int, int, int], ...]:
        """``(height, width, c_in, c_out)`` of each conv stage's input."""
        h, w, c = self.input_shape
        out = []
        for c_out in self.conv:
            out.append((h, w, c, c_out))
            h, w, c = h // 2, w // 2, c_out
        return tuple(out)

    @cached_property
    def _flat(self) -> int:
        h, w, _, c = self._stages[-1]
        return (h // 2) * (w // 2) * c

    @cached_property
    def layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Names and shapes of the parameter tensors, in storage order."""
        k2 = self.kernel * self.kernel
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for i, (_, _, c_in, c_out) in enumerate(self._stages):
            shapes += [(f"conv{i}_w", (k2 * c_in, c_out)), (f"conv{i}_b", (c_out,))]
        sizes = (self._flat, *self.dense, self.num_classes)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes += [(f"dense{i}_w", (fan_in, fan_out)), (f"dense{i}_b", (fan_out,))]
        return tuple(shapes)

    @cached_property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.layout)

    @cached_property
    def im2col_size(self) -> int:
        """Patch values one image needs at its largest conv stage (memory per example)."""
        k2 = self.kernel * self.kernel
        return max(h * w * k2 * c_in for h, w, c_in, _ in self._stages)

    @property
    def num_features(self) -> int:
        h, w, c = self.input_shape
        return h * w * c

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named, shaped views into ``flat`` (writes go through to it)."""
        return layout_views(self.layout, flat)

    def init(self, seed: int) -> np.ndarray:
        """He-uniform weights (fan-in = rows of each matrix) and zero biases, deterministic for ``seed``."""
        return he_uniform(self.layout, seed, lambda name: name.endswith("_w"))

    def _im2col(self, a: np.ndarray) -> np.ndarray:
        """``(n, h, w, c)`` to ``(n * h * w, k * k * c)`` patches, zero-padded to keep ``h, w``."""
        n, h, w, c = a.shape
        p = self.kernel // 2
        padded = np.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))
        windows = sliding_window_view(padded, (self.kernel, self.kernel), axis=(1, 2))  # (n, h, w, c, k, k)
        return np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, -1))

    def _col2im(self, cols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
        """Adjoint of :meth:`_im2col`: sum each patch gradient back onto the input."""
        n, h, w, c = shape
        k, p = self.kernel, self.kernel // 2
        patches = cols.reshape(n, h, w, k, k, c)
        out = np.zeros((n, h + 2 * p, w + 2 * p, c), dtype=cols.dtype)
        for di in range(k):
            for dj in range(k):
                out[:, di : di + h, dj : dj + w, :] += patches[:, :, :, di, dj, :]
        return out[:, p : p + h, p : p + w, :]

    def _forward(self, params: np.ndarray, x: np.ndarray, kernels: Kernels) -> tuple[list, list[np.ndarray], np.ndarray]:
        """Logits, and what backprop needs: per conv stage ``(cols, activation, argmax)``, dense inputs.

        Every product goes through ``kernels`` with its bias and ReLU folded in; the ReLU's
        output is positive exactly where its input is, so it serves as backprop's mask.
        """
        v = self.views(params)
        n = x.shape[0]
        a = x.reshape(n, *self.input_shape)
        cache = []
        for i, (h, w, _, c_out) in enumerate(self._stages):
            cols = self._im2col(a)
            z = np.empty((n * h * w, c_out), params.dtype)
            kernels.gemm(cols, v[f"conv{i}_w"], z, bias=v[f"conv{i}_b"], relu=True)
            z = z.reshape(n, h, w, c_out)
            h2, w2 = h // 2, w // 2
            blocks = z[:, : 2 * h2, : 2 * w2, :]
            blocks = blocks.reshape(n, h2, 2, w2, 2, c_out).transpose(0, 1, 3, 5, 2, 4).reshape(n, h2, w2, c_out, 4)
            arg = blocks.argmax(axis=-1)
            a = np.take_along_axis(blocks, arg[..., None], axis=-1)[..., 0]
            cache.append((cols, z, arg))
        hidden = [np.ascontiguousarray(a.reshape(n, -1))]
        depth = len(self.dense) + 1
        for i in range(depth):
            w_ = v[f"dense{i}_w"]
            z = kernels.gemm(hidden[-1], w_, np.empty((n, w_.shape[1]), params.dtype), bias=v[f"dense{i}_b"], relu=i < depth - 1)
            if i == depth - 1:
                return cache, hidden, z
            hidden.append(z)
        raise AssertionError("unreachable")

    def logits(self, params: np.ndarray, x: np.ndarray, kernels: Kernels | None = None) -> np.ndarray:
        return self._forward(params, np.ascontiguousarray(x, dtype=params.dtype), for_dtype(kernels or active(), params.dtype))[2]

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, kernels: Kernels | None = None
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy on ``(x, y)`` and its gradient as a flat vector."""
        kernels = for_dtype(kernels or active(), params.dtype)
        cache, hidden, z = self._forward(params, np.ascontiguousarray(x, dtype=params.dtype), kernels)
        n = x.shape[0]
        probs = softmax(z)
        loss = -float(np.log(probs[np.arange(n), y] + 1e-12).sum()) / n
        dz = probs
        dz[np.arange(n), y] -= 1.0
        dz /= n
        grad = np.empty_like(params)
        g, v = self.views(grad), self.views(params)
        ones = np.ones((1, n), params.dtype)
        for i in range(len(self.dense), -1, -1):
            h = hidden[i]
            kernels.gemm(h, dz, g[f"dense{i}_w"], trans_a=True)
            kernels.gemm(ones, dz, g[f"dense{i}_b"].reshape(1, -1))
            w_ = v[f"dense{i}_w"]
            # Into a hidden layer, the ReLU's derivative is its output's mask; into the
            # pooled features there is none (pooling routes the gradient below).
            dz = kernels.gemm(dz, w_, np.empty((n, w_.shape[0]), params.dtype), trans_b=True, mask=h if i else None)
        for i in range(len(self._stages) - 1, -1, -1):
            cols, act, arg = cache[i]
            h, w, c_in, c_out = self._stages[i]
            h2, w2 = h // 2, w // 2
            # Unpool: each pooled gradient goes to the position that won the max.
            blocks = np.zeros((n, h2, w2, c_out, 4), dtype=dz.dtype)
            np.put_along_axis(blocks, arg[..., None], dz.reshape(n, h2, w2, c_out, 1), axis=-1)
            dpre = np.zeros((n, h, w, c_out), dtype=dz.dtype)
            dpre[:, : 2 * h2, : 2 * w2, :] = (
                blocks.reshape(n, h2, w2, c_out, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, 2 * h2, 2 * w2, c_out)
            )
            dpre *= act > 0
            dflat = dpre.reshape(n * h * w, c_out)
            kernels.gemm(cols, dflat, g[f"conv{i}_w"], trans_a=True)
            kernels.gemm(np.ones((1, n * h * w), params.dtype), dflat, g[f"conv{i}_b"].reshape(1, -1))
            if i:
                w_ = v[f"conv{i}_w"]
                dcols = kernels.gemm(dflat, w_, np.empty((n * h * w, w_.shape[0]), params.dtype), trans_b=True)
                dz = self._col2im(dcols, (n, h, w, c_in))
        return loss, grad

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch: int = 500) -> tuple[float, float]:
        """Mean cross-entropy and accuracy, in batches to bound the im2col memory."""
        sums = evaluation_sums(self, params, x, y, self.num_classes, batch)
        return sums.loss, sums.accuracy
