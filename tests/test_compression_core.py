"""Compression in the volunteer session and the downlink chain, without sockets (fast)."""

import numpy as np
import pytest
from test_volunteer import DATA, MODEL, joined, server, welcome

from webfl.core.codecs import Encoded, get_codec
from webfl.core.downlink import ModelChain, apply_model, digest, get_downlink
from webfl.core.protocol import ProtocolError, decode
from webfl.core.volunteer import SessionState, TrainingDiverged, Volunteer
from webfl.server.engine import RunConfig


def task_frame(codec: str, round_: int = 1, version: int = 0, seed: int = 3, lr: float = 0.1) -> bytes:
    config = {"epochs": 1, "batch_size": 5, "lr": lr, "seed": seed}
    return server("task", round=round_, model_version=version, deadline_s=30.0, config=config, codec=codec, token="tok")


def trained(v: Volunteer, codec: str, round_: int = 1):
    v.receive(task_frame(codec, round_))
    update = decode(v.train())
    v.receive(server("accept", round=round_))
    return update


# -- uplink: error feedback, randomness, divergence -----------------------------------------


def test_topk_update_carries_the_residual_and_it_survives_a_reconnect():
    v = joined()
    assert v.residual_state() is None
    update = trained(v, "topk:0.1+q8")
    spec, residual = v.residual_state()
    assert spec == "topk:0.1+q8" and residual.shape == (MODEL.size,) and np.abs(residual).sum() > 0
    # What top-k kept plus what it left behind is the whole delta (up to q8 of the kept).
    sent = get_codec(spec).decode(Encoded(update["codec_params"], update.arrays), MODEL.size)
    assert np.count_nonzero(sent) == get_codec(spec).k(MODEL.size)
    v.close()
    v.hello()  # reconnect: the same session object keeps its residual
    v.receive(welcome())
    np.testing.assert_array_equal(v.residual_state()[1], residual)


def test_residual_round_trips_through_persistence_and_resets_on_a_new_codec():
    v = joined()
    trained(v, "topk:0.1")
    spec, residual = v.residual_state()
    fresh = joined()  # e.g. a reloaded tab that read IndexedDB
    fresh.load_residual_state(spec, residual)
    np.testing.assert_array_equal(fresh.residual_state()[1], residual)
    # The next top-k delta of both is identical: the residual is all the state there is.
    a, b = trained(v, "topk:0.1", 2), trained(fresh, "topk:0.1", 2)
    np.testing.assert_array_equal(a.arrays[0], b.arrays[0])
    trained(v, "topk:0.2", 3)
    assert v.residual_state()[0] == "topk:0.2"  # another spec: a residual of its own
    with pytest.raises(ValueError):
        fresh.load_residual_state("topk:0.1", np.full(MODEL.size, np.nan))
    with pytest.raises(ValueError):
        fresh.load_residual_state("gzip", residual)


def test_unbiased_codecs_keep_no_residual_and_encoding_randomness_is_not_the_shuffle_stream():
    v = joined()
    update = trained(v, "q8")
    assert v.residual_state() is None
    # Same delta, encoded with the training seed's own stream, gives different codes.
    from webfl.core.data import features
    from webfl.core.evaluation import holdout_split
    from webfl.core.training import TrainConfig, local_train

    train, _ = holdout_split(len(DATA), 0.2, 0)  # the volunteer trains on its rows less the holdout
    delta = local_train(MODEL, MODEL.init(0), features(DATA.x)[train], DATA.y[train], TrainConfig(1, 5, 0.1, 3)).params - MODEL.init(0)
    same_stream = get_codec("q8").encode(delta, np.random.default_rng(3))
    ours = get_codec("q8").encode(delta, np.random.default_rng([3, 1]))
    assert ours.params == update["codec_params"]
    np.testing.assert_array_equal(ours.arrays[0], update.arrays[0])
    assert not np.array_equal(same_stream.arrays[0], update.arrays[0])


def test_diverged_training_returns_to_idle_and_says_so(monkeypatch):
    import webfl.core.volunteer as volunteer_module

    real = volunteer_module.train_steps

    def diverging(*args, **kwargs):
        result = yield from real(*args, **kwargs)
        params = result.params.copy()
        params[7] = np.inf
        return type(result)(**{**result.__dict__, "params": params})

    v = joined()
    monkeypatch.setattr(volunteer_module, "train_steps", diverging)
    v.receive(task_frame("q8"))
    with pytest.raises(TrainingDiverged, match="diverged in round 1") as info:
        v.train()
    assert v.state is SessionState.IDLE and v.job is None and v.last_metrics["diverged"]
    assert [decode(f).type for f in info.value.frames] == ["ready"]
    # And it can be selected again.
    v.receive(task_frame("q8", round_=2))
    assert v.state is SessionState.TRAINING


