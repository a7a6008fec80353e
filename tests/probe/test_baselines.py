"""Control labels keyed on surface identity, and the TF-IDF lexical baseline."""

from __future__ import annotations

import numpy as np
import pytest

from probe.baselines import control_labels, key_coverage, last_word_keys, lexical_predictions
from probe.stats import ProbeError, group_stratified_folds

pytestmark = pytest.mark.usefixtures("one_thread")


def test_last_word_keys():
    assert last_word_keys(["It's over now.", "I can't", ""]).tolist() == ["now", "can't", ""]


def test_control_labels_follow_keys_and_the_label_distribution():
    rng = np.random.default_rng(0)
    y = rng.choice(["joy", "fear", "anger"], p=[0.6, 0.3, 0.1], size=3000)
    keys = rng.integers(0, 1000, 3000).astype(str)
    control = control_labels(keys, y, seed=1)
    for key in np.unique(keys)[:50]:
        assert len(set(control[keys == key])) == 1
    for label in ("joy", "fear", "anger"):
        assert np.mean(control == label) == pytest.approx(np.mean(y == label), abs=0.01)
    assert np.array_equal(control, control_labels(keys, y, seed=1))
    assert not np.array_equal(control, control_labels(keys, y, seed=2))


def test_control_labels_are_redrawn_until_every_fold_can_train():
    y = np.array(["a", "b", "c"] * 20)
    groups = np.arange(60) // 3
    folds = group_stratified_folds(y, groups, 5, 0)
    keys = np.arange(60) % 5  # few keys: many labellings lack a class in some fold
    control = control_labels(keys, y, folds, seed=0)
    for train, _ in folds:
        assert set(control[train]) == set(control)
    with pytest.raises(ProbeError, match="keys are too few"):
        control_labels(np.zeros(60), y, folds)


def test_key_coverage():
    keys = np.array(["a", "a", "b", "c"])
    folds = [(np.array([0, 2]), np.array([1, 3])), (np.array([1, 3]), np.array([0, 2]))]
    assert key_coverage(keys, folds) == 0.5  # rows 0 and 1 ("a") were seen in training


def test_lexical_baseline_reads_words_on_unseen_groups():
    rng = np.random.default_rng(0)
    y = rng.choice(["pos", "neg"], size=200)
    cue = {"pos": ["great", "lovely"], "neg": ["awful", "grim"]}
    texts = [f"item {i} was {rng.choice(cue[label])}" for i, label in enumerate(y)]
    folds = group_stratified_folds(y, np.arange(200) // 4, 5, 0)
    proba = lexical_predictions(texts, y, folds, "classification")
    np.testing.assert_allclose(proba.sum(1), 1)
    assert np.mean(np.array(["neg", "pos"])[proba.argmax(1)] == y) > 0.95
    values = lexical_predictions(texts, (y == "pos").astype(float), folds, "regression")
    assert np.corrcoef(values, y == "pos")[0, 1] > 0.9
    with pytest.raises(ProbeError, match="texts"):
        lexical_predictions(texts[:10], y, folds, "classification")
