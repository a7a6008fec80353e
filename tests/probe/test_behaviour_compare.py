"""Probe vs behaviour on the same items, folds and resamples, on data with a known answer."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from probe.behaviour.compare import CompareConfig, compare
from probe.evaluate import EvalConfig
from probe.stats import ProbeError, ProbeWarning
from tests.probe.behaviour_fakes import fake_store, items_table

CLASSES = ["anger", "fear", "joy", "sadness"]
CFG = CompareConfig(eval=EvalConfig(n_bootstrap=200, control=False, lexical=False))


def _world(seed=0, n=240, d=12):
    """Layer 0: noise. Layers 1-2: the class, strongly where an item is 'clear'. The model
    answers right exactly on clear items and names the next class otherwise."""
    rng = np.random.default_rng(seed)
    y = np.array(CLASSES)[np.arange(n) % 4]
    groups = np.array([f"g{i // 2}" for i in range(n)])
    clear = rng.random(n) < 0.5
    means = np.eye(d)[:4] * 3
    X = rng.normal(size=(n, 3, 1, d))
    signal = means[np.arange(n) % 4] * np.where(clear, 1.0, 0.5)[:, None]
    X[:, 1, 0] += signal
    X[:, 2, 0] += signal
    said = np.where(clear, y, np.array(CLASSES)[(np.arange(n) + 1) % 4])
    return fake_store(X, y, groups), y, groups, said


@pytest.fixture(scope="module")
def result():
    ds, y, groups, said = _world()
    items = items_table(ds["sample"].values, groups, y, said, CLASSES)
    return compare(ds, items, config=CFG), y, said


def _row(t, **kw):
    m = np.ones(len(t), bool)
    for k, v in kw.items():
        m &= (t[k] == v).fillna(False).to_numpy(bool)
    assert m.sum() == 1, kw
    return t[m].iloc[0]


def test_probe_and_zero_shot_on_the_same_items(result, one_thread):
    table, y, said = result
    zs = _row(table, estimator="zero-shot", metric="accuracy")
    assert zs["value"] == pytest.approx((said == y).mean())
    assert zs["ci_low"] < zs["value"] < zs["ci_high"]
    noise = _row(table, estimator="probe", metric="accuracy", layer=0)
    signal = _row(table, estimator="probe", metric="accuracy", layer=1)
    assert noise["ci_low"] < 0.25 < noise["ci_high"] and signal["value"] > 0.7
    gap = _row(table, estimator="probe-vs-zero-shot", metric="gap", layer=1)
    assert gap["value"] == pytest.approx(signal["value"] - zs["value"])  # paired, same items
    assert gap["ci_low"] > 0  # the probe knows more than the model says


def test_confidence_predicts_when_the_model_is_right(result, one_thread):
    table, *_ = result
    informative = _row(table, metric="auroc_confidence", layer=1)
    noise = _row(table, metric="auroc_confidence", layer=0)
    assert informative["ci_low"] > 0.6
    assert noise["ci_low"] < 0.5 < noise["ci_high"]
    assert _row(table, metric="auroc_gold_prob", layer=1)["value"] > 0.6


def test_the_models_answer_is_decodable_from_layer_1(result):
    table, *_ = result
    first = _row(table, estimator="probe-on-answer", metric="first_layer")
    assert first["value"] == 1
    assert _row(table, estimator="probe-on-answer", metric="accuracy", layer=2)["value"] > \
        _row(table, estimator="probe-on-answer", metric="majority", layer=2)["value"]


def test_agreement_and_kappa(one_thread):
    """Zero-shot answers equal to the probe's own out-of-fold answers agree perfectly."""
    from probe.evaluate import cross_val_predict, make_folds

    ds, y, groups, _ = _world(seed=1)
    folds = make_folds(y, groups, "classification", CFG.eval)
    X = ds["hook_resid_post"].values[:, :, 0].transpose(1, 0, 2)
    probe = np.array(CLASSES)[cross_val_predict(X, y, folds, task="classification",
                                                config=CFG.eval).argmax(-1)]
    items = items_table(ds["sample"].values, groups, y, probe[2], CLASSES)
    table = compare(ds, items, config=CFG)
    assert _row(table, metric="agreement", layer=2)["value"] == 1
    assert _row(table, metric="kappa", layer=2)["value"] == pytest.approx(1)
    assert _row(table, metric="agreement", layer=0)["value"] < 0.6


def test_ids_not_order_align_the_tables(result, one_thread):
    table, *_ = result
    ds, y, groups, said = _world()
    items = items_table(ds["sample"].values, groups, y, said, CLASSES)
    shuffled = items.sample(frac=1, random_state=0)
    shuffled.attrs = items.attrs
    again = compare(ds, shuffled, config=CFG)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table.reset_index(drop=True))
    partial = items.iloc[:200].copy()
    partial.attrs = items.attrs
    with pytest.warns(ProbeWarning, match="40 of 240 store rows"):
        t = compare(ds, partial, config=CFG)
    assert t.attrs["n"] == 200
    other = items.assign(id=[f"x{i}" for i in range(len(items))])
    other.attrs = items.attrs
    with pytest.raises(ProbeError, match="no sample id"):
        compare(ds, other, config=CFG)


def test_ratings_compare_correlations(one_thread):
    rng = np.random.default_rng(2)
    n, d = 200, 8
    y = rng.uniform(1, 5, n)
    X = rng.normal(size=(n, 3, 1, d))
    X[:, 1:, 0, 0] += 2 * y[:, None]
    groups = [f"g{i // 2}" for i in range(n)]
    ds = fake_store(X, y, groups, target="V", kind="continuous")
    said = y + rng.normal(scale=1.5, size=n)
    items = items_table(ds["sample"].values, groups, y, [None] * n, [], values=said,
                        variant="expected")
    items["correct"] = np.nan
    items.attrs.update(kind="rating", target="V")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        table = compare(ds, items, config=CFG)
    zs = _row(table, estimator="zero-shot", metric="pearson_r")
    assert zs["value"] == pytest.approx(np.corrcoef(y, said)[0, 1])
    assert _row(table, estimator="probe", metric="pearson_r", layer=1)["value"] > 0.9
    assert _row(table, metric="gap", layer=1)["ci_low"] > 0
    assert _row(table, estimator="probe-on-answer", metric="first_layer")["value"] == 1


def test_a_constant_rating_has_no_correlation_and_the_run_still_writes(one_thread, tmp_path):
    from probe.behaviour.runfiles import write_run

    rng = np.random.default_rng(3)
    n, d = 120, 6
    y = rng.uniform(1, 5, n)
    X = rng.normal(size=(n, 2, 1, d))
    X[:, 1, 0, 0] += 2 * y
    groups = [f"g{i // 2}" for i in range(n)]
    ds = fake_store(X, y, groups, target="V", kind="continuous")
    items = items_table(ds["sample"].values, groups, y, [None] * n, [], values=np.full(n, 3.0),
                        variant="argmax")  # the model answers 3 to everything
    items["correct"] = np.nan
    items.attrs.update(kind="rating", target="V")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = compare(ds, items, config=CFG)
    values = table["value"].to_numpy(float)
    assert not np.isinf(values).any()
    assert np.isnan(_row(table, metric="agreement", layer=1)["value"])
    paths = write_run(tmp_path / "run", table, {}, {"command": "test"})
    assert paths["run"].exists()
