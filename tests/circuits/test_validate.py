"""The validation statistics on tables whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuits.runs import Compute
from circuits.validate import compare, recall_at, summary, verdicts


def _tables(est, truth, t="heads"):
    names = [f"{t}{i}" for i in range(len(est))]
    return (pd.DataFrame({"component": names, "type": t, "value": est}),
            pd.DataFrame({"component": names, "type": t, "value": truth}))


def test_perfect_and_reversed_estimates():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=60)
    good = compare(*_tables(2 * truth, truth)).iloc[0]
    assert good["spearman"] == 1 and good["recall@20"] == 1 and good["sign_agreement"] == 1
    bad = compare(*_tables(-truth, truth)).iloc[0]
    assert bad["spearman"] == -1 and bad["sign_agreement"] == 0
    assert bad["recall@20"] == 1  # magnitudes still agree: recall is about |effect|
    assert good["recall@50"] == 1 and good["n"] == 60


def test_recall_counts_the_shared_top_k():
    truth = np.arange(30.0)
    est = truth.copy()
    est[-5:] = 0  # the five largest true effects estimated as zero
    assert recall_at(est, truth, 10) == 0.5
    assert np.isnan(recall_at(est, truth, 30))  # no more than k components: undefined


def test_unsigned_estimates_skip_signed_statistics():
    truth = np.linspace(-1, 1, 40)
    row = compare(*_tables(np.abs(truth), truth), signed=False).iloc[0]
    assert np.isnan(row["spearman"]) and np.isnan(row["sign_agreement"])
    assert row["spearman_abs"] == 1


def test_failures_name_the_estimator_to_use_instead():
    rng = np.random.default_rng(1)
    heads = _tables(*(rng.normal(size=50),) * 2)
    noise = _tables(rng.normal(size=50), rng.normal(size=50), "neurons")
    table = compare(pd.concat([heads[0], noise[0]]), pd.concat([heads[1], noise[1]]))
    v = verdicts(table, "atp")
    assert v[0].startswith("atp agrees with patching for heads")
    assert "atp FAILS for neurons" in v[1] and "--estimator ig" in v[1] and "--validate all" in v[1]
    text = summary(table, "atp", Compute(forward_passes=1, backward_passes=1, forward_row_blocks=10,
                                         backward_row_blocks=10, seconds=2.0),
                   Compute(forward_passes=9, forward_row_blocks=900, seconds=50.0),
                   n_truth_components=100, n_all_components=1000)
    assert "25.0x wall time" in text and "30.0x rows x blocks" in text and "300x" in text


def test_random_recall_baseline_is_the_hypergeometric_95th_percentile():
    from circuits.validate import random_recall_p95

    rng = np.random.default_rng(0)
    sims = [len(set(rng.choice(50, 20, replace=False)) & set(range(20))) / 20 for _ in range(4000)]
    assert abs(random_recall_p95(50, 20) - np.quantile(sims, 0.95)) <= 0.05 + 1e-12
    assert np.isnan(random_recall_p95(20, 20))


def test_selection_takes_the_top_and_a_layer_stratified_sample():
    from circuits.validate import select

    rng = np.random.default_rng(2)
    n = 400
    scores = rng.normal(size=n)
    layers = np.repeat(np.arange(4), 100)
    idx, how = select([str(i) for i in range(n)], scores, layers, 30, seed=0)
    top = set(np.argsort(-np.abs(scores))[:30])
    assert set(idx[:30]) == top and len(idx) == 60 == len(set(idx))
    rest = [i for i in idx if i not in top]
    counts = np.bincount(layers[rest], minlength=4)
    assert counts.sum() == 30 and counts.max() - counts.min() <= 2   # stratified by layer
    assert "top 30 + 30 random" in how and "of 400" in how
    assert select(["a"] * 50, np.zeros(50), np.zeros(50), 30) == (list(range(50)), "all")
    assert select(["a"] * 50, np.zeros(50), np.zeros(50), None)[1] == "all"


def test_bootstrap_cis_over_prompts_and_false_negatives():
    from circuits.validate import compare_ci

    rng = np.random.default_rng(3)
    true = rng.normal(size=(8, 60)) + 3 * rng.normal(size=60)
    est = true + 0.01 * rng.normal(size=(8, 60))
    types = ["heads"] * 60
    top = [True] * 30 + [False] * 30
    r = compare_ci(est, true, types, [str(i // 2) for i in range(8)], top=top).iloc[0]
    assert r["recall@20_low"] > 0.8 and r["spearman_low"] > 0.95
    assert r["recall@20_random_p95"] < 0.6
    # an estimate blind to the sampled half misses their large effects: false negatives
    blind = est.copy()
    blind[:, 30:] = 0
    big = np.abs(true.mean(0))
    k = np.sort(big)[-20]
    want = int(np.sum(big[30:] >= k))
    assert compare_ci(blind, true, types, None, top=top).iloc[0]["false_negatives"] == want
    noisy = compare_ci(rng.normal(size=(8, 60)), true, types, None).iloc[0]
    assert noisy["recall@20_high"] < r["recall@20_low"]
