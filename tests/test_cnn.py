"""The small CNN: gradients against finite differences, layout, and training by local SGD."""

import numpy as np
import pytest

from test_kernels import c_gemm
from test_models import numerical_grad
from webfl.core.cnn import CNN
from webfl.core.kernels import NumpyKernels, WasmKernels
from webfl.core.training import TrainConfig, local_train


@pytest.mark.parametrize(
    "model",
    [
        CNN((7, 6, 2), conv=(3, 4), kernel=3, dense=(5,), num_classes=4),  # odd sides: pooling drops a row
        CNN((8, 8, 1), conv=(4,), kernel=5, dense=(), num_classes=3),
        CNN((4, 4, 3), conv=(2,), kernel=1, dense=(3, 3), num_classes=2),
    ],
    ids=["two-stages-odd", "kernel5-no-dense", "kernel1-two-dense"],
)
def test_gradient_matches_finite_differences(model):
    rng = np.random.default_rng(0)
    params = model.init(1).astype(np.float64) + rng.normal(0, 0.01, model.size)
    x, y = rng.random((5, model.num_features)), rng.integers(0, model.num_classes, 5)
    _, grad = model.loss_and_grad(params, x, y)
    idx = rng.choice(model.size, min(120, model.size), replace=False)
    np.testing.assert_allclose(grad[idx], numerical_grad(model, params, x, y, idx), rtol=1e-4, atol=1e-8)


def test_layout_views_and_init():
    model = CNN((8, 8, 1), conv=(16, 32), kernel=3, dense=(64,), num_classes=10)
    assert [(n, s) for n, s in model.layout] == [
        ("conv0_w", (9, 16)), ("conv0_b", (16,)), ("conv1_w", (144, 32)), ("conv1_b", (32,)),
        ("dense0_w", (128, 64)), ("dense0_b", (64,)), ("dense1_w", (64, 10)), ("dense1_b", (10,)),
    ]
    assert model.size == 9 * 16 + 16 + 144 * 32 + 32 + 128 * 64 + 64 + 64 * 10 + 10
    flat = model.init(3)
    assert flat.dtype == np.float32 and flat.tobytes() == model.init(3).tobytes() != model.init(4).tobytes()
    views = model.views(flat)
    assert not views["conv1_b"].any() and views["conv1_w"].std() > 0
    views["dense1_b"][:] = 7
    assert flat[-10:].tolist() == [7] * 10
    with pytest.raises(ValueError):
        model.views(np.zeros(5, np.float32))


def test_convolution_is_spatial():
    """A 1-channel 3x3 conv with a centre-only kernel and no pooling loss is the identity map."""
    model = CNN((4, 4, 1), conv=(1,), kernel=3, dense=(), num_classes=4)
    params = np.zeros(model.size, np.float32)
    v = model.views(params)
    v["conv0_w"][4, 0] = 1.0  # centre tap of the 3x3 patch
    v["dense0_w"][...] = np.eye(4)  # the 2x2 pooled map, one logit per quadrant
    x = np.zeros((1, 16), np.float32)
    x[0, 4 * 3 + 3] = 5.0  # bottom-right pixel
    np.testing.assert_array_equal(model.logits(params, x), [[0, 0, 0, 5]])


@pytest.mark.parametrize("bad", [
    dict(input_shape=(8, 8, 1), conv=(), kernel=3, dense=(), num_classes=2),
    dict(input_shape=(8, 8, 1), conv=(4,), kernel=2, dense=(), num_classes=2),
    dict(input_shape=(3, 8, 1), conv=(4, 4), kernel=3, dense=(), num_classes=2),
    dict(input_shape=(8, 8, 0), conv=(4,), kernel=3, dense=(), num_classes=2),
])
def test_invalid_shapes_are_rejected(bad):
    with pytest.raises(ValueError):
        CNN(**bad)


def test_local_sgd_trains_it_unchanged():
    """``local_train`` takes any model with the MLP's interface: a CNN learns where a bar is."""
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    images = rng.random((n, 6, 6, 1)).astype(np.float32) * 0.3
    rows = rng.integers(0, 6, n)
    images[np.arange(n), rows, :, 0] += np.where(y == 1, 1.0, 0.0)[:, None]  # horizontal bar
    cols = rng.integers(0, 6, n)
    images[np.arange(n), :, cols, 0] += np.where(y == 0, 1.0, 0.0)[:, None]  # vertical bar
    x = images.reshape(n, -1)
    model = CNN((6, 6, 1), conv=(4,), kernel=3, dense=(8,), num_classes=2)
    params = model.init(0)
    result = local_train(model, params, x, y, TrainConfig(epochs=10, batch_size=16, lr=0.1, seed=1))
    assert result.params.dtype == np.float32
    assert result.accuracy > 0.95 > model.evaluate(params, x, y)[1]


class Counting:
    """NumPy, counting the products a model hands to the backend."""

    name, float32_only = "counting", True

    def __init__(self) -> None:
        self.calls = 0

    def gemm(self, a, b, out, **kw):
        assert a.dtype == b.dtype == out.dtype == np.float32 and a.flags.c_contiguous and b.flags.c_contiguous
        self.calls += 1
        return NumpyKernels().gemm(a, b, out, **kw)


def test_every_product_goes_through_the_backend_and_the_wasm_binding_agrees():
    model = CNN((7, 6, 2), conv=(3, 4), kernel=3, dense=(5,), num_classes=4)
    rng = np.random.default_rng(2)
    params = model.init(1) + rng.normal(0, 0.01, model.size).astype(np.float32)
    x, y = rng.random((6, model.num_features), dtype=np.float32), rng.integers(0, 4, 6)
    loss, grad = model.loss_and_grad(params, x, y, NumpyKernels())
    counting = Counting()
    assert model.loss_and_grad(params, x, y, counting)[0] == loss
    # forward: 2 conv + 2 dense; backward: per dense layer weight, bias, input; per conv
    # stage weight and bias, and the input of the upper one.
    assert counting.calls == 4 + 2 * 3 + 2 * 2 + 1 == 15
    wasm_loss, wasm_grad = model.loss_and_grad(params, x, y, WasmKernels(c_gemm))
    assert abs(wasm_loss - loss) <= 1e-6 * abs(loss)
    assert np.linalg.norm(wasm_grad - grad) <= 1e-6 * np.linalg.norm(grad)
    # A float64 gradient check cannot go through a float32 kernel: it takes NumPy's path.
    assert model.loss_and_grad(params.astype(np.float64), x, y, counting)[1].dtype == np.float64
    assert counting.calls == 15


def test_local_sgd_uses_the_kernels_it_is_given():
    model = CNN((6, 6, 1), conv=(2,), kernel=3, dense=(), num_classes=2)
    rng = np.random.default_rng(3)
    x, y = rng.random((20, 36), dtype=np.float32), rng.integers(0, 2, 20)
    counting = Counting()
    config = TrainConfig(epochs=1, batch_size=10, lr=0.1, seed=0)
    trained = local_train(model, model.init(0), x, y, config, kernels=counting)
    assert counting.calls == 2 * (2 + 3 + 2)  # two batches; a step: 2 forward, 3 dense and 2 conv backward
    np.testing.assert_array_equal(trained.params, local_train(model, model.init(0), x, y, config).params)