# -- run config ----------------------------------------------------------------------------


def test_run_config_keeps_canonical_specs():
    config = RunConfig.from_json({"codec": " TopK:0.010+Q8 ", "downlink": "Delta:ROT+q4"})
    assert config.codec.spec == "topk:0.01+q8" and config.downlink.spec == "delta:rot+q4"
    assert config.to_dict()["codec"] == "topk:0.01+q8" and config.to_dict()["downlink"] == "delta:rot+q4"
    assert RunConfig.from_json({}).downlink.spec == "none"
    for bad in ("gzip", "delta:", "delta:zip", "fp32", "topk:0.1"):
        with pytest.raises(ValueError, match="downlink"):
            get_downlink(bad)


# -- downlink: what volunteers hold is what the server believes, bit for bit ---------------


def models(n: int):
    rng = np.random.default_rng(0)
    params = MODEL.init(0)
    out = []
    for _ in range(n):
        params = params + rng.normal(0, 0.05, MODEL.size).astype(np.float32)
        out.append(params)
    return out


def follow(frames, held=None, version=-1):
    from webfl.core.protocol import decode as dec

    for frame in frames:
        msg = dec(frame)
        new = apply_model(held, version, msg, MODEL.size)
        if new is not None:
            held, version = new, msg["model_version"]
    return held, version


@pytest.mark.parametrize("downlink", ["none", "fp16", "delta:q8", "delta:topk:0.1+q8", "delta:rot+q2"])
def test_broadcasts_keep_volunteers_bit_exact_with_the_server(downlink):
    chain = ModelChain(MODEL.init(0), 0)
    held, version = follow([chain.full_frame()])
    snapshots = {0: (held, version)}
    for v, params in enumerate(models(6), 1):
        step = chain.prepare(params, v, get_downlink(downlink), np.random.default_rng(v))
        assert chain.version == v - 1  # prepared, not applied: a failed commit leaves the chain alone
        frame = chain.advance(step)
        held, version = follow([frame], held, version)
        assert version == v and held.tobytes() == chain.held.tobytes()
        snapshots[v] = (held, version)
        if downlink.startswith("delta:"):
            assert decode(frame)["base_version"] == v - 1
        # The held model tracks the exact one: its error does not accumulate.
        assert np.abs(chain.held - params).max() < (0.5 if "topk" in downlink or "q2" in downlink else 0.05)
    # Reconnecting volunteers catch up from whatever they hold.
    for v, (old, old_version) in snapshots.items():
        frames = chain.frames_for(old_version, digest(old))
        caught, now = follow(frames, old.copy(), old_version)
        assert now == 6 and caught.tobytes() == chain.held.tobytes()
        recent = downlink.startswith("delta:") and v >= 6 - chain.keep
        assert len(frames) == (6 - v if recent or v == 6 else 1), (v, len(frames))
    # A model the chain never produced gets the full model.
    (full,) = chain.frames_for(6, digest(snapshots[6][0] + 1))
    assert "base_version" not in decode(full).fields
    assert follow([full])[0].tobytes() == chain.held.tobytes()


def test_delta_frames_that_do_not_fit_are_ignored_or_refused():
    chain = ModelChain(MODEL.init(0), 0)
    held, _ = follow([chain.full_frame()])
    q8 = get_downlink("delta:q8")
    first = chain.advance(chain.prepare(models(1)[0], 1, q8, np.random.default_rng(1)))
    stale = chain.prepare(models(2)[1], 2, q8, np.random.default_rng(2))
    second = chain.advance(chain.prepare(models(2)[1], 2, q8, np.random.default_rng(2)))
    with pytest.raises(ValueError, match="chain is at 2"):
        chain.advance(stale)  # prepared on version 1: applying it twice would fork the chain
    # A full model for version 2 raced the delta 0 -> 1: the delta is stale, not an error.
    latest, _ = follow([chain.full_frame()])
    assert apply_model(latest, 2, decode(first), MODEL.size) is None
    with pytest.raises(ProtocolError, match="delta from version 1"):
        apply_model(held, 0, decode(second), MODEL.size)  # a gap
    with pytest.raises(ProtocolError, match="digest"):
        apply_model(held + 1, 0, decode(first), MODEL.size)  # not what the server thinks


def test_volunteer_reports_what_it_holds_in_hello():
    v = joined()
    assert "model_version" not in decode(Volunteer().hello()).fields
    hello = decode(v.hello())
    assert hello["model_version"] == 0 and hello["model_digest"] == digest(MODEL.init(0))
