"""The compute backend: NumPy's gemm and its epilogue, the wasm binding, and fused SGD."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import numpy as np
import pytest

from webfl.build import paths
from webfl.build.wasm import build_kernel
from webfl.core import kernels
from webfl.core.kernels import NumpyKernels, WasmKernels
from webfl.core.models import build_model
from webfl.core.training import TrainConfig, local_train, train_steps

CASES = [
    # m, n, k, trans_a, trans_b
    (7, 13, 5, False, False),
    (5, 9, 3, True, False),
    (3, 10, 11, False, True),
    (6, 5, 4, True, True),
]


def reference(a, b, c, alpha, beta, ta, tb, bias, relu, mask):
    """The definition, in float64."""
    a, b, c = (v.astype(np.float64) for v in (a, b, c))
    out = alpha * (a.T if ta else a) @ (b.T if tb else b) + (beta * c if beta else 0)
    if bias is not None:
        out = out + bias
    if relu:
        out = np.maximum(out, 0)
    if mask is not None:
        out = np.where(mask > 0, out, 0)
    return out


def operands(rng, m, n, k, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    return a, b, rng.standard_normal((m, n), dtype=np.float32)


@pytest.mark.parametrize("m,n,k,ta,tb", CASES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.1, 1.0), (2.0, 0.5)])
@pytest.mark.parametrize("epilogue", ["none", "bias+relu", "mask"])
def test_numpy_gemm_matches_the_definition(m, n, k, ta, tb, alpha, beta, epilogue):
    rng = np.random.default_rng(m * n + k)
    a, b, c = operands(rng, m, n, k, ta, tb)
    bias = rng.standard_normal(n, dtype=np.float32) if epilogue == "bias+relu" else None
    mask = rng.standard_normal((m, n), dtype=np.float32) if epilogue == "mask" else None
    relu = epilogue == "bias+relu"
    want = reference(a, b, c, alpha, beta, ta, tb, bias, relu, mask)
    out = c.copy()
    got = NumpyKernels().gemm(a, b, out, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb, bias=bias, relu=relu, mask=mask)
    assert got is out and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_beta_zero_never_reads_out():
    rng = np.random.default_rng(0)
    a, b, _ = operands(rng, 4, 6, 3, False, False)
    out = np.full((4, 6), np.nan, np.float32)
    NumpyKernels().gemm(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)


def c_gemm(flags, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc, pbias, pmask):
    """gemm.c's contract, natively: reads and writes the arrays through their addresses."""

    def at(address, rows, cols):
        buf = (ctypes.c_float * (rows * cols)).from_address(address)
        return np.frombuffer(buf, np.float32).reshape(rows, cols)

    ta, tb, relu = flags & 1, flags & 2, flags & 4
    a = at(pa, k, lda) if ta else at(pa, m, lda)
    b = at(pb, n, ldb) if tb else at(pb, k, ldb)
    c = at(pc, m, ldc)
    product = (a.T if ta else a) @ (b.T if tb else b)
    result = alpha * product + (beta * c if beta else 0)
    if pbias:
        result = result + at(pbias, 1, n)[0]
    if relu:
        result = np.maximum(result, 0)
    if pmask:
        result = np.where(at(pmask, m, ldc) > 0, result, 0)
    c[...] = result


def test_the_wasm_binding_passes_addresses_shapes_and_flags():
    wasm, rng = WasmKernels(c_gemm), np.random.default_rng(1)
    for m, n, k, ta, tb in CASES:
        a, b, c = operands(rng, m, n, k, ta, tb)
        bias, mask = rng.standard_normal(n, dtype=np.float32), rng.standard_normal((m, n), dtype=np.float32)
        for extra in ({}, {"bias": bias, "relu": True}, {"mask": mask}):
            want = NumpyKernels().gemm(a, b, c.copy(), alpha=-0.5, beta=1.0, trans_a=ta, trans_b=tb, **extra)
            got = wasm.gemm(a, b, c.copy(), alpha=-0.5, beta=1.0, trans_a=ta, trans_b=tb, **extra)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert kernels.self_check(wasm) <= kernels.RTOL


