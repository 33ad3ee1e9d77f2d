"""The server side of DP: the ``"dp"`` settings, what they combine with, the accountant."""

import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from webfl.core.privacy import AdaptiveClip, Mechanism
from webfl.server.privacy import Accountant, AccountantKind, DPSettings, Sampling, check_compatible


def parse(m=10, **obj):
    return DPSettings.from_json({"noise_multiplier": 1.0, "clip": 1.0, **obj}, expected_cohort=m)


# -- settings -------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    s = parse()
    assert (s.delta, s.max_epsilon, s.sampling, s.accountant, s.population) == (1e-5, None, Sampling.NONE, AccountantKind.RDP, None)
    assert s.clip == 1.0 and s.adaptive is None and s.mechanism == Mechanism(1.0) and s.sampling_rate is None
    a = parse(m=200, clip="adaptive")
    assert a.clip is None and a.adaptive == AdaptiveClip(0.1, target_quantile=0.5, clip_lr=0.2, count_noise=10.0)
    assert a.mechanism.count_multiplier == 20.0


def test_settings_round_trip_through_json():
    for s in (parse(clip="adaptive", count_noise=3.0, initial_clip=0.5, max_epsilon=8.0, accountant="pld"),
              parse(m=50, sampling="poisson", population=10_000, delta=1e-6)):
        again = DPSettings.from_json(json.loads(json.dumps(s.to_json())), expected_cohort=s.expected_cohort)
        assert again == s


def test_poisson_rate_is_cohort_over_population():
    assert parse(m=50, sampling="poisson", population=10_000, delta=1e-6).sampling_rate == 0.005


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"clip": 1.0}, "dp.noise_multiplier is required"),
        ({"noise_multiplier": 1.0}, "dp.clip is required"),
        ({"noise_multiplier": -0.1, "clip": 1.0}, r"dp.noise_multiplier must be in \[0, inf\]"),
        ({"noise_multiplier": True, "clip": 1.0}, "dp.noise_multiplier must be a finite number"),
        ({"noise_multiplier": "1", "clip": 1.0}, "dp.noise_multiplier must be a finite number"),
        ({"noise_multiplier": 1.0, "clip": 0}, r"dp.clip must be in \(0, inf\]"),
        ({"noise_multiplier": 1.0, "clip": "fixed"}, "dp.clip must be a positive number or 'adaptive'"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "delta": 1.0}, r"dp.delta must be in \(0, 1\)"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "delta": 0}, r"dp.delta must be in \(0, 1\)"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "max_epsilon": 0}, "dp.max_epsilon must be in"),
        ({"noise_multiplier": 0, "clip": 1.0, "max_epsilon": 5}, "dp.max_epsilon needs dp.noise_multiplier > 0"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "sampling": "uniform"}, "dp.sampling must be 'none' | 'poisson'"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "accountant": "moments"}, "dp.accountant must be 'rdp' | 'pld'"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "sampling": "poisson"}, "dp.population is required with dp.sampling 'poisson'"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "sampling": "poisson", "population": 5}, "dp.population must be an integer >= the expected cohort size 10"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "sampling": "poisson", "population": 1000, "delta": 0.01}, "dp.delta must be below 1/population"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "population": 1000}, "dp.population is only used with dp.sampling 'poisson'"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "clip_lr": 0.1}, "dp.clip_lr is only used with dp.clip 'adaptive'"),
        ({"noise_multiplier": 1.0, "clip": "adaptive", "target_quantile": 1.5}, r"dp.target_quantile must be in \[0, 1\]"),
        ({"noise_multiplier": 1.0, "clip": "adaptive", "clip_lr": 0}, "dp.clip_lr must be in"),
        ({"noise_multiplier": 1.0, "clip": "adaptive", "initial_clip": -1}, "dp.initial_clip must be in"),
        ({"noise_multiplier": 1.0, "clip": "adaptive", "count_noise": 0.4}, "dp.count_noise must be more than noise_multiplier/2"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "epsilon": 3}, "dp: unknown field"),
    ],
)
def test_bad_settings_name_the_field(obj, message):
    with pytest.raises(ValueError, match=message):
        DPSettings.from_json(obj, expected_cohort=10)


