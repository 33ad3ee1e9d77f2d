"""The ``secagg`` run setting: parsed once, round-tripped through the store's JSON, refused
(with the reason, the admin API's 400) with everything that needs individual updates, and
the default degree that survives 30% dropout."""

import json

import numpy as np
import pytest

from webfl.core.secagg import NeighbourGraph
from webfl.server.engine import RunConfig
from webfl.server.secagg import SecAggSettings, default_neighbors


def test_settings_round_trip_and_defaults():
    config = RunConfig.from_json({"clients_per_round": 10, "min_updates": 3, "secagg": {"clip": 2.0}})
    assert config.secagg == SecAggSettings(clip=2.0)
    out = config.to_dict()
    assert out["secagg"] == {"neighbors": None, "threshold": None, "bits": 8, "range": None, "clip": 2.0, "stage_s": 10.0}
    assert RunConfig.from_json(json.loads(json.dumps(out))) == config  # how a run resumes
    assert RunConfig.from_json({}).secagg is None and RunConfig.from_json({}).to_dict()["secagg"] is None


def test_a_dp_run_takes_its_clip_and_is_clipped_a_little_tighter_for_the_rounding():
    config = RunConfig.from_json({"clients_per_round": 10, "min_updates": 3, "dp": {"noise_multiplier": 1.0, "clip": 0.5},
                                  "secagg": {"bits": 8}})
    params = config.secagg.for_round(10, 10_000, 0.5, dp=True)
    q = params.quantizer
    # Rounding moves each coordinate by under one step: the quantized norm stays within dp.clip.
    assert q.clip + 2 * q.range / q.levels * np.sqrt(10_000) == pytest.approx(0.5)
    assert q.range == pytest.approx(4 * 0.5 / 100)
    assert config.secagg.for_round(10, 10_000, 0.5, dp=False).quantizer.clip == 0.5


def test_neighbors_are_capped_at_the_cohort_and_the_threshold_defaults_to_a_majority():
    params = SecAggSettings(clip=1.0, neighbors=50).for_round(6, 100, 1.0, dp=False)
    assert (params.neighbors, params.threshold) == (5, 3)
    with pytest.raises(ValueError, match="fewer than the threshold"):
        SecAggSettings(clip=1.0, threshold=5).for_round(4, 100, 1.0, dp=False)


@pytest.mark.parametrize("n", [10, 20, 50, 100])
def test_the_default_degree_survives_30_percent_dropout(n):
    """Measured on the real graph: with k = default_neighbors(n), t = floor(k/2) + 1, and 30%
    of the cohort gone, every volunteer keeps t neighbours in at least 98% of 300 draws."""
    k = default_neighbors(n)
    t, rng, ok = k // 2 + 1, np.random.default_rng(n), 0
    for _ in range(300):
        adjacency = NeighbourGraph(n, k, rng.bytes(32)).adjacency
        alive = np.ones(n, bool)
        alive[rng.choice(n, round(0.3 * n), replace=False)] = False
        ok += bool(((adjacency & alive).sum(axis=1) >= t).all())
    assert ok >= 0.98 * 300, (n, k, ok)
    assert k < n - 1 or n <= 20  # and it is not simply the complete graph for larger cohorts


@pytest.mark.parametrize(("body", "why"), [
    ({"mode": "fedbuff"}, "FedBuff"),
    ({"aggregator": "median"}, "needs each update"),
    ({"aggregator": "trimmed_mean:0.2"}, "needs each update"),
    ({"aggregator": "multikrum:f=1"}, "needs each update"),
    ({"aggregator": "clipped"}, "needs each update"),
    ({"norm_bound": "3.0"}, "norm bound"),
    ({"codec": "q8"}, "quantizes updates itself"),
    ({"min_updates": 1}, "min_updates must be at least 2"),
    ({"dp": {"noise_multiplier": 1.0, "clip": "adaptive", "count_noise": 1.0}}, "adaptive clipping"),
    ({"dp": {"noise_multiplier": 1.0, "clip": 1.0}, "secagg": {"clip": 1.0}}, "cannot be set in a dp run"),
    ({"secagg": {}}, "secagg.clip is required"),
    ({"secagg": {"clip": 1.0, "neighbors": 4, "threshold": 5}}, "exceeds the 4 neighbours"),
    ({"clients_per_round": 4, "secagg": {"clip": 1.0, "threshold": 4}}, "needs a cohort of at least 5"),
    ({"secagg": {"clip": 1.0, "bits": 30}}, "secagg.bits"),
    ({"clients_per_round": 1001}, "2 to 1000 volunteers"),
    ({"secagg": {"clip": 1.0, "stage_s": 0}}, "secagg.stage_s"),
    ({"secagg": {"clip": 1.0, "mask": "x"}}, "unknown field"),
    ({"secagg": {"clip": -1}}, "secagg.clip"),
])
def test_refused_combinations_say_why(body, why):
    with pytest.raises(ValueError, match="secagg") as info:
        RunConfig.from_json({"rounds": 1, "clients_per_round": 8, "min_updates": 2, "secagg": {"clip": 1.0}, **body})
    assert why in str(info.value)


