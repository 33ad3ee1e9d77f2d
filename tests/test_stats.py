"""Federated feature statistics, the standardised model, and folding it for export."""

import numpy as np
import pytest

from webfl.build import paths
from webfl.core.data import partition
from webfl.core.models import MLP
from webfl.core.stats import FeatureStats, Standardised, feature_stats, fold, scaling_from_stats
from webfl.core.tasks import BUILT_IN
from webfl.core.training import TrainConfig, local_train


def _raw(seed=0, n=200):
    rng = np.random.default_rng(seed)
    # Features of wildly different magnitudes and offsets, as real measurements have.
    return (rng.normal(0, 1, (n, 4)) * [1e-3, 1.0, 50.0, 2e4] + [0.01, -3.0, 900.0, 1e5]).astype(np.float32)


def test_shard_statistics_add_up_to_the_pooled_mean_and_std():
    x = _raw()
    parts = [feature_stats(x[s]) for s in np.array_split(np.arange(len(x)), 7)]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    mean, std = scaling_from_stats(total)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=0), rtol=1e-6)
    assert total.count.tolist() == [200.0] * 4


def test_a_constant_feature_gets_std_one():
    x = np.column_stack([np.full(10, 1234.5), np.arange(10.0)])
    mean, std = scaling_from_stats(feature_stats(x))
    assert mean[0] == 1234.5 and std[0] == 1.0 and std[1] == pytest.approx(np.arange(10.0).std())


def test_reported_statistics_are_checked():
    good = feature_stats(_raw(n=5)).to_dict()
    back = FeatureStats.from_dict(good, 4)
    np.testing.assert_array_equal(back.sum, feature_stats(_raw(n=5)).sum)
    for bad in [
        None,
        {**good, "rows": []},
        {**good, "count": good["count"][:3]},
        {**good, "count": [0, 5, 5, 5]},
        {**good, "count": [5.5, 5, 5, 5]},
        {**good, "sum": ["1", 2, 3, 4]},
        {**good, "sum": [float("inf"), 2, 3, 4]},
        {**good, "sumsq": [-1.0, *good["sumsq"][1:]]},
        {**good, "sum": [1e6, *good["sum"][1:]]},  # sum^2 > count * sumsq: no real rows give that
    ]:
        with pytest.raises(ValueError):
            FeatureStats.from_dict(bad, 4)


def test_folded_model_predicts_what_standardise_then_predict_does():
    x = _raw(1)
    mean, std = scaling_from_stats(feature_stats(x))
    inner = MLP((4, 8, 3))
    model = Standardised(inner, mean, std)
    params = inner.init(2) + np.random.default_rng(3).normal(0, 0.1, inner.size).astype(np.float32)
    by_hand = inner.logits(params, ((x.astype(np.float64) - mean) / std).astype(np.float32))
    np.testing.assert_allclose(model.logits(params, x), by_hand, rtol=1e-4, atol=1e-4)
    folded = fold(model, params)
    assert folded.dtype == np.float32 and folded.shape == params.shape
    np.testing.assert_allclose(inner.logits(folded, x), by_hand, rtol=1e-4, atol=2e-3)
    assert (inner.logits(folded, x).argmax(1) == by_hand.argmax(1)).all()


def test_breast_cancer_raw_features_train_well_with_federated_scaling():
    """Raw features (areas ~1,000 beside fractal dimensions ~0.06): statistics from 5 shards,
    then local SGD on raw rows. Folding the scaling into version 0 instead leaves SGD on
    raw features, which stays at the majority class: the reason the scaling is a layer."""
    task = BUILT_IN["breast-cancer"]
    data = task.parse_csv(paths.BREAST_CANCER_CSV.read_bytes())
    order = np.random.default_rng(0).permutation(len(data))
    train, test = data.take(order[:450]), data.take(order[450:])
    stats = [feature_stats(train.x[s]) for s in partition(train.y, 5, "iid", seed=1)]
    mean, std = scaling_from_stats(sum(stats[1:], start=stats[0]))
    scaled = task.with_scaling(mean, std)
    model = scaled.build_model()
    params = model.init(0)
    config = scaled.training.config(seed=0)
    trained = local_train(model, params, train.x, train.y, config)
    assert model.evaluate(trained.params, test.x, test.y)[1] > 0.93

    plain = task.build_model()
    naive = local_train(plain, fold(model, params), train.x, train.y, config)
    majority = max(np.mean(test.y == 0), np.mean(test.y == 1))
    assert plain.evaluate(naive.params, test.x, test.y)[1] < majority + 0.05
