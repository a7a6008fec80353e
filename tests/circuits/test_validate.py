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
