"""Server optimizers against hand-computed steps, and the FedProx term on the client."""

import math

import numpy as np
import pytest

from webfl.core.models import build_model
from webfl.core.server_opt import get_server_opt
from webfl.core.training import TrainConfig, local_train

X0 = np.array([1.0, -2.0], np.float32)
D1 = np.array([0.5, 0.1], np.float32)
D2 = np.array([-0.2, 0.3], np.float32)


def test_fedavg_adds_the_scaled_delta():
    opt = get_server_opt("fedavg")
    np.testing.assert_allclose(opt.step(X0, D1), [1.5, -1.9], rtol=1e-6)
    np.testing.assert_allclose(get_server_opt("fedavg:lr=0.5").step(X0, D1), [1.25, -1.95], rtol=1e-6)


def test_fedavgm_by_hand():
    opt = get_server_opt("fedavgm:lr=1,momentum=0.9")
    x1 = opt.step(X0, D1)  # m = d1
    np.testing.assert_allclose(x1, [1.5, -1.9], rtol=1e-6)
    x2 = opt.step(x1, D2)  # m = 0.9 * [0.5, 0.1] + [-0.2, 0.3] = [0.25, 0.39]
    np.testing.assert_allclose(x2, [1.75, -1.51], rtol=1e-6)


def _adam_by_hand(yogi: bool):
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x, m, v = X0.astype(float), np.zeros(2), np.full(2, tau * tau)
    for d in (D1, D2):
        d = d.astype(float)
        m = b1 * m + (1 - b1) * d
        v = v - (1 - b2) * d * d * np.sign(v - d * d) if yogi else b2 * v + (1 - b2) * d * d
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimizers_by_hand(name):
    opt = get_server_opt(f"{name}:lr=0.1,b1=0.9,b2=0.99,tau=0.001")
    x = opt.step(X0, D1)
    x = opt.step(x, D2)
    np.testing.assert_allclose(x, _adam_by_hand(name == "fedyogi"), rtol=1e-5)
    assert opt.steps == 2


@pytest.mark.parametrize("spec", ["fedavgm", "fedadam", "fedyogi"])
def test_state_round_trips_through_a_checkpoint(spec):
    a = get_server_opt(spec)
    x = a.step(X0, D1)
    b = get_server_opt(spec)
    b.load_state(a.state().copy(), X0.size, a.steps)
    np.testing.assert_array_equal(a.step(x, D2), b.step(x, D2))
    assert a.state().size == a.slots * X0.size  # O(model)


@pytest.mark.parametrize("bad", ["adam", "fedavgm:momentum=1", "fedadam:lr", "fedavg:beta=2", "fedyogi:tau=0"])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        get_server_opt(bad)


def test_fedprox_adds_mu_times_the_distance_to_the_global_model():
    model = build_model("softmax", 4, 3)
    rng = np.random.default_rng(0)
    w0 = model.init(1)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    # One epoch with the full batch: two batches would move w away from w_global; use
    # two epochs of one batch so the second step sees w - w_global != 0.
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.5, seed=3, prox_mu=0.7)
    got = local_train(model, w0, x, y, cfg).params
    w = w0.copy()
    for _ in range(2):
        _, g = model.loss_and_grad(w, x, y)
        w = w - np.float32(0.5) * (g + np.float32(0.7) * (w - w0))
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7)
    plain = local_train(model, w0, x, y, TrainConfig(epochs=2, batch_size=8, lr=0.5, seed=3)).params
    assert np.linalg.norm(got - w0) < np.linalg.norm(plain - w0)  # pulled towards the global model


def test_prox_mu_travels_in_the_task_config():
    cfg = TrainConfig(prox_mu=0.01)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"epochs": 1, "batch_size": 2, "lr": 0.1, "seed": 0}).prox_mu == 0.0
    with pytest.raises(ValueError):
        TrainConfig(prox_mu=-1)
    assert math.isclose(get_server_opt("fedavg").params["lr"], 1.0)
