"""The DP mechanism in the core: clipping, CSPRNG noise, the streaming release, adaptive clipping."""

import math

import numpy as np
import pytest
from scipy import stats
from test_volunteer import DATA, TASK

from webfl import __version__
from webfl.core.privacy import AdaptiveClip, ClipVerdict, DPSum, Mechanism, ReleaseState, SecureGaussian, l2_clip, split_noise
from webfl.core.protocol import Message, ProtocolError, decode, encode
from webfl.core.volunteer import Volunteer

# Two-sided tests at this level: a correct implementation fails one in 10,000 runs.
ALPHA = 1e-4


def unit(rng, n, norm):
    v = rng.standard_normal(n)
    return (v * (norm / np.linalg.norm(v))).astype(np.float32)


# -- clipping ----------------------------------------------------------------


def test_clip_scales_to_the_bound_and_keeps_the_direction():
    rng = np.random.default_rng(0)
    d = unit(rng, 10_000, 7.5)
    before = d.copy()
    c, norm = l2_clip(d, 2.0)
    assert norm == pytest.approx(7.5, rel=1e-6)
    assert np.linalg.norm(c.astype(np.float64)) == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(c, d * np.float32(2.0 / norm), rtol=1e-6)
    assert c.dtype == np.float32
    np.testing.assert_array_equal(d, before)  # the input is not modified


def test_clip_leaves_a_small_update_exactly_as_it_is():
    d = unit(np.random.default_rng(1), 100, 0.5)
    c, norm = l2_clip(d, 1.0)
    np.testing.assert_array_equal(c, d)
    assert c is not d and norm == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_clip_refuses_a_bad_bound(bound):
    with pytest.raises(ValueError, match="clip bound"):
        l2_clip(np.ones(3, np.float32), bound)


def test_clip_refuses_a_non_finite_update():
    with pytest.raises(ValueError, match="non-finite"):
        l2_clip(np.array([1.0, np.inf], np.float32), 1.0)


# -- noise -------------------------------------------------------------------


def test_secure_gaussian_is_standard_normal():
    n = 400_001  # odd: the last pair is cut
    x = SecureGaussian().standard_normal(n)
    assert x.shape == (n,) and x.dtype == np.float64
    # Variance: (n-1) s^2 ~ chi2(n-1); mean: sqrt(n) xbar ~ N(0, 1); shape: Kolmogorov-Smirnov.
    chi = (n - 1) * x.var(ddof=1)
    assert stats.chi2.ppf(ALPHA / 2, n - 1) < chi < stats.chi2.ppf(1 - ALPHA / 2, n - 1)
    assert abs(math.sqrt(n) * x.mean()) < stats.norm.ppf(1 - ALPHA / 2)
    assert stats.kstest(x, "norm").pvalue > ALPHA