def test_settings_must_be_an_object_and_need_a_cohort():
    with pytest.raises(ValueError, match="dp must be an object"):
        DPSettings.from_json([1], expected_cohort=10)
    with pytest.raises(ValueError, match="expected cohort size"):
        DPSettings.from_json({"noise_multiplier": 1.0, "clip": 1.0}, expected_cohort=0)


def test_default_count_noise_can_be_too_small_for_a_small_cohort():
    # m = 10: count_noise 0.5 leaves nothing of z = 1 for the sum; the message says what to change.
    with pytest.raises(ValueError, match="dp.count_noise"):
        DPSettings.from_json({"noise_multiplier": 1.0, "clip": "adaptive"}, expected_cohort=10)


def test_release_built_from_settings_resumes_the_adaptive_clip():
    s = parse(m=100, clip="adaptive")
    assert s.release().clip == 0.1 and s.release(clip=0.37).clip == 0.37
    assert s.release().mechanism == s.mechanism and parse().release().clip == 1.0
    assert parse().status(2.5, 1.0) == {"epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 1.0, "clip": 1.0,
                                        "adaptive": False, "sampling": "none", "accountant": "rdp"}


# -- compatibility ----------------------------------------------------------------


@pytest.mark.parametrize("rule, why", [("median", "not bounded by the clip norm"), ("trimmed_mean:0.2", "trimmed mean"),
                                       ("multikrum", "Multi-Krum"), ("clipped:2", "dp clips every update already")])
def test_robust_rules_are_refused_with_the_reason(rule, why):
    with pytest.raises(ValueError, match=f"dp cannot be used with aggregator '{rule}'.*{why}"):
        check_compatible(parse(), aggregator=rule)


def test_fedavg_fedbuff_and_fixed_norm_bounds_are_allowed():
    check_compatible(parse(), aggregator="fedavg", mode="sync")
    check_compatible(parse(), aggregator="fedavg", mode="fedbuff", norm_bound="5")
    check_compatible(parse(m=10, sampling="poisson", population=10_000, delta=1e-6), mode="sync")


def test_poisson_with_fedbuff_and_relative_norm_bounds_are_refused():
    with pytest.raises(ValueError, match="'poisson' cannot be used with mode 'fedbuff'"):
        check_compatible(parse(sampling="poisson", population=10_000, delta=1e-6), mode="fedbuff")
    with pytest.raises(ValueError, match="norm_bound '10x'"):
        check_compatible(parse(), norm_bound="10x")
    with pytest.raises(ValueError, match="unknown aggregator"):
        check_compatible(parse(), aggregator="krum!")


# -- the accountant -------------------------------------------------------------


def direct(kind, event, rounds, delta):
    acc = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
@pytest.mark.parametrize("z, q, rounds", [(1.0, None, 10), (3.0, None, 50), (1.1, 0.01, 200)])
def test_accountant_matches_dp_accounting_called_directly(kind, z, q, rounds):
    a = Accountant(AccountantKind(kind))
    for _ in range(rounds):
        a.charge(Mechanism(z), q)
    event = dp_accounting.GaussianDpEvent(z)
    event = event if q is None else dp_accounting.PoissonSampledDpEvent(q, event)
    assert a.rounds == rounds
    assert a.epsilon(1e-5) == pytest.approx(direct(kind, event, rounds, 1e-5), rel=1e-9)


