import numpy as np
import pytest

from webfl.core.models import MLP, build_model
from webfl.core.training import TrainConfig, local_train


def numerical_grad(model, params, x, y, idx, eps=1e-6):
    out = []
    for i in idx:
        e = np.zeros_like(params)
        e[i] = eps
        out.append((model.loss_and_grad(params + e, x, y)[0] - model.loss_and_grad(params - e, x, y)[0]) / (2 * eps))
    return np.array(out)


@pytest.mark.parametrize("name", ["softmax", "2nn"])
def test_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(0)
    model = build_model(name, num_features=12, num_classes=4)
    params = model.init(1).astype(np.float64) + rng.normal(0, 0.01, model.size)
    x, y = rng.random((9, 12)), rng.integers(0, 4, 9)
    _, grad = model.loss_and_grad(params, x, y)
    idx = rng.choice(model.size, min(60, model.size), replace=False)
    np.testing.assert_allclose(grad[idx], numerical_grad(model, params, x, y, idx), rtol=1e-4, atol=1e-8)


def test_2nn_has_mcmahans_shape():
    model = build_model("2nn")
    assert model.sizes == (784, 200, 200, 10)
    assert model.size == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10 == 199_210


def test_views_are_named_and_write_through():
    model = MLP((3, 2))
    flat = np.zeros(model.size, np.float32)
    views = model.views(flat)
    assert {k: v.shape for k, v in views.items()} == {"w0": (3, 2), "b0": (2,)}
    views["b0"][:] = 7
    assert flat[-2:].tolist() == [7, 7]
    with pytest.raises(ValueError):
        model.views(np.zeros(5, np.float32))


def test_training_is_deterministic_for_a_seed_and_learns():
    rng = np.random.default_rng(0)
    x = rng.random((200, 6)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    model = MLP((6, 16, 2))
    params = model.init(3)
    a = local_train(model, params, x, y, TrainConfig(epochs=20, batch_size=16, lr=0.5, seed=5))
    b = local_train(model, params, x, y, TrainConfig(epochs=20, batch_size=16, lr=0.5, seed=5))
    c = local_train(model, params, x, y, TrainConfig(epochs=20, batch_size=16, lr=0.5, seed=6))
    assert a.params.tobytes() == b.params.tobytes()
    assert a.params.tobytes() != c.params.tobytes()
    assert a.accuracy > 0.9 > model.evaluate(params, x, y)[1]
    assert a.params.dtype == np.float32 and params.tobytes() == model.init(3).tobytes()


def test_progress_reports_every_batch():
    model = MLP((4, 3))
    calls = []
    local_train(model, model.init(0), np.ones((10, 4), np.float32), np.zeros(10, np.int64), TrainConfig(epochs=2, batch_size=4, lr=0.1),
                lambda *a: calls.append(a[:3]))
    assert calls == [(e, b, 3) for e in range(2) for b in range(3)]


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=0), dict(lr=float("nan"))])
def test_train_config_validates(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)
