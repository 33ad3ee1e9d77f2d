"""The compute backend of training: one matrix-multiply routine with a fused epilogue.

Every matrix product of the models goes through :meth:`Kernels.gemm`, BLAS-style::

    out = alpha * op(a) @ op(b) + beta * out  (+ bias)  (ReLU)  (* (mask > 0))

which is enough for an MLP's forward pass (bias and ReLU folded in), its backward pass
(the ReLU's derivative folded in as ``mask``, the bias gradient as a product with a row
of ones) and the SGD update itself (``alpha=-lr, beta=1`` writes into the weights), and
for a CNN's convolutions through im2col.

:class:`NumpyKernels` is the default everywhere. In the browser, Pyodide's NumPy has no
BLAS, so the worker compiles ``gemm.wasm`` (WebAssembly SIMD128, built from
``backend/webfl/build/kernels/gemm.c``) against Pyodide's own memory and calls
:func:`install_wasm` with its export: arrays then cross as byte addresses, no copies.
The kernel is only used after it agreed with NumPy on a self-check.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Protocol

import numpy as np

__all__ = ["Kernels", "NumpyKernels", "WasmKernels", "active", "for_dtype", "install_wasm", "use"]

log = logging.getLogger("webfl.kernels")


class Kernels(Protocol):
    name: str
    #: Computes in float32 only (then :func:`for_dtype` hands other dtypes to NumPy).
    float32_only: bool

    def gemm(
        self,
        a: np.ndarray,
        b: np.ndarray,
        out: np.ndarray,
        *,
        alpha: float = 1.0,
        beta: float = 0.0,
        trans_a: bool = False,
        trans_b: bool = False,
        bias: np.ndarray | None = None,
        relu: bool = False,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Write ``alpha * op(a) @ op(b) + beta * out``, then the epilogue, into ``out``; return it.

        ``beta == 0`` never reads ``out``. ``mask`` has ``out``'s shape; ``out`` is zero
        where ``mask <= 0``. ``out`` must not overlap ``a``, ``b``, ``bias`` or ``mask``.
        """
        ...


def _shapes(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool) -> tuple[int, int, int]:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("gemm needs 2-D arrays")
    m, k = a.shape[::-1] if trans_a else a.shape
    k2, n = b.shape[::-1] if trans_b else b.shape
    if k != k2:
        raise ValueError(f"gemm: inner sizes differ ({k} and {k2})")
    return m, n, k


class NumpyKernels:
    """Plain NumPy: natively it runs on BLAS, in Pyodide on NumPy's own loops."""

    name = "numpy"
    float32_only = False

    def gemm(self, a, b, out, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False, bias=None, relu=False, mask=None):
        # A contiguous transpose makes a product ~1.8x faster in Pyodide (no BLAS).
        op_a = np.ascontiguousarray(a.T) if trans_a else a
        op_b = b.T if trans_b else b
        if beta == 0:
            np.matmul(op_a, op_b, out=out)
            if alpha != 1:
                out *= out.dtype.type(alpha)
        else:
            product = op_a @ op_b
            product *= out.dtype.type(alpha)
            if beta != 1:
                out *= out.dtype.type(beta)
            out += product
        if bias is not None:
            out += bias
        if relu:
            np.maximum(out, 0, out=out)
        if mask is not None:
            out *= mask > 0
        return out


_TRANS_A, _TRANS_B, _RELU = 1, 2, 4


class WasmKernels:
    """``gemm.wasm`` called through Pyodide with the arrays' addresses in the shared heap.

    ``gemm`` is the module's export (a JavaScript function under Pyodide). Looking up an
    address costs more than a small product in Pyodide, so addresses of arrays that are
    used again (weights, activation buffers) are cached for as long as the array lives.
    """

    name = "wasm-simd128"
    float32_only = True

    def __init__(self, gemm: Callable[..., None]) -> None:
        self._gemm = gemm
        self._addresses: dict[int, tuple[weakref.ref, int]] = {}

    def _address(self, a: np.ndarray) -> int:
        key = id(a)
        hit = self._addresses.get(key)
        if hit is not None and hit[0]() is a:
            return hit[1]
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError("the wasm kernel takes C-contiguous float32 arrays")
        address = a.__array_interface__["data"][0]
        self._addresses[key] = (weakref.ref(a, lambda _, key=key: self._addresses.pop(key, None)), address)
        return address

    def gemm(self, a, b, out, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False, bias=None, relu=False, mask=None):
        m, n, k = _shapes(a, b, trans_a, trans_b)
        if out.shape != (m, n):
            raise ValueError(f"gemm: out has shape {out.shape}, expected {(m, n)}")
        if bias is not None and bias.shape != (n,):
            raise ValueError(f"gemm: bias has shape {bias.shape}, expected {(n,)}")
        if mask is not None and mask.shape != out.shape:
            raise ValueError(f"gemm: mask has shape {mask.shape}, expected {out.shape}")
        flags = (_TRANS_A if trans_a else 0) | (_TRANS_B if trans_b else 0) | (_RELU if relu else 0)
        if m and n:
            self._gemm(
                flags, m, n, k, float(alpha), self._address(a), a.shape[1], self._address(b), b.shape[1],
                float(beta), self._address(out), n,
                0 if bias is None else self._address(bias), 0 if mask is None else self._address(mask),
            )
        return out


