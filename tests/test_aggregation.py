"""Aggregation rules against NumPy and brute-force references, under attack and abuse."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from webfl.core.aggregation import (
    AGGREGATORS,
    DEFAULT_MEMORY_LIMIT,
    GRAMMAR,
    MIN_HISTORY,
    Aggregator,
    ClippedFedAvg,
    CoordinateMedian,
    FedAvg,
    PRIOR_MEDIAN_NORM,
    MultiKrum,
    NormBound,
    TrimmedMean,
    UpdateRejected,
    get_aggregator,
)
from webfl.core.codecs import Codec, CodecError, Encoded, get_codec

SIZE = 300
RULES = ["fedavg", "clipped", "clipped:0.5", "median", "trimmed_mean:0.2", "multikrum", "multikrum:f=1,m=3"]
NONE = get_codec("none")


def updates(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size)).astype(np.float32) * rng.uniform(0.1, 2.0, (n, 1)).astype(np.float32)
    w = rng.integers(1, 600, n).astype(np.float64)
    return x, w


def run(agg: Aggregator, x: np.ndarray, w: np.ndarray, max_updates: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(1)
    agg.begin(x.shape[1], len(x) if max_updates is None else max_updates)
    for xi, wi in zip(x, w):
        agg.add(NONE, NONE.encode(xi, rng), wi)
    return agg.finish()


def krum_reference(x: np.ndarray, w: np.ndarray, f: int, m: int) -> tuple[np.ndarray, list[int]]:
    """Multi-Krum straight from the paper, one pair at a time."""
    n, x64 = len(x), x.astype(np.float64)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x64[i] - x64[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    selected = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    return np.average(x64[selected], axis=0, weights=w[selected]), selected


# -- the rules against references ----------------------------------------------------


def test_fedavg_is_the_weighted_mean():
    x, w = updates(7)
    expected = np.average(x.astype(np.float64), axis=0, weights=w)
    got = run(FedAvg(), x, w)
    assert got.dtype == np.float32 and got.shape == (SIZE,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # The decoding path a NormBound forces gives the same mean.
    bounded = run(get_aggregator("fedavg", bound=NormBound(max_norm=1e9)), x, w)
    np.testing.assert_allclose(bounded, got, rtol=1e-6, atol=1e-7)


def test_fixed_clipping_matches_manual_clip():
    x, w = updates(8)
    c = float(np.median(np.linalg.norm(x, axis=1)))
    scale = np.minimum(1.0, c / np.linalg.norm(x.astype(np.float64), axis=1))
    expected = np.average(x * scale[:, None], axis=0, weights=w)
    agg = get_aggregator(f"clipped:{c}")
    np.testing.assert_allclose(run(agg, x, w), expected, rtol=1e-5, atol=1e-7)
    assert agg.num_clipped == int((scale < 1).sum()) >= 3


def test_adaptive_clipping_follows_the_running_median_across_rounds():
    agg = get_aggregator("clipped:x=1.5,window=6")
    history: list[float] = []
    for seed in range(3):  # history carries over rounds
        x, w = updates(5, seed=seed)
        clipped = []
        for xi in x.astype(np.float64):
            norm = float(np.linalg.norm(xi))
            recent = history[-6:]
            bound = 1.5 * (float(np.median(recent)) if len(recent) >= MIN_HISTORY else PRIOR_MEDIAN_NORM)
            clipped.append(xi * min(1.0, bound / norm))
            history.append(norm)
        np.testing.assert_allclose(run(agg, x, w), np.average(clipped, axis=0, weights=w), rtol=1e-5, atol=1e-7)
    assert agg.clip_bound == pytest.approx(1.5 * np.median(history[-6:]), rel=1e-5)


def test_adaptive_clipping_uses_initial_bound_before_history():
    x, w = updates(3)
    agg = get_aggregator("clipped:init=0.01")
    scale = np.minimum(1.0, 0.01 / np.linalg.norm(x.astype(np.float64), axis=1))
    np.testing.assert_allclose(run(agg, x, w), np.average(x * scale[:, None], axis=0, weights=w), rtol=1e-5, atol=1e-9)
    # Without one the bound is x times the prior median norm: never unbounded.
    scale = np.minimum(1.0, 2 * PRIOR_MEDIAN_NORM / np.linalg.norm(x.astype(np.float64), axis=1))
    assert scale.max() < 1  # every one of these updates is clipped
    expected = np.average(x * scale[:, None], axis=0, weights=w)
    np.testing.assert_allclose(run(get_aggregator("clipped:x=2"), x, w), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n", [3, 4, 7, 10])
def test_median_is_numpy_median(n):
    x, w = updates(n)
    expected = np.median(x.astype(np.float64), axis=0)
    np.testing.assert_allclose(run(CoordinateMedian(), x, w), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n, beta", [(10, 0.2), (11, 0.2), (9, 0.0), (7, 0.49), (100, 0.29)])
def test_trimmed_mean_is_the_sorted_middle(n, beta):
    x, w = updates(n, size=50)
    k = {0.29: 29}.get(beta, math.floor(beta * n))  # 0.29 * 100 is 28.999999999999996 in floats
    expected = np.sort(x.astype(np.float64), axis=0)[k : n - k].mean(axis=0)
    np.testing.assert_allclose(run(TrimmedMean(beta), x, w), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n, f, m", [(10, 3, 7), (10, 2, 5), (7, 2, 1), (9, 0, 9), (5, None, None), (12, None, 4)])
def test_multikrum_matches_brute_force(n, f, m):
    x, w = updates(n)
    agg = MultiKrum(f, m)
    got = run(agg, x, w)
    f_eff = (n - 3) // 2 if f is None else f
    expected, selected = krum_reference(x, w, f_eff, n - f_eff if m is None else m)
    assert agg.selected.tolist() == selected
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("attack", ["scaled", "sign_flipped"])
def test_multikrum_excludes_planted_outliers(attack):
    rng = np.random.default_rng(3)
    mu = rng.standard_normal(SIZE).astype(np.float32)
    x = (mu + 0.1 * rng.standard_normal((10, SIZE))).astype(np.float32)
    bad = [1, 4, 8]
    x[bad] = x[bad] * (100 if attack == "scaled" else -1)
    agg = get_aggregator("multikrum:f=3")
    run(agg, x, np.ones(10))
    assert set(agg.selected.tolist()) == set(range(10)) - set(bad)


def test_robust_rules_survive_huge_norm_attacks_that_destroy_fedavg():
    rng = np.random.default_rng(4)
    n, size = 20, 1000
    mu = rng.standard_normal(size).astype(np.float32)
    x = (mu + 0.05 * rng.standard_normal((n, size))).astype(np.float32)
    w = rng.integers(50, 100, n).astype(np.float64)
    attackers = rng.choice(n, n // 5, replace=False)
    honest_mean = np.average(np.delete(x, attackers, axis=0), axis=0, weights=np.delete(w, attackers))
    x[attackers] = 1e4 * rng.standard_normal((len(attackers), size))
    w[attackers] = 1000  # and they claim big datasets

    def error(spec: str) -> float:
        return float(np.linalg.norm(run(get_aggregator(spec), x, w) - honest_mean) / np.linalg.norm(mu))

    assert error("fedavg") > 100
    for spec in ("median", "trimmed_mean:0.2", "multikrum", "multikrum:f=4"):
        assert error(spec) < 0.05, spec


# -- memory bounds -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["median", "trimmed_mean", "multikrum"])
def test_buffering_rules_refuse_rounds_over_their_memory_bound(spec):
    agg = get_aggregator(spec)
    size = 199_210  # the 2NN
    assert type(agg).memory_bytes(size, 100) >= 4 * 100 * size
    assert type(agg).memory_bytes(size, 1000) > DEFAULT_MEMORY_LIMIT
    with pytest.raises(ValueError, match="MiB"):
        agg.begin(size, 1000)
    with pytest.raises(ValueError, match="max_updates"):
        agg.begin(size)
    small = get_aggregator(spec, memory_limit=type(agg).memory_bytes(SIZE, 2))
    with pytest.raises(ValueError, match="limit"):
        small.begin(SIZE, 3)
    small.begin(SIZE, 2)  # exactly at the limit
    x, w = updates(5)
    run(get_aggregator(spec), x, w)  # and within the bound it runs


@pytest.mark.parametrize("spec", ["fedavg", "clipped", "median", "trimmed_mean", "multikrum", "multikrum:m=1"])
def test_memory_bound_holds_the_measured_peak(spec):
    size, n = 60_000, 24
    rng = np.random.default_rng(7)
    encoded = [NONE.encode(rng.standard_normal(size).astype(np.float32), rng) for _ in range(n)]
    agg = get_aggregator(spec)
    tracemalloc.start()  # NumPy reports its data buffers to tracemalloc
    try:
        agg.begin(size, n)
        for enc in encoded:
            agg.add(NONE, enc, 1.0)
        agg.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 4 * n * size * agg.buffered <= peak <= type(agg).memory_bytes(size, n)


def test_streaming_rules_need_no_update_count_and_refuse_nothing():
    for spec in ("fedavg", "clipped"):
        agg = get_aggregator(spec, memory_limit=1)
        assert not agg.buffered and type(agg).memory_bytes(1000) < 2**21
        agg.begin(1000)
        agg.begin(1000, 10**9)


# -- validation ----------------------------------------------------------------------


class LooseCodec:
    """A buggy codec that hands back whatever it was sent, unchecked."""

    def decode(self, enc, size):
        return enc.arrays[0]


def bad_inputs(size: int) -> list[tuple[Codec, Encoded, float, type[Exception]]]:
    rng = np.random.default_rng(5)
    good = rng.standard_normal(size).astype(np.float32)
    nan, inf = good.copy(), good.copy()
    nan[3], inf[-1] = np.nan, -np.inf
    # Hand-built "none" payloads ({}; <f4[n]): encode refuses to produce these.
    return [
        (NONE, NONE.encode(good[:-1], rng), 1.0, CodecError),
        (NONE, Encoded({}, (nan,)), 1.0, CodecError),
        (NONE, Encoded({}, (inf,)), 1.0, CodecError),
        (NONE, Encoded({}, (good.astype(np.float64),)), 1.0, CodecError),
        (NONE, Encoded({}, (good, good)), 1.0, CodecError),
        (NONE, NONE.encode(good, rng), 0.0, ValueError),
        (NONE, NONE.encode(good, rng), -3.0, ValueError),
        (NONE, NONE.encode(good, rng), float("nan"), ValueError),
        (NONE, NONE.encode(good, rng), float("inf"), ValueError),
    ]


@pytest.mark.parametrize("spec", RULES)
def test_malformed_updates_raise_and_leave_the_rule_unchanged(spec):
    x, w = updates(6)
    clean = run(get_aggregator(spec), x, w)
    agg = get_aggregator(spec)
    agg.begin(SIZE, len(x))
    rng = np.random.default_rng(2)
    bad = bad_inputs(SIZE)
    if spec != "fedavg":  # rules that decode re-check what a buggy codec lets through
        loose_nan = np.full(SIZE, np.nan, dtype=np.float32)
        bad += [(LooseCodec(), Encoded({}, (loose_nan,)), 1.0, CodecError)]
        bad += [(LooseCodec(), Encoded({}, (np.ones(SIZE, dtype=np.float64),)), 1.0, CodecError)]
    for xi, wi in zip(x, w):  # every kind of bad input, between every two good ones
        for codec, enc, weight, error in bad:
            before = (agg.count, agg.total_weight)
            with pytest.raises(error):
                agg.add(codec, enc, weight)
            assert (agg.count, agg.total_weight) == before
        agg.add(NONE, NONE.encode(xi, rng), wi)
    with pytest.raises(ValueError, match="already holds"):  # a full round takes no more
        agg.add(NONE, NONE.encode(x[0], rng), 1.0)
    assert agg.count == len(x)
    np.testing.assert_array_equal(agg.finish(), clean)


def test_round_lifecycle():
    agg = get_aggregator("median")
    with pytest.raises(ValueError, match="begin"):
        agg.add(NONE, NONE.encode(np.ones(SIZE, dtype=np.float32), np.random.default_rng(0)), 1.0)
    agg.begin(SIZE, 3)
    with pytest.raises(ValueError, match="no updates"):
        agg.finish()
    x, w = updates(3)
    first = run(agg, x, w)
    with pytest.raises(ValueError, match="begin"):
        agg.finish()  # finish ends the round and frees the buffer
    np.testing.assert_array_equal(run(agg, x, w), first)  # and the rule is reusable


def test_abort_frees_the_round_and_check_memory_allocates_nothing():
    agg = get_aggregator("trimmed_mean")
    agg.check_memory(SIZE, 10)
    with pytest.raises(ValueError, match="MiB"):
        agg.check_memory(10**9, 10**3)  # would be 4 TB: refused without trying
    agg.begin(SIZE, 10)
    agg.abort()
    assert agg._buf is None
    with pytest.raises(ValueError, match="begin"):
        agg.finish()


def test_multikrum_refuses_too_few_updates_for_its_f_and_keeps_them():
    x, w = updates(7)
    agg = get_aggregator("multikrum:f=2")
    agg.begin(SIZE, 7)
    rng = np.random.default_rng(0)
    for xi, wi in zip(x[:6], w[:6]):
        agg.add(NONE, NONE.encode(xi, rng), wi)
    with pytest.raises(ValueError, match="at least 7"):
        agg.finish()
    agg.add(NONE, NONE.encode(x[6], rng), w[6])
    np.testing.assert_array_equal(agg.finish(), run(get_aggregator("multikrum:f=2"), x, w))


def test_multikrum_distances_survive_nearly_identical_updates():
    # Updates that differ by ~1e-4 of their norm: a float32 Gram matrix would drown the
    # distances in cancellation error and pick the wrong ones.
    rng = np.random.default_rng(6)
    base = 100 * rng.standard_normal(5000)
    x = (base + 1e-2 * rng.standard_normal((9, 5000))).astype(np.float32)
    x[0] = (base + 5e-2 * rng.standard_normal(5000)).astype(np.float32)  # the odd one out
    agg = get_aggregator("multikrum:f=1,m=8")
    got = run(agg, x, np.ones(9))
    expected, selected = krum_reference(x, np.ones(9), 1, 8)
    assert agg.selected.tolist() == selected and 0 not in selected
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# -- the norm bound ------------------------------------------------------------------


def test_adaptive_norm_bound_rejects_a_100x_update_after_history():
    bound = NormBound(factor=10)
    # No history yet: 10 times the prior median norm, not unbounded.
    assert bound.limit == 10 * PRIOR_MEDIAN_NORM and "prior" in bound.check(1e6)
    for norm in [1.0, 1.2, 0.9, 1.1, 1.0, 0.8]:
        assert bound.check(norm) is None
        bound.record(norm)
    assert bound.limit == pytest.approx(10.0)
    assert "median" in bound.check(100.0)
    assert bound.check(5.0) is None
    assert "finite" in bound.check(float("nan"))
    fixed = NormBound(max_norm=2.0, factor=10)
    assert "fixed" in fixed.check(3.0) and fixed.check(1.0) is None
    assert NormBound(factor=10, initial=0.5).limit == 0.5


@pytest.mark.parametrize("spec", ["fedavg", "clipped", "median", "multikrum"])
def test_rules_with_a_norm_bound_reject_outliers_without_learning_from_them(spec):
    x, w = updates(8)
    x[:7] /= np.linalg.norm(x[:7], axis=1, keepdims=True)  # honest: unit norm
    x[7] *= 100 / np.linalg.norm(x[7])
    bound = NormBound(factor=10)
    agg = get_aggregator(spec, bound=bound)
    agg.begin(SIZE, 8)
    rng = np.random.default_rng(0)
    for xi, wi in zip(x[:7], w[:7]):
        agg.add(NONE, NONE.encode(xi, rng), wi)
    with pytest.raises(UpdateRejected, match="median"):
        agg.add(NONE, NONE.encode(x[7], rng), w[7])
    assert agg.count == 7 and len(bound._recent) == 7
    np.testing.assert_array_equal(agg.finish(), run(get_aggregator(spec), x[:7], w[:7], max_updates=8))


# -- specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("fedavg", "fedavg"),
        (" FedAvg ", "fedavg"),
        ("clipped", "clipped:x=1,window=100"),
        ("clipped:5.0", "clipped:c=5"),
        ("clipped:c=0.25", "clipped:c=0.25"),
        ("clipped:x=2, window=50, init=3", "clipped:x=2,window=50,init=3"),
        ("median", "median"),
        ("trimmed_mean", "trimmed_mean:beta=0.1"),
        ("trimmed_mean:0.2", "trimmed_mean:beta=0.2"),
        ("trimmed_mean:beta=0", "trimmed_mean:beta=0"),
        ("multikrum", "multikrum"),
        ("multikrum:m=5,f=2", "multikrum:f=2,m=5"),
        ("multikrum:f=0", "multikrum:f=0"),
    ],
)
def test_good_specs_canonicalise(spec, canonical):
    agg = get_aggregator(spec)
    assert agg.spec == canonical
    assert get_aggregator(canonical).spec == canonical
    info = agg.describe()
    assert info["name"] == agg.name in AGGREGATORS and info["spec"] == canonical


@pytest.mark.parametrize(
    "spec",
    [
        "", "mean", "median:3", "median:", "fedavg:x=1", "clipped:0", "clipped:-1", "clipped:nan",
        "clipped:inf", "clipped:5,x=2", "clipped:c=5,window=3", "clipped:5,c=5", "clipped:x=2,window=0",
        "clipped:window=2.5", "trimmed_mean:0.5", "trimmed_mean:-0.1", "trimmed_mean:0.1,beta=0.2",
        "trimmed_mean:abc", "trimmed_mean:0.1,0.2", "multikrum:2", "multikrum:f=-1", "multikrum:m=0",
        "multikrum:f=1.5", "multikrum:f=1,f=2", "multikrum:k=3", "multikrum:f=", "multikrum:f=1,,m=2",
    ],
)
def test_bad_specs_raise_naming_the_grammar(spec):
    with pytest.raises(ValueError) as err:
        get_aggregator(spec)
    assert GRAMMAR in str(err.value)


def test_old_style_construction_still_works():
    assert isinstance(AGGREGATORS["fedavg"](), FedAvg)
    assert isinstance(get_aggregator("clipped"), ClippedFedAvg)
    x, w = updates(4)
    agg = FedAvg()
    agg.begin(SIZE)  # no max_updates: streaming rules do not need it
    for xi, wi in zip(x, w):
        agg.add(NONE, NONE.encode(xi, np.random.default_rng(0)), wi)
    np.testing.assert_allclose(agg.finish(), np.average(x, axis=0, weights=w), rtol=1e-6, atol=1e-7)


# -- partial sums (a cluster's followers fold shares of a round) -----------------------


def test_shares_folded_apart_and_merged_commit_what_one_rule_folding_all_would():
    # Dyadic values and weights: every float64 sum is exact, so the order cannot matter.
    rng = np.random.default_rng(3)
    x = (rng.integers(-64, 64, (9, SIZE)) / 64).astype(np.float32)
    w = rng.integers(1, 50, 9).astype(np.float64)
    whole = run(FedAvg(), x, w)
    leader, shares = FedAvg(), [FedAvg(), FedAvg()]
    leader.begin(SIZE, 9)
    for agg in shares:
        agg.begin(SIZE, 9)
    for i, (xi, wi) in enumerate(zip(x, w)):
        target = leader if i < 3 else shares[i % 2]
        target.add(NONE, NONE.encode(xi, rng), wi)
    for agg in shares:
        leader.merge(agg.partial())
    assert leader.count == 9 and leader.total_weight == w.sum()
    np.testing.assert_array_equal(leader.finish(), whole)


@pytest.mark.parametrize("bad, says", [
    (lambda s: s.__class__(s.sum.astype(np.float32), s.count, s.total_weight), "float64"),
    (lambda s: s.__class__(s.sum[:-1], s.count, s.total_weight), "float64"),
    (lambda s: s.__class__(np.where(np.arange(SIZE) == 7, np.nan, s.sum), s.count, s.total_weight), "NaN"),
    (lambda s: s.__class__(s.sum, 0, s.total_weight), "at least one"),
    (lambda s: s.__class__(s.sum, 8, s.total_weight), "exceed"),
    (lambda s: s.__class__(s.sum, s.count, -1.0), "weight"),
    (lambda s: s.__class__(s.sum, s.count, math.inf), "weight"),
])
def test_a_partial_sum_that_does_not_fit_the_round_leaves_the_rule_unchanged(bad, says):
    x, w = updates(4)
    share = FedAvg()
    share.begin(SIZE, 4)
    share.add(NONE, NONE.encode(x[0], np.random.default_rng(0)), w[0])
    leader = FedAvg()
    leader.begin(SIZE, 4)
    leader.add(NONE, NONE.encode(x[1], np.random.default_rng(0)), w[1])
    before = leader.partial()
    with pytest.raises(ValueError, match=says):
        leader.merge(bad(share.partial()))
    after = leader.partial()
    assert (after.count, after.total_weight) == (before.count, before.total_weight)
    np.testing.assert_array_equal(after.sum, before.sum)


@pytest.mark.parametrize("spec", ["clipped", "clipped:0.5", "median", "trimmed_mean:0.2", "multikrum"])
def test_only_plain_weighted_sums_merge(spec):
    assert not get_aggregator(spec).mergeable
    assert FedAvg().mergeable and not FedAvg(bound=NormBound(max_norm=5.0)).mergeable