def test_secure_gaussian_uses_its_byte_source_and_checks_it():
    calls = []

    def source(k):
        calls.append(k)
        return bytes(range(256)) * (k // 256) + bytes(range(k % 256))

    a, b = SecureGaussian(source).standard_normal(5), SecureGaussian(source).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    assert calls == [48, 48] and np.isfinite(a).all()
    with pytest.raises(RuntimeError, match="returned 3 bytes"):
        SecureGaussian(lambda k: b"abc").standard_normal(4)


def test_noise_ignores_numpy_seeds():
    np.random.seed(0)
    a = SecureGaussian().standard_normal(8)
    np.random.seed(0)
    assert not np.array_equal(a, SecureGaussian().standard_normal(8))


# -- the release ---------------------------------------------------------------


def dpsum(clip=1.0, z=1.0, m=10, **kw) -> DPSum:
    s = DPSum(clip=clip, noise_multiplier=z, expected_cohort=m, **kw)
    return s


def test_release_noise_has_std_z_times_c_over_many_draws():
    """Noise of each release, measured: release * m - (noiseless sum), 20 releases of 20k values."""
    z, c, m, size = 1.3, 0.7, 25, 20_000
    rng = np.random.default_rng(2)
    updates = [unit(rng, size, 0.5) for _ in range(5)]
    noiseless = np.sum([u.astype(np.float64) for u in updates], axis=0)
    s, noise = dpsum(c, z, m), []
    for _ in range(20):
        s.begin(size)
        for u in updates:
            s.add(u)
        r = s.finish()
        assert r.noise_std == pytest.approx(z * c)
        noise.append(r.delta.astype(np.float64) * m - noiseless)
    noise = np.concatenate(noise)
    n = noise.size
    # float32 rounding of the released delta adds ~1e-7 relative error: far below the test's resolution.
    chi = np.sum(noise**2) / (z * c) ** 2  # chi2(n) with the known zero mean
    assert stats.chi2.ppf(ALPHA / 2, n) < chi < stats.chi2.ppf(1 - ALPHA / 2, n)
    assert abs(noise.mean()) / (z * c / math.sqrt(n)) < stats.norm.ppf(1 - ALPHA / 2)


def test_release_never_equals_the_noiseless_aggregate():
    rng = np.random.default_rng(3)
    s = dpsum(1.0, 0.5, 4)
    s.begin(1000)
    updates = [unit(rng, 1000, 0.3) for _ in range(4)]
    for u in updates:
        s.add(u)
    r = s.finish()
    noiseless = (np.sum(updates, axis=0, dtype=np.float64) / 4).astype(np.float32)
    assert not np.array_equal(r.delta, noiseless)
    assert np.count_nonzero(r.delta == noiseless) < 5  # every coordinate carries noise


def test_two_releases_of_the_same_round_differ():
    u = unit(np.random.default_rng(4), 50, 2.0)
    out = []
    for _ in range(2):
        s = dpsum(1.0, 1.0, 3)
        s.begin(50)
        s.add(u)
        out.append(s.finish().delta)
    assert not np.array_equal(*out)


def test_reclipping_is_exact_and_divides_by_the_expected_cohort():
    rng = np.random.default_rng(5)
    small, edge, big = unit(rng, 64, 0.4), unit(rng, 64, 1.0 + 1e-4), unit(rng, 64, 50.0)
    s = dpsum(clip=1.0, z=0.0, m=8)
    s.begin(64)
    assert s.add(small, clipped=False) is ClipVerdict.WITHIN
    assert s.add(edge, clipped=True) is ClipVerdict.CODEC
    assert s.add(big, clipped=False) is ClipVerdict.EXCESS  # a sender that did not clip
    r = s.finish()
    expected = (small.astype(np.float64) + edge / np.linalg.norm(edge.astype(np.float64)) + big / np.linalg.norm(big.astype(np.float64))) / 8
    np.testing.assert_allclose(r.delta, expected, rtol=1e-6, atol=1e-9)
    assert r.count == 3 and r.noise_std == 0.0 and r.clip == 1.0
    assert r.verdicts == {"within": 1, "codec": 1, "excess": 1}
    assert r.clipped == 2  # the edge one by report, the big one despite its report


def test_one_volunteer_moves_the_noiseless_release_by_at_most_c_over_m():
    rng = np.random.default_rng(6)
    others = [unit(rng, 200, 3.0) for _ in range(5)]
    out = []
    for extra in ([], [unit(rng, 200, 1e6)]):
        s = dpsum(clip=1.5, z=0.0, m=6)
        s.begin(200)
        for u in others + extra:
            s.add(u)
        out.append(s.finish().delta.astype(np.float64))
    assert np.linalg.norm(out[1] - out[0]) == pytest.approx(1.5 / 6, rel=1e-5)


def test_staleness_weight_scales_and_cannot_raise_sensitivity():
    u = unit(np.random.default_rng(7), 10, 4.0)
    s = dpsum(clip=1.0, z=0.0, m=1)
    s.begin(10)
    s.add(u, weight=0.5)
    assert np.linalg.norm(s.finish().delta.astype(np.float64)) == pytest.approx(0.5, rel=1e-6)
    s.begin(10)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        s.add(u, weight=3.0)


@pytest.mark.parametrize(
    "bad, why",
    [
        (np.ones(9, np.float32), "float vector of 10"),
        (np.ones(10, np.int32), "float vector"),
        (np.array([np.nan] + [0.0] * 9, np.float32), "non-finite"),
        (np.array([1e38] * 10, np.float32), None),  # float32 overflow of the norm is fine in float64
    ],
)
def test_bad_updates_are_refused_and_leave_the_sum_unchanged(bad, why):
    good = unit(np.random.default_rng(8), 10, 0.5)
    s = dpsum(clip=1.0, z=0.0, m=2)
    s.begin(10)
    s.add(good)
    if why is None:
        assert s.add(bad) is ClipVerdict.EXCESS
        return
    with pytest.raises(ValueError, match=why):
        s.add(bad)
    r = s.finish()
    assert r.count == 1
    np.testing.assert_allclose(r.delta, good / 2, rtol=1e-6)


def test_release_state_machine():
    s = dpsum()
    with pytest.raises(RuntimeError, match="add in state idle"):
        s.add(np.zeros(3, np.float32))
    s.begin(3)
    assert s.state is ReleaseState.OPEN
    with pytest.raises(RuntimeError, match="begin in state open"):
        s.begin(3)
    s.abandon()
    assert s.state is ReleaseState.IDLE
    with pytest.raises(RuntimeError, match="finish in state idle"):
        s.finish()


def test_release_settings_are_validated():
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPSum(clip=1.0, noise_multiplier=-1.0, expected_cohort=3)
    with pytest.raises(ValueError, match="expected_cohort"):
        DPSum(clip=1.0, noise_multiplier=1.0, expected_cohort=0)
    with pytest.raises(ValueError, match="clip"):
        DPSum(clip=0.0, noise_multiplier=1.0, expected_cohort=3)


# -- adaptive clipping -----------------------------------------------------------


def test_noise_split_composes_back_to_the_operators_multiplier():
    z, sigma_b = 1.1, 2.5
    z_sum = split_noise(z, sigma_b)
    assert z_sum**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)
    assert split_noise(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="count_noise must be more than noise_multiplier/2"):
        split_noise(2.0, 1.0)
    s = DPSum(clip=AdaptiveClip(0.1, count_noise=sigma_b), noise_multiplier=z, expected_cohort=50)
    assert s.mechanism == Mechanism(z_sum, 2 * sigma_b)


