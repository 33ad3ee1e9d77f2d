"""The simulator's attackers: what each one changes, and that it still speaks the protocol."""

import numpy as np
import pytest

from webfl.core.attacks import ATTACKS, MaliciousVolunteer, add_trigger, backdoor_success, parse_attack
from webfl.core.data import Dataset
from webfl.core.protocol import decode
from webfl.core.volunteer import Job
from webfl.core.training import TrainConfig
from webfl.simulate import pick_malicious


def data(n=40):
    rng = np.random.default_rng(0)
    return Dataset(rng.integers(0, 256, (n, 784), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))


JOB = Job(1, 0, TrainConfig(1, 8, 0.1, 0), "none", 60.0)


@pytest.mark.parametrize("spec", ["sign-flip", "sign-flip:4", "scale:3", "gaussian:0.1", "label-flip", "backdoor:7"])
def test_specs_parse(spec):
    assert parse_attack(spec)[0] in ATTACKS


@pytest.mark.parametrize("spec", ["nope", "scale:-1", "scale:nan", "label-flip:2", "backdoor:1.5", "gaussian:x"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_attack(spec)


def test_update_attacks_transform_the_delta():
    delta = np.linspace(-1, 1, 100, dtype=np.float32)
    assert np.array_equal(MaliciousVolunteer(data(), "sign-flip").craft_delta(delta, JOB), -delta)
    assert np.allclose(MaliciousVolunteer(data(), "scale:10").craft_delta(delta, JOB), 10 * delta)
    noise = MaliciousVolunteer(data(), "gaussian:0.5").craft_delta(delta, JOB)
    assert noise.dtype == np.float32 and noise.shape == delta.shape and 0.3 < noise.std() < 0.7


def test_data_attacks_poison_the_local_data():
    d = data()
    flipped = MaliciousVolunteer(d, "label-flip")._data
    assert np.array_equal(flipped.y, 9 - d.y)
    bd = MaliciousVolunteer(d, "backdoor:3")._data
    poisoned = (bd.x != d.x).any(axis=1)
    assert poisoned.sum() == len(d) // 2 and (bd.y[poisoned] == 3).all() and np.array_equal(bd.y[~poisoned], d.y[~poisoned])
    assert np.array_equal(bd.x[poisoned], add_trigger(d.x[poisoned]))


def test_backdoor_success_counts_triggered_non_targets():
    d = data(100)
    always_zero = lambda x: np.tile([1.0] + [0.0] * 9, (len(x), 1))  # noqa: E731
    assert backdoor_success(always_zero, d, target=0) == 1.0
    assert backdoor_success(lambda x: np.tile([0.0] * 9 + [1.0], (len(x), 1)), d, target=0) == 0.0


def test_attackers_still_send_protocol_frames():
    from webfl.core.protocol import Message, encode
    from webfl.core.tasks import get_task

    task = get_task("mnist")
    v = MaliciousVolunteer(data(), "sign-flip:2")
    v.hello()
    v.receive(encode(Message("welcome", {"version": "x", "volunteer": "v1", "task": task.to_dict(), "shard": None})))
    params = task.build_model().init(0)
    v.receive(encode(Message("model", {"model_version": 0, "codec": "none", "codec_params": {}}, (params,))))
    v.receive(encode(Message("task", {"round": 1, "model_version": 0, "deadline_s": 60, "codec": "none",
                                      "config": {"epochs": 1, "batch_size": 8, "lr": 0.1, "seed": 0}, "token": "tok"})))
    msg = decode(v.train())
    assert msg.type == "update" and msg.arrays[0].shape == params.shape


def test_pick_malicious():
    assert len(pick_malicious(20, 0.2, 0)) == 4 and pick_malicious(20, 0.2, 0) == pick_malicious(20, 0.2, 0)
    assert pick_malicious(10, 0.0, 1) == []
    with pytest.raises(ValueError):
        pick_malicious(10, 1.5, 0)