_active: Kernels = NumpyKernels()


def active() -> Kernels:
    """The backend training uses unless told otherwise."""
    return _active


def use(kernels: Kernels) -> None:
    global _active
    _active = kernels


def for_dtype(kernels: Kernels, dtype: np.dtype) -> Kernels:
    """``kernels``, or NumPy for a dtype it does not compute in (a float64 gradient check)."""
    return NumpyKernels() if kernels.float32_only and dtype != np.float32 else kernels


#: The self-check's products: every op() combination and epilogue, with edge sizes (rows
#: and columns not multiples of the kernel's 4x12 blocks or 32-wide sparse rows, k not a
#: multiple of 4), ``a`` mostly zero (images: the kernel skips zeros) or dense. Small, as
#: it runs at every start-up and NumPy's reference has no BLAS there.
_CHECKS = (
    # m, n, k, trans_a, trans_b, alpha, beta, bias, relu, mask, sparse a
    (10, 70, 98, False, False, 1.0, 0.0, True, True, False, True),
    (10, 70, 98, False, False, 1.0, 0.0, True, True, False, False),
    (42, 70, 13, True, False, -0.1, 1.0, False, False, False, True),
    (9, 14, 40, False, True, 1.0, 0.0, False, False, True, False),
    (9, 21, 10, False, True, 1.0, 0.0, False, False, True, False),
    (1, 70, 13, False, False, -0.1, 1.0, False, False, False, False),
    (7, 13, 5, False, False, 0.5, 2.0, True, False, False, False),
    (5, 9, 3, True, False, 1.0, 0.0, False, True, False, False),
    (3, 10, 11, False, True, 2.0, -1.0, True, True, True, False),
    (6, 5, 4, True, True, 1.0, 0.5, False, False, False, False),
)

#: Agreement required with NumPy: ``||got - numpy|| <= RTOL * ||numpy||`` (Frobenius).
RTOL = 1e-6


def self_check(kernels: Kernels, reference: Kernels | None = None, seed: int = 0) -> float:
    """Largest relative difference from ``reference`` (NumPy) over :data:`_CHECKS`."""
    reference = reference or NumpyKernels()
    rng = np.random.default_rng(seed)
    worst = 0.0
    for m, n, k, ta, tb, alpha, beta, bias, relu, mask, sparse in _CHECKS:
        a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
        if sparse:
            a *= rng.random(a.shape) < 0.1
        b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
        c = rng.standard_normal((m, n), dtype=np.float32)
        extra = {
            "bias": rng.standard_normal(n, dtype=np.float32) if bias else None,
            "mask": rng.standard_normal((m, n), dtype=np.float32) if mask else None,
        }
        want = reference.gemm(a, b, c.copy(), alpha=alpha, beta=beta, trans_a=ta, trans_b=tb, relu=relu, **extra)
        got = kernels.gemm(a, b, c.copy(), alpha=alpha, beta=beta, trans_a=ta, trans_b=tb, relu=relu, **extra)
        worst = max(worst, float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)))
    return worst


def install_wasm(gemm: Callable[..., None]) -> str:
    """Use the wasm kernel from now on if it agrees with NumPy; say which backend is active.

    Any failure leaves NumPy in place: a slow volunteer beats a wrong one.
    """
    kernels = WasmKernels(gemm)
    try:
        error = self_check(kernels)
    except Exception as exc:  # a broken module or binding: fall back, say why
        log.warning("wasm kernel failed its self-check (%s); training with NumPy", exc)
        return NumpyKernels.name
    if not error <= RTOL:
        log.warning("wasm kernel differs from NumPy by %.2g (> %.0e); training with NumPy", error, RTOL)
        return NumpyKernels.name
    use(kernels)
    log.info("wasm kernel active (agrees with NumPy to %.1e)", error)
    return kernels.name