def test_adaptive_rounds_cost_what_the_operators_multiplier_says():
    s = parse(m=100, clip="adaptive", noise_multiplier=1.2)
    a = Accountant()
    for _ in range(30):
        a.charge(s.mechanism)
    # The two releases, as dp-accounting composes them without sampling ...
    composed = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in s.mechanism.multipliers])
    assert a.epsilon(1e-5) == pytest.approx(direct("rdp", composed, 30, 1e-5), rel=1e-9)
    # ... are exactly one Gaussian of the operator's z = 1.2.
    assert s.mechanism.effective_multiplier == pytest.approx(1.2, rel=1e-12)
    assert a.epsilon(1e-5) == pytest.approx(direct("rdp", dp_accounting.GaussianDpEvent(1.2), 30, 1e-5), rel=1e-9)
    b = Accountant(AccountantKind.PLD)
    b.charge(s.mechanism, 0.01)
    sampled = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.2))
    assert b.epsilon(1e-5) == pytest.approx(direct("pld", sampled, 1, 1e-5), rel=1e-6)


def test_no_rounds_cost_nothing_and_no_noise_has_no_epsilon():
    a = Accountant()
    assert a.epsilon(1e-5) == 0.0
    a.charge(Mechanism(0.0))
    assert a.epsilon(1e-5) is None
    with pytest.raises(ValueError, match="delta"):
        a.epsilon(0.0)


def test_more_rounds_and_more_noise_move_epsilon_the_right_way():
    eps = []
    a = Accountant()
    for _ in range(3):
        a.charge(Mechanism(2.0))
        eps.append(a.epsilon(1e-5))
    assert eps[0] < eps[1] < eps[2]
    b = Accountant()
    for _ in range(3):
        b.charge(Mechanism(4.0))
    assert b.epsilon(1e-5) < eps[2]


def test_would_exceed_asks_about_the_next_round():
    m = Mechanism(2.0)
    a = Accountant()
    for _ in range(4):
        a.charge(m)
    after_five = direct("rdp", dp_accounting.GaussianDpEvent(2.0), 5, 1e-5)
    assert not a.would_exceed(m, after_five * 1.0001, 1e-5)
    assert a.would_exceed(m, after_five * 0.9999, 1e-5)
    assert a.rounds == 4  # asking charges nothing
    assert a.would_exceed(Mechanism(0.0), 1e9, 1e-5)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_state_round_trip_gives_exactly_the_same_epsilon(kind):
    a = Accountant(AccountantKind(kind))
    s = parse(m=100, clip="adaptive", noise_multiplier=1.3)
    for i in range(7):
        a.charge(s.mechanism if i % 2 else Mechanism(1.7), 0.02 if i % 3 == 0 else None)
    restored = Accountant.from_state(json.loads(json.dumps(a.state())))
    assert restored.kind is a.kind and restored.rounds == 7
    assert restored.epsilon(1e-5) == a.epsilon(1e-5)
    restored.charge(Mechanism(1.7))
    assert restored.epsilon(1e-5) > a.epsilon(1e-5)


@pytest.mark.parametrize("state", [{}, {"accountant": "rdp"}, {"accountant": "x", "events": []},
                                   {"accountant": "rdp", "events": [{"q": None, "noise": [], "rounds": 1}]},
                                   {"accountant": "rdp", "events": [{"q": None, "noise": [1.0], "rounds": 0}]},
                                   {"accountant": "rdp", "events": [{"q": None, "noise": [1.0], "rounds": True}]},
                                   {"accountant": "rdp", "events": [{"q": 2.0, "noise": [1.0], "rounds": 1}]},
                                   {"accountant": "rdp", "events": [{"q": None, "noise": [-1.0], "rounds": 1}]},
                                   {"accountant": "rdp", "events": [None]}])
def test_malformed_state_is_refused(state):
    with pytest.raises(ValueError):
        Accountant.from_state(state)


def test_task_total_composes_every_run():
    runs = []
    for z, n in ((1.0, 5), (2.0, 8)):
        a = Accountant()
        for _ in range(n):
            a.charge(Mechanism(z))
        runs.append(a)
    total = Accountant.combined([r.state() for r in runs])
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.0), 5)
    acc.compose(dp_accounting.GaussianDpEvent(2.0), 8)
    assert total.rounds == 13 and total.epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert total.epsilon(1e-5) > max(r.epsilon(1e-5) for r in runs)
    assert math.isfinite(total.epsilon(1e-5))
