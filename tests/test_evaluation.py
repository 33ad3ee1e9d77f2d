"""Federated evaluation sums and the seeded holdout split."""

import numpy as np
import pytest

from webfl.core.evaluation import EvalSums, evaluation_sums, holdout_split
from webfl.core.models import MLP


def _model_and_data(classes=3, n=101, seed=0):
    rng = np.random.default_rng(seed)
    model = MLP((5, 7, classes))
    params = model.init(seed)
    return model, params, rng.random((n, 5)).astype(np.float32), rng.integers(0, classes, n)


def test_sums_match_the_models_own_evaluation_and_count_per_class():
    model, params, x, y = _model_and_data()
    sums = evaluation_sums(model, params, x, y, 3, batch=17)
    loss, accuracy = model.evaluate(params, x, y)
    assert sums.examples == 101
    assert sums.accuracy == pytest.approx(accuracy) and sums.loss == pytest.approx(loss, rel=1e-6)
    predicted = model.logits(params, x).argmax(axis=1)
    assert list(sums.class_examples) == np.bincount(y, minlength=3).tolist()
    assert list(sums.class_correct) == [int(((y == c) & (predicted == c)).sum()) for c in range(3)]
    assert sums.per_class_accuracy() == [c / e for c, e in zip(sums.class_correct, sums.class_examples)]


def test_sums_of_shards_equal_the_pooled_evaluation():
    model, params, x, y = _model_and_data(n=90)
    pooled = evaluation_sums(model, params, x, y, 3)
    parts = [evaluation_sums(model, params, x[s], y[s], 3) for s in np.array_split(np.arange(90), 4)]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    assert (total.examples, total.correct, total.class_examples, total.class_correct) == (
        pooled.examples, pooled.correct, pooled.class_examples, pooled.class_correct)
    assert total.loss_sum == pytest.approx(pooled.loss_sum)


def test_no_per_class_counts_past_twenty_classes():
    model, params, x, y = _model_and_data(classes=21)
    sums = evaluation_sums(model, params, x, y, 21)
    assert sums.class_examples == () and sums.class_correct == ()
    assert EvalSums.from_dict(sums.to_dict(), 21) == sums


def test_reported_sums_round_trip_and_hostile_ones_are_refused():
    model, params, x, y = _model_and_data()
    sums = evaluation_sums(model, params, x, y, 3)
    assert EvalSums.from_dict(sums.to_dict(), 3) == sums
    good = sums.to_dict()
    bad = [
        "not a dict",
        {**good, "extra": 1},
        {**good, "examples": -1},
        {**good, "examples": True},
        {**good, "correct": good["examples"] + 1},
        {**good, "loss_sum": float("nan")},
        {**good, "loss_sum": -1.0},
        {**good, "class_examples": good["class_examples"][:2]},
        {**good, "class_correct": [good["class_examples"][0] + 1, 0, 0]},
        {**good, "class_examples": [good["class_examples"][0] + 1, *good["class_examples"][1:]]},  # sum is off
    ]
    for d in bad:
        with pytest.raises(ValueError):
            EvalSums.from_dict(d, 3)


def test_holdout_split_is_seeded_disjoint_and_sized():
    train, hold = holdout_split(100, 0.2, seed=7)
    again = holdout_split(100, 0.2, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(hold, again[1])
    assert len(hold) == 20 and len(train) == 80
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(100))
    assert not np.array_equal(hold, holdout_split(100, 0.2, seed=8)[1])
    # Tiny volunteers keep one example of each kind; no holdout when the fraction is 0.
    assert [len(p) for p in holdout_split(2, 0.1, 0)] == [1, 1]
    assert [len(p) for p in holdout_split(5, 0.0, 0)] == [5, 0]
    with pytest.raises(ValueError):
        holdout_split(10, 1.0, 0)