def test_adaptive_step_is_geometric_towards_the_quantile():
    rng = np.random.default_rng(9)
    a = AdaptiveClip(1.0, target_quantile=0.5, clip_lr=0.2, count_noise=0.0)
    s = DPSum(clip=a, noise_multiplier=0.0, expected_cohort=4)
    s.begin(16)
    for _ in range(4):
        s.add(unit(rng, 16, 3.0), clipped=True)  # everyone clipped: the clip must grow
    r = s.finish()
    assert r.unclipped_fraction == 0.0 and r.clip == 1.0
    assert r.next_clip == pytest.approx(math.exp(0.2 * 0.5)) and s.clip == r.next_clip
    s.begin(16)
    for _ in range(4):
        s.add(unit(rng, 16, 0.1), clipped=False)
    r = s.finish()
    assert r.unclipped_fraction == 1.0 and s.clip == pytest.approx(1.0)  # and back


def test_adaptive_clip_converges_to_the_target_quantile_of_the_norms():
    rng = np.random.default_rng(10)
    s = DPSum(clip=AdaptiveClip(0.05, target_quantile=0.5, clip_lr=0.2, count_noise=100 / 20), noise_multiplier=1.0, expected_cohort=100)
    for _ in range(150):
        s.begin(4)
        for norm in rng.lognormal(mean=0.0, sigma=0.5, size=100):  # median norm 1.0
            u = unit(rng, 4, norm)
            s.add(*(lambda c: (c[0], c[1] > s.clip))(l2_clip(u, s.clip)))
        s.finish()
    assert 0.8 < s.clip < 1.25


