"""Folds that cannot leak groups, metrics that match scikit-learn, cluster bootstrap, chance."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, r2_score, roc_auc_score

from probe.stats import (
    ProbeError,
    ProbeWarning,
    chance_levels,
    chance_scores,
    check_folds,
    group_bootstrap_weights,
    group_stratified_folds,
    percentile_ci,
    score,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_layout(rng: np.random.Generator, n: int, K: int):
    """Groups of random sizes (singletons to huge), labels mixed within groups or not."""
    kind = rng.integers(3)
    if kind == 0:  # many singletons
        groups = rng.permutation(n)
    elif kind == 1:  # a few huge groups plus singletons, interleaved
        groups = np.where(rng.random(n) < 0.5, rng.integers(0, 3, n), 100 + np.arange(n))
    else:  # scenario-like: groups of 1-12 rows, shuffled
        groups = rng.permutation(np.repeat(np.arange(n), rng.integers(1, 13, n))[:n])
    y = rng.integers(0, K, n)
    if rng.random() < 0.5:  # labels constant within a group
        y = rng.integers(0, K, groups.max() + 1)[groups]
    return y.astype(str), groups.astype(str)


@pytest.mark.parametrize("seed", range(40))
def test_no_group_leaks_on_random_layouts(seed):
    rng = np.random.default_rng(seed)
    y, groups = _random_layout(rng, int(rng.integers(40, 300)), int(rng.integers(2, 5)))
    try:
        folds = group_stratified_folds(y, groups, 5, seed, fallback="reduce")
    except ProbeError as err:  # the only honest refusal: a class confined to one group
        assert "single group" in str(err)
        return
    test_rows = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(test_rows), np.arange(len(y)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(y)
        assert set(y[train]) == set(y)


def test_regression_folds_and_determinism():
    rng = np.random.default_rng(0)
    y, groups = rng.normal(size=100), np.arange(100) // 4
    a = group_stratified_folds(y, groups, 5, seed=1)
    b = group_stratified_folds(y, groups, 5, seed=1)
    assert all(np.array_equal(ta, tb) for (_, ta), (_, tb) in zip(a, b, strict=True))
    check_folds(a, groups)


def test_stratification_balances_classes():
    y = np.array(["a"] * 300 + ["b"] * 100)
    folds = group_stratified_folds(y, np.arange(400) // 2, 5, seed=0)
    shares = [np.mean(y[test] == "b") for _, test in folds]
    assert max(shares) - min(shares) < 0.05


def test_check_folds_catches_a_leaky_split():
    groups = np.array(["g1", "g1", "g2", "g2"])
    with pytest.raises(ProbeError, match="g1"):
        check_folds([(np.array([0, 2]), np.array([1, 3]))], groups)


@pytest.mark.parametrize("y, groups, match", [
    (["a"] * 10, range(10), "one class"),
    ([0.0, np.nan, 1.0, 2.0], range(4), "NaN"),
    (["a", None, "b", "a"], range(4), "NaN/None"),
    (["a", "b"] * 5, [None] * 10, "no group"),
    (["a", "b"] * 5, range(9), "one group per row"),
    (["a", "b"] * 2, [0, 1, 2, 3], "fewer than n_splits"),
    (["a", "b", "a", "b", "c", "c"], [0, 1, 2, 3, 4, 4], "single group"),
    (["a", "b"] * 6, [0, 0, 1, 1, 2, 2] * 2, "only 3 groups"),
])
def test_degenerate_inputs_raise(y, groups, match):
    with pytest.raises(ProbeError, match=match):
        group_stratified_folds(np.asarray(y, dtype=object if None in y else None),
                               np.asarray(list(groups), dtype=object), 5)


def test_reduce_fallback_is_reported():
    y = np.array(["a", "b"] * 6)
    with pytest.warns(ProbeWarning, match="using 3 folds"):
        folds = group_stratified_folds(y, np.arange(12) % 3, 5, fallback="reduce")
    assert len(folds) == 3


# -------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("rare", [False, True])  # many or few positives per class
def test_classification_metrics_match_sklearn_with_weights_and_ties(rare):
    rng = np.random.default_rng(0)
    y = rng.choice(3, 200, p=[0.9, 0.06, 0.04] if rare else None)
    P = np.round(rng.dirichlet(np.ones(3), size=(2, 200)) + 0.3 * np.eye(3)[y], 1)  # ties
    P /= P.sum(-1, keepdims=True)
    W = np.stack([np.ones(200), rng.integers(0, 4, 200)])
    out = score("classification", y, P, W)
    for b in range(2):
        for s in range(2):
            pred = P[s].argmax(-1)
            assert out["accuracy"][b, s] == pytest.approx(
                accuracy_score(y, pred, sample_weight=W[b]))
            assert out["macro_f1"][b, s] == pytest.approx(
                f1_score(y, pred, average="macro", sample_weight=W[b]))
            assert out["auroc"][b, s] == pytest.approx(
                roc_auc_score(y, P[s], multi_class="ovr", sample_weight=W[b]), abs=1e-6)


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=100)
    P = np.stack([y + rng.normal(size=100), -y])
    out = score("regression", y, P, np.ones((1, 100)))
    assert out["r2"][0] == pytest.approx([r2_score(y, p) for p in P])
    assert out["pearson_r"][0] == pytest.approx([np.corrcoef(y, p)[0, 1] for p in P])


def test_auroc_undefined_when_a_resample_has_one_class():
    out = score("classification", np.array([0, 1]), np.array([[[0.7, 0.3], [0.2, 0.8]]]),
                np.array([[1.0, 0.0]]))
    assert np.isnan(out["auroc"][0, 0]) and out["accuracy"][0, 0] == 1.0


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_resamples_whole_groups():
    groups = np.repeat(np.arange(20), 5)
    W = group_bootstrap_weights(groups, 50, seed=0)
    assert (W.reshape(50, 20, 5).std(-1) == 0).all()  # rows of a group share a weight
    assert np.allclose(W.sum(1), 100)  # as many groups drawn as there are


def _accuracy_ci(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.8
    P = np.eye(2)[np.where(correct, y, 1 - y)][None]
    W = np.concatenate([np.ones((1, n)), group_bootstrap_weights(np.arange(n) // 2, 1000, seed)])
    acc = score("classification", y, P, W)["accuracy"][:, 0]
    lo, hi = percentile_ci(acc[1:, None])
    return acc[0], lo[0], hi[0]


def test_ci_contains_estimate_and_shrinks_with_n():
    value, lo, hi = _accuracy_ci(200)
    assert lo <= value <= hi
    value_big, lo_big, hi_big = _accuracy_ci(3200)
    assert lo_big <= value_big <= hi_big
    ratio = (hi - lo) / (hi_big - lo_big)
    assert 2.5 < ratio < 6.5  # ~ sqrt(16) = 4


# --------------------------------------------------------------------------------- chance


def test_chance_levels_match_simulated_label_shuffles():
    rng = np.random.default_rng(0)
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    c = chance_levels(y)
    assert c["majority_accuracy"] == 0.6
    shuffles = np.stack([np.eye(3)[rng.permutation(y)] for _ in range(400)])
    sim = score("classification", y, shuffles, np.ones((1, 100)))
    assert sim["accuracy"].mean() == pytest.approx(c["shuffle_accuracy"], abs=0.01)
    assert sim["macro_f1"].mean() == pytest.approx(c["shuffle_macro_f1"], abs=0.01)
    assert chance_scores(y, "classification")["accuracy"] == 0.6
    assert chance_scores(np.zeros(3) + 0.5, "regression") == {"r2": 0.0, "pearson_r": 0.0}


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_rows_without_predictions_are_ignored_only_at_zero_weight(task):
    y = np.array([0, 1, 0, 1])
    pred = np.array([[[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [np.nan, np.nan]]])
    if task == "regression":
        y, pred = y.astype(float), pred[..., 1]
    out = score(task, y, pred, np.array([[1.0, 1.0, 1.0, 0.0]]))
    assert all(np.isfinite(v).all() for v in out.values())
    with pytest.raises(ProbeError, match="no prediction"):
        score(task, y, pred, np.ones((1, 4)))


def test_pearson_with_a_constant_side_is_nan_not_inf():
    rng = np.random.default_rng(0)
    varied = rng.normal(size=50)
    const = np.full(50, 3.0)
    W = np.ones((1, 50))
    assert np.isnan(score("regression", const, varied[None], W)["pearson_r"]).all()
    assert np.isnan(score("regression", varied, const[None], W)["pearson_r"]).all()
    r = score("regression", varied, (2 * varied + 1)[None], W)["pearson_r"]
    np.testing.assert_allclose(r, 1.0, rtol=1e-12)