def test_the_wasm_binding_refuses_what_the_kernel_cannot_read():
    wasm = WasmKernels(c_gemm)
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        wasm.gemm(a.astype(np.float64), b, np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        wasm.gemm(np.ones((4, 3), np.float32).T, b, np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        wasm.gemm(a, b, np.empty((5, 3), np.float32))
    with pytest.raises(ValueError, match="inner sizes differ"):
        wasm.gemm(a, a, np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="bias has shape"):
        wasm.gemm(a, b, np.empty((3, 5), np.float32), bias=np.ones(3, np.float32))


def test_addresses_are_cached_while_an_array_lives_and_forgotten_after():
    wasm = WasmKernels(c_gemm)
    a, b, out = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), np.empty((2, 4), np.float32)
    wasm.gemm(a, b, out)
    assert len(wasm._addresses) == 3
    wasm.gemm(a, b, out)
    assert len(wasm._addresses) == 3  # hits, no new entries
    del a
    assert len(wasm._addresses) == 2


def test_install_wasm_keeps_numpy_for_a_kernel_that_disagrees():
    def off_by_a_little(*args):
        c_gemm(*args)
        pc, ldc, m = args[10], args[11], args[1]
        c = np.frombuffer((ctypes.c_float * (m * ldc)).from_address(pc), np.float32)
        c *= np.float32(1.001)

    def broken(*args):
        raise RuntimeError("memory access out of bounds")

    try:
        assert kernels.install_wasm(off_by_a_little) == "numpy"
        assert kernels.install_wasm(broken) == "numpy"
        assert isinstance(kernels.active(), NumpyKernels)
        assert kernels.install_wasm(c_gemm) == "wasm-simd128"
        assert isinstance(kernels.active(), WasmKernels)
    finally:
        kernels.use(NumpyKernels())


@pytest.mark.parametrize("prox_mu", [0.0, 0.3])
def test_fused_sgd_agrees_with_gradient_then_update(prox_mu):
    """local_train folds the update into the gradient's products; same result as the textbook loop."""
    model = build_model("2nn", num_features=20, num_classes=5)
    rng = np.random.default_rng(2)
    x, y = rng.random((45, 20), dtype=np.float32), rng.integers(0, 5, 45)
    config = TrainConfig(epochs=3, batch_size=8, lr=0.2, seed=7, prox_mu=prox_mu)
    w0 = model.init(3)
    got = local_train(model, w0, x, y, config)

    w, order_rng = w0.copy(), np.random.default_rng(config.seed)
    for _ in range(config.epochs):
        order = order_rng.permutation(len(x))
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            _, grad = model.loss_and_grad(w, x[idx], y[idx])
            w = w - np.float32(config.lr) * (grad + np.float32(prox_mu) * (w - w0))
    np.testing.assert_allclose(got.params, w, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(got.params, w0)


def test_train_steps_yields_every_batch_and_returns_local_trains_result():
    model = build_model("softmax", num_features=6, num_classes=3)
    rng = np.random.default_rng(0)
    x, y = rng.random((25, 6), dtype=np.float32), rng.integers(0, 3, 25)
    config = TrainConfig(epochs=2, batch_size=10, lr=0.1, seed=1)
    steps, seen = train_steps(model, model.init(0), x, y, config), []
    while True:
        try:
            seen.append(next(steps)[:3])
        except StopIteration as done:
            result = done.value
            break
    assert seen == [(e, b, 3) for e in range(2) for b in range(3)]
    np.testing.assert_array_equal(result.params, local_train(model, model.init(0), x, y, config).params)


# -- gemm.wasm itself, under Node (V8, as in Chromium), against the definition ---------

RUN_WASM = """
import { readFileSync, writeFileSync } from "fs";
const [wasm, image, calls, out] = process.argv.slice(2);
const bytes = readFileSync(image);
const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes.length / 65536) });
new Uint8Array(memory.buffer).set(bytes);
const { instance } = await WebAssembly.instantiate(readFileSync(wasm), { env: { memory } });
for (const args of JSON.parse(readFileSync(calls, "utf8"))) instance.exports.gemm(...args);
writeFileSync(out, new Uint8Array(memory.buffer, 0, bytes.length));
"""

#: Shapes of every path of gemm.c: 4x12 blocks and their 2- and 1-row, 4- and 1-column
#: edges, 32-wide sparse rows and their edges, k not a multiple of 4, the 2NN's products.
WASM_CASES = [
    # m, n, k, trans_a, trans_b, density of a
    (32, 200, 784, False, False, 0.2),  # a batch of MNIST-like rows: the sparse path
    (32, 200, 784, False, False, 1.0),
    (10, 203, 37, False, False, 0.1),
    (7, 45, 9, False, False, 1.0),
    (784, 200, 32, True, False, 0.2),  # the first layer's weight gradient
    (13, 29, 7, True, False, 1.0),
    (32, 200, 200, False, True, 1.0),
    (9, 7, 13, False, True, 1.0),
    (32, 203, 10, False, True, 1.0),  # the gradient into the last hidden layer: k = classes
    (5, 17, 3, False, True, 1.0),
    (6, 5, 4, True, True, 1.0),
    (1, 200, 32, False, False, 1.0),  # the bias gradient: ones @ dz
]


@pytest.mark.skipif(not (shutil.which("clang") and shutil.which("wasm-ld") and shutil.which("node")), reason="needs clang, lld, node")
def test_the_wasm_kernel_agrees_with_the_definition_on_every_path(tmp_path):
    wasm = build_kernel(paths.KERNEL_SRC, tmp_path / "gemm.wasm", tmp_path / "stamp.json").path
    rng = np.random.default_rng(7)
    image, calls, cases = bytearray(64), [], []

    def place(array):
        image.extend(bytes(-len(image) % 16))
        at = len(image)
        image.extend(np.ascontiguousarray(array, np.float32).tobytes())
        return at

    for m, n, k, ta, tb, density in WASM_CASES:
        for alpha, beta, epilogue in [(1.0, 0.0, "bias+relu"), (-0.1, 1.0, "none"), (2.0, 0.5, "mask"), (1.0, 0.0, "none")]:
            a, b, c = operands(rng, m, n, k, ta, tb)
            a *= rng.random(a.shape) < density
            c[: m // 2] = np.nan if beta == 0 else c[: m // 2]  # beta 0 never reads C
            bias = rng.standard_normal(n, dtype=np.float32) if epilogue == "bias+relu" else None
            mask = rng.standard_normal((m, n), dtype=np.float32) if epilogue == "mask" else None
            flags = (1 if ta else 0) | (2 if tb else 0) | (4 if epilogue == "bias+relu" else 0)
            pc = place(c)
            calls.append([flags, m, n, k, alpha, place(a), a.shape[1], place(b), b.shape[1], beta, pc, n,
                          0 if bias is None else place(bias), 0 if mask is None else place(mask)])
            cases.append((pc, (m, n), reference(a, b, np.nan_to_num(c), alpha, beta, ta, tb, bias, epilogue == "bias+relu", mask)))
    (tmp_path / "image").write_bytes(bytes(image))
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    (tmp_path / "run.mjs").write_text(RUN_WASM)
    run = subprocess.run(["node", str(tmp_path / "run.mjs"), str(wasm), str(tmp_path / "image"), str(tmp_path / "calls.json"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = (tmp_path / "out").read_bytes()
    for pc, shape, want in cases:
        got = np.frombuffer(result, np.float32, shape[0] * shape[1], pc).reshape(shape)
        error = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
        assert error <= kernels.RTOL, (shape, error)