def test_missing_report_counts_an_update_at_the_bound_as_clipped():
    s = DPSum(clip=AdaptiveClip(1.0, count_noise=0.0), noise_multiplier=0.0, expected_cohort=2)
    rng = np.random.default_rng(11)
    s.begin(8)
    s.add(l2_clip(unit(rng, 8, 5.0), 1.0)[0])
    s.add(unit(rng, 8, 0.2))
    assert s.finish().clipped == 1


def test_a_secure_aggregation_sum_leaves_the_clipped_count_unknown_not_zero():
    """The server never sees a summed update's clipped bit: 0 clipped would be a false figure."""
    s = DPSum(clip=1.0, noise_multiplier=0.0, expected_cohort=3)
    rng = np.random.default_rng(12)
    s.begin(8)
    s.add_sum(np.sum([l2_clip(unit(rng, 8, 5.0), 1.0)[0] for _ in range(3)], axis=0), 3)
    r = s.finish()
    assert r.count == 3 and r.clipped is None
    s.begin(8)
    s.add(l2_clip(unit(rng, 8, 5.0), 1.0)[0])
    assert s.finish().clipped == 1  # the next round, in the clear, counts again


# -- the volunteer clips before the codec ----------------------------------------

CONFIG = {"epochs": 2, "batch_size": 5, "lr": 0.5, "seed": 3}


def frame(kind, arrays=(), **fields):
    return encode(Message(kind, fields, arrays))


def trained(codec="none", **task_fields):
    v = Volunteer(DATA)
    v.hello()
    v.receive(frame("welcome", version=__version__, volunteer="v1", task=TASK.to_dict(), shard=None))
    v.receive(frame("model", (TASK.build_model().init(0),), model_version=0, codec="none", codec_params={}))
    v.receive(frame("task", round=1, model_version=0, deadline_s=30.0, config=CONFIG, codec=codec, token="t", **task_fields))
    return decode(v.train())


def raw_delta():
    """The same volunteer's delta without a clip (it trains on its split less the holdout)."""
    update = trained()
    assert "clipped" not in update.fields
    return update.arrays[0]


def test_volunteer_clips_its_delta_and_reports_it():
    raw = raw_delta()
    norm = float(np.linalg.norm(raw.astype(np.float64)))
    update = trained(clip=norm / 4)
    assert update["clipped"] is True
    np.testing.assert_allclose(update.arrays[0], raw * np.float32(0.25), rtol=1e-5)
    update = trained(clip=norm * 2)
    assert update["clipped"] is False
    np.testing.assert_array_equal(update.arrays[0], raw)


def test_volunteer_clips_before_the_codec():
    raw = raw_delta()
    c = float(np.linalg.norm(raw.astype(np.float64))) / 3
    from webfl.core.codecs import get_codec
    from webfl.core.codecs import Encoded

    update = trained("fp16", clip=c)
    decoded = get_codec("fp16").decode(Encoded(update["codec_params"], update.arrays), raw.size)
    assert np.linalg.norm(decoded.astype(np.float64)) == pytest.approx(c, rel=1e-3)


def test_without_clip_the_update_has_no_clipped_field():
    assert "clipped" not in trained().fields


@pytest.mark.parametrize("clip", [0, -1.5])
def test_volunteer_refuses_a_non_positive_clip(clip):
    with pytest.raises(ProtocolError, match="clip must be positive"):
        trained(clip=clip)


def test_protocol_types_the_dp_fields():
    with pytest.raises(ProtocolError, match="'clip' has the wrong type"):
        frame("task", round=1, model_version=0, deadline_s=1.0, config={}, codec="none", token="t", clip="1")
    fields = dict(round=1, model_version=0, num_examples=1, loss=0.0, accuracy=0.0, codec="none", codec_params={}, token="t")
    with pytest.raises(ProtocolError, match="'clipped' has the wrong type"):
        frame("update", **fields, clipped=1)
    assert decode(frame("update", **fields, clipped=False))["clipped"] is False
    with pytest.raises(ProtocolError, match="'round' has the wrong type"):
        frame("update", **{**fields, "round": True})  # bools are still no numbers
