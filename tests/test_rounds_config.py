"""Run settings parsed once at the boundary: typed objects, one set of training bounds
(the core's), errors that name the field, and the same JSON back out."""

import json

import pytest

from webfl.core.codecs import Codec
from webfl.core.training import BOUNDS, TrainConfig
from webfl.server.engine import RunConfig


def test_specs_become_objects_and_to_dict_gives_the_api_json_back():
    body = {"codec": " TopK:0.010+Q8 ", "downlink": "delta:q8", "norm_bound": None, "aggregator": "trimmed_mean:0.2",
            "server_opt": "fedavgm:lr=1", "mode": "fedbuff", "lr": 0.5, "rounds": 3}
    config = RunConfig.from_json(body)
    assert isinstance(config.codec, Codec) and config.codec.stages == ("topk", "q8") and config.downlink.kind == "delta"
    out = config.to_dict()
    assert out["codec"] == "topk:0.01+q8" and out["downlink"] == "delta:q8" and out["norm_bound"] == "none"
    assert out["aggregator"] == "trimmed_mean:0.2" and out["server_opt"] == "fedavgm:lr=1" and out["rounds"] == 3
    assert RunConfig.from_json(json.loads(json.dumps(out))).to_dict() == out  # how a run resumes
    with pytest.raises(TypeError, match="from_json"):
        RunConfig(codec="q8")  # text past the boundary is a bug, not a setting


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"lr": 0}, "lr"), ({"lr": 10.5}, "lr"), ({"local_epochs": 101}, "local_epochs"), ({"batch_size": 0}, "batch_size"),
        ({"prox_mu": -1}, "prox_mu"), ({"rounds": float("inf")}, "rounds"), ({"deadline_s": float("nan")}, "deadline_s"),
        ({"codec": "gzip"}, "codec"), ({"codec": 5}, "codec"), ({"downlink": "delta:zip"}, "downlink"),
        ({"norm_bound": "x=-1"}, "norm_bound"), ({"aggregator": "clipped:window=100000000000000000000"}, "aggregator"),
        ({"server_opt": "adam"}, "server_opt"), ({"mode": "async"}, "mode"),
    ],
)
def test_a_bad_value_names_its_field(body, field):
    with pytest.raises(ValueError) as info:
        RunConfig.from_json(body)
    assert str(info.value).startswith(field), info.value


def test_training_settings_take_the_cores_bounds():
    for name, key in (("local_epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("prox_mu", "prox_mu")):
        lo, hi, closed = BOUNDS[key]
        RunConfig.from_json({name: hi})
        TrainConfig(**{key: hi})
        if closed:
            RunConfig.from_json({name: lo})
            TrainConfig(**{key: lo})
        else:
            with pytest.raises(ValueError):
                RunConfig.from_json({name: lo})
            with pytest.raises(ValueError):
                TrainConfig(**{key: lo})
    RunConfig.from_json({"lr": 1e-9})  # 0.1.0's server refused lrs its volunteers accepted


def test_the_core_and_the_server_word_a_bound_alike():
    """One check (``training.check_bounds``) words every bound, so a volunteer's refusal reads as the 400 does."""
    for body, train, message in (({"lr": 0}, {"lr": 0}, "lr must be in (0, 10]"),
                                 ({"local_epochs": 101}, {"epochs": 101}, "epochs must be between 1 and 100")):
        with pytest.raises(ValueError) as server:
            RunConfig.from_json(body)
        with pytest.raises(ValueError) as core:
            TrainConfig(**train)
        assert str(core.value) == message and str(server.value).endswith(message), (core.value, server.value)
