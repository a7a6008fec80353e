"""Split-half Jaccard: 1 when every prompt agrees, low when they do not, halves by group."""

from __future__ import annotations

import numpy as np
import pytest

from circuits.stability import jaccard, split_half, top_k


def test_jaccard_and_top_k():
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5 and np.isnan(jaccard([], []))
    s = np.array([0.1, -3.0, 2.0, 0.5])
    assert list(top_k(s, 2)) == [1, 2]
    assert list(top_k(s, 2, order="signed", sign=1.0)) == [1, 0]   # most negative first
    assert list(top_k(s, 2, order="signed", sign=-1.0)) == [2, 3]


def test_the_same_effects_on_every_prompt_are_perfectly_stable():
    rng = np.random.default_rng(0)
    effects = rng.normal(size=100)
    per_row = np.tile(effects, (12, 1)) + 1e-6 * rng.normal(size=(12, 100))
    s = split_half(per_row, [str(i // 2) for i in range(12)], k=10, n_splits=50)
    assert s["jaccard"] == 1 and s["ci_low"] == 1 and s["stable"] and s["groups"] == 6


def test_noise_is_not_stable_and_groups_stay_together():
    rng = np.random.default_rng(1)
    per_row = rng.normal(size=(16, 200))
    s = split_half(per_row, None, k=20, n_splits=100)
    assert s["jaccard"] < 0.3 and not s["stable"]
    assert s["ci_low"] <= s["jaccard"] <= s["ci_high"]
    # two rows per group, the second a copy of the first: halves split groups, not rows, so
    # a group's copy never lands in the other half (else Jaccard would be 1 by construction)
    dup = np.repeat(per_row[:8], 2, axis=0)
    g = [str(i // 2) for i in range(16)]
    assert split_half(dup, g, k=20, n_splits=100)["jaccard"] < 0.5
    one = split_half(per_row, ["a"] * 16, k=5)
    assert one["n_splits"] == 0 and not one["stable"]


@pytest.mark.parametrize("k", [1, 500])
def test_k_is_capped_by_the_number_of_components(k):
    s = split_half(np.ones((4, 30)), None, k=k, n_splits=5)
    assert s["k"] == min(k, 30)
