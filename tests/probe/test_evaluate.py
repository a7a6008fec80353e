"""evaluate(): the tidy table, selectivity that means something, chunking, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from probe.baselines import control_labels, last_word_keys
from probe.evaluate import EvalConfig, evaluate, make_folds, per_fold_scores, text_baselines
from probe.results import validate_results
from probe.stats import ProbeError, ProbeWarning

CLASSES = np.array(["anger", "joy", "sadness"])
WORDS = np.array([f"word{i}" for i in range(12)])
CFG = EvalConfig(n_bootstrap=200, n_folds=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sweep():
    """Site 0: noise. Site 1: linearly encodes the label. Site 2: encodes the last word."""
    rng = np.random.default_rng(0)
    n, d = 240, 24
    y = CLASSES[rng.integers(0, 3, n)]
    groups = np.arange(n) // 3
    words = WORDS[rng.integers(0, len(WORDS), n)]
    texts = [f"something happened {i} {w}" for i, w in enumerate(words)]
    X = rng.normal(size=(3, n, d)).astype(np.float32)
    X[1, :, :3] += 2.5 * (y[:, None] == CLASSES)
    X[2] += 3 * (words[:, None] == WORDS) @ rng.normal(size=(len(WORDS), d))
    keys = [("hook_resid_post", 0), ("hook_resid_post", 1), ("hook_resid_post", 2)]
    table = evaluate(X, y=y, groups=groups, texts=texts, site_keys=keys,
                     task="classification", config=CFG)
    return X, y, groups, texts, keys, table


def _value(table, layer, estimator, metric):
    at = table.layer.isna() if layer is None else (table.layer == layer).fillna(False)
    row = table[at & (table.estimator == estimator) & (table.metric == metric)]
    assert len(row) == 1
    return row.iloc[0]


def test_table_follows_the_results_schema(sweep):
    *_, table = sweep
    validate_results(table)
    assert list(table.columns) == ["site", "layer", "evaluation", "estimator", "metric", "value",
                                   "ci_low", "ci_high", "n_folds", "n"]
    assert set(table.evaluation) == {"cv"}
    assert len(table) == 3 * (3 + 3 + 1) + 3 + 3
    assert isinstance(table["layer"].dtype, pd.Int64Dtype)
    baseline = table[table.estimator.isin(["lexical", "chance"])]
    assert baseline.site.isna().all() and baseline.layer.isna().all()
    probes = table[table.estimator == "probe"]
    assert (probes.n == 240).all() and (probes.n_folds == 4).all()
    assert ((probes.ci_low <= probes.value) & (probes.value <= probes.ci_high)).all()


def test_selectivity_separates_encoding_from_memorisation(sweep):
    *_, table = sweep
    chance = table[(table.estimator == "chance") & (table.metric == "accuracy")].value.iloc[0]
    noise, label, word = (_value(table, i, "probe", "selectivity") for i in range(3))
    assert _value(table, 0, "control", "accuracy").value < chance + 0.12  # random X
    assert _value(table, 1, "control", "accuracy").value < chance + 0.12
    assert label.value > 0.4 and label.ci_low > 0.25  # X encodes y: large selectivity
    assert abs(noise.value) < 0.15
    # a site that encodes word identity lets the probe memorise the control labels
    assert _value(table, 2, "control", "accuracy").value > chance + 0.3
    assert word.value < 0


def test_chunks_give_the_same_table(sweep):
    X, y, groups, texts, keys, table = sweep
    parts = [evaluate(X[i : i + 2], y=y, groups=groups, texts=texts, site_keys=keys[i : i + 2],
                      task="classification", config=CFG, include_text_baselines=False)
             for i in (0, 2)]
    parts.append(text_baselines(y=y, groups=groups, texts=texts, task="classification",
                                config=CFG))
    chunked = pd.concat(parts, ignore_index=True)
    key = ["site", "layer", "estimator", "metric"]
    pd.testing.assert_frame_equal(chunked.sort_values(key, ignore_index=True),
                                  table.sort_values(key, ignore_index=True), atol=1e-5)


def test_regression_and_an_embedding_site():
    rng = np.random.default_rng(1)
    y = rng.normal(size=150)
    X = rng.normal(size=(2, 150, 10))
    X[1, :, 0] += 2 * y
    table = evaluate(X, y=y, groups=np.arange(150) // 3, texts=None,
                     site_keys=[("hook_embed", None), ("hook_resid_post", 0)],
                     task="regression",
                     config=EvalConfig(n_bootstrap=100, lexical=False, control=False))
    validate_results(table)
    assert table[table.site == "hook_embed"].layer.isna().all()
    r2 = table[(table.metric == "r2") & (table.estimator == "probe")].value.to_numpy()
    assert r2[0] < 0.05 and r2[1] > 0.7
    assert set(table.metric) == {"r2", "pearson_r"}


def test_per_fold_scores():
    y = np.array([0, 1] * 10)
    pred = np.eye(2)[y][None] * 0.8 + 0.1
    folds = [(np.arange(10, 20), np.arange(10)), (np.arange(10), np.arange(10, 20))]
    out = per_fold_scores("classification", y, pred, folds)
    assert set(out.metric) == {"accuracy", "macro_f1", "auroc"}
    assert (out.value == 1.0).all() and len(out) == 6


@pytest.mark.parametrize("change, match", [
    (lambda a: {**a, "y": a["y"][:-1]}, "lengths"),
    (lambda a: {**a, "texts": None}, "texts are needed"),
    (lambda a: {**a, "y": np.array(["joy"] * 60)}, "one class"),
    (lambda a: {**a, "X": a["X"][:, :4], "y": np.array(["a", "b"] * 2),
                "groups": a["groups"][:4], "texts": a["texts"][:4]}, "fewer than n_splits"),
    (lambda a: {**a, "site_keys": a["site_keys"][:1]}, "site_keys"),
    (lambda a: {**a, "task": "ranking"}, "task must be"),
])
def test_degenerate_inputs_raise(change, match):
    rng = np.random.default_rng(0)
    args = {"X": rng.normal(size=(2, 60, 4)), "y": np.array(["a", "b", "c"] * 20),
            "groups": np.arange(60), "texts": ["x y"] * 60,
            "site_keys": [("hook_resid_post", 0), ("hook_resid_post", 1)],
            "task": "classification"}
    args = change(args)
    with pytest.raises(ProbeError, match=match):
        evaluate(args.pop("X"), **args, config=EvalConfig(n_bootstrap=0))


def test_nan_and_inf_are_located():
    X = np.random.default_rng(0).normal(size=(2, 60, 4))
    X[1, 7, 2], X[1, 9, 0] = np.nan, np.inf
    with pytest.raises(ProbeError, match=r"blocks\.1\.hook_resid_post \(rows \[7, 9\]\)"):
        evaluate(X, y=np.array(["a", "b"] * 30), groups=np.arange(60), texts=["w"] * 60,
                 site_keys=[("hook_resid_post", 0), ("hook_resid_post", 1)],
                 task="classification", config=EvalConfig(n_bootstrap=0))


def test_control_task_fallbacks_are_reported():
    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c"] * 20)
    X = rng.normal(size=(1, 60, 4))
    kwargs = {"y": y, "groups": np.arange(60), "site_keys": [("hook_resid_post", 0)],
              "task": "classification", "config": EvalConfig(n_bootstrap=0, lexical=False)}
    with pytest.warns(ProbeWarning, match="control task skipped"):
        table = evaluate(X, texts=["same ending"] * 60, **kwargs)
    assert set(table.estimator) == {"probe", "chance"} and "selectivity" not in set(table.metric)
    with pytest.warns(ProbeWarning, match="control task is weak"):
        evaluate(X, texts=[f"unique {i}" for i in range(60)], **kwargs)


def test_regression_selectivity_never_exceeds_the_probe_gain():
    """A control probe can score R^2 far below the blind predictor; selectivity credits it with
    no less than that predictor, so it never exceeds the probe's own gain over it."""
    rng = np.random.default_rng(3)
    n, d = 240, 32
    y = rng.normal(size=n)
    X = np.stack([np.c_[y + 0.5 * rng.normal(size=n), rng.normal(size=(n, d - 1))]]).astype("float32")
    groups = np.array([f"g{i // 4}" for i in range(n)])
    texts = [f"row {i} ends with w{i % 40}" for i in range(n)]
    cfg = EvalConfig(n_folds=4, n_bootstrap=50, lexical=False)
    df = evaluate(X, y=y, groups=groups, texts=texts, site_keys=[("hook_resid_post", 3)],
                  task="regression", config=cfg)
    get = lambda est, m: df[(df.estimator == est) & (df.metric == m)].value.iloc[0]  # noqa: E731
    r2, control, sel = get("probe", "r2"), get("control", "r2"), get("probe", "selectivity")
    folds = make_folds(y, groups, "regression", cfg)
    blind = np.empty(n)  # predict each fold's training mean
    for train, test in folds:
        blind[test] = y[train].mean()
    prior = 1 - ((y - blind) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    fake = control_labels(last_word_keys(texts), y, None, cfg.seed)
    for train, test in folds:
        blind[test] = fake[train].mean()
    prior_c = 1 - ((fake - blind) ** 2).sum() / ((fake - fake.mean()) ** 2).sum()
    assert r2 > 0.5 and prior < 0 and control < prior_c  # the control is worse than blind
    assert sel == pytest.approx((r2 - prior) - max(control - prior_c, 0.0), abs=1e-9)
    assert sel <= r2 - prior + 1e-12


def _scenario_like(seed=0, n_groups=48, n_classes=7):
    """emotion-scenarios' shape: every group holds one row of each class, so group folds are
    exactly balanced; last words repeat across groups (some keys are shared)."""
    rng = np.random.default_rng(seed)
    classes = np.array([f"c{k}" for k in range(n_classes)])
    y = np.tile(classes, n_groups)
    groups = np.repeat([f"s{g}" for g in range(n_groups)], n_classes)
    words = np.array([f"w{i}" for i in range(120)])
    texts = [f"a story ends with {w}." for w in words[rng.integers(0, len(words), len(y))]]
    return y, groups, texts


def test_an_uninformative_representation_has_zero_selectivity():
    """hook_embed under `last` pooling: one constant vector for every row (the template's last
    token). The control probe then predicts its training folds' majority control class, which
    under group folds is the test fold's minority: plain probe - control was +0.045 on
    emotion-scenarios with a CI excluding 0. Against each task's own chance it is 0."""
    y, groups, texts = _scenario_like()
    X = np.tile(np.linspace(-3, 3, 16, dtype=np.float32), (1, len(y), 1))
    cfg = EvalConfig(n_folds=5, n_bootstrap=300, lexical=False)
    df = evaluate(X, y=y, groups=groups, texts=texts, site_keys=[("hook_embed", None)],
                  task="classification", config=cfg)
    probe, control = _value(df, None, "probe", "accuracy"), _value(df, None, "control", "accuracy")
    sel = _value(df, None, "probe", "selectivity")
    assert probe.value == pytest.approx(1 / 7)
    assert control.value < 1 / 7 - 0.02  # the control's own chance on these folds is lower
    assert sel.value == pytest.approx(0.0, abs=1e-12)
    assert sel.ci_low <= 0.0 <= sel.ci_high


def test_informative_and_noise_representations_on_balanced_group_folds():
    y, groups, texts = _scenario_like(seed=1)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, len(y), 24)).astype(np.float32)
    X[1, :, :7] += 3 * (y[:, None] == np.unique(y))  # site 1 encodes the class
    df = evaluate(X, y=y, groups=groups, texts=texts,
                  site_keys=[("hook_resid_post", 0), ("hook_resid_post", 1)],
                  task="classification", config=EvalConfig(n_bootstrap=300, lexical=False))
    noise, informative = (_value(df, layer, "probe", "selectivity") for layer in (0, 1))
    assert noise.ci_low <= 0.0 <= noise.ci_high and abs(noise.value) < 0.06
    assert informative.value > 0.5 and informative.ci_low > 0.4


def test_the_control_labelling_equal_to_the_real_one_is_reported():
    y = np.array(["a", "b", "c"] * 20)
    texts = [f"it ends {label}" for label in y]  # the last word names the class
    X = np.random.default_rng(0).normal(size=(1, 60, 4))
    with pytest.warns(ProbeWarning, match="control labelling equals the real labelling"):
        evaluate(X, y=y, groups=np.arange(60), texts=texts, site_keys=[("hook_resid_post", 0)],
                 task="classification", config=EvalConfig(n_bootstrap=0, lexical=False))


def test_a_heldout_split_scores_only_the_test_rows(sweep):
    X, y, groups, texts, keys, table = sweep
    train, test = np.arange(160), np.arange(160, 240)  # groups are rows // 3: 53 | 54 split
    test = test[groups[test] != groups[159]]  # keep group 53 on one side
    df = evaluate(X, y=y, groups=groups, texts=texts, site_keys=keys, task="classification",
                  config=CFG, split=(train, test))
    validate_results(df)
    assert set(df.evaluation) == {"heldout"} and (df.n == len(test)).all()
    assert df.n_folds.isna().all()
    held = _value(df, 1, "probe", "accuracy")
    cv = _value(table, 1, "probe", "accuracy")
    assert abs(held.value - cv.value) < 0.1 and held.ci_low < held.value < held.ci_high
    assert held.ci_high - held.ci_low > cv.ci_high - cv.ci_low  # fewer rows, wider CI
    # the same as fitting on the train rows alone and scoring the test rows by hand
    from probe.engine import fit_logistic_cv

    proba = fit_logistic_cv(X[1:2], y, [(train, test)], C=CFG.C, tol=CFG.tol).predictions[0]
    by_hand = np.mean(np.unique(y)[proba[test].argmax(1)] == y[test])
    assert held.value == pytest.approx(by_hand)
    assert _value(df, 1, "probe", "selectivity").value > 0.3
    chance = df[(df.estimator == "chance") & (df.metric == "accuracy")].value.iloc[0]
    assert chance == pytest.approx(max(np.unique(y[test], return_counts=True)[1]) / len(test))


def test_heldout_splits_that_cannot_be_scored_are_refused(sweep):
    X, y, groups, texts, keys, _ = sweep
    kwargs = {"y": y, "groups": groups, "texts": texts, "site_keys": keys,
              "task": "classification", "config": EvalConfig(n_bootstrap=0)}
    with pytest.raises(ProbeError, match="group.*both the train and the test"):
        evaluate(X, **kwargs, split=(np.arange(100), np.arange(100, 240)))  # group 33 straddles
    angry = np.isin(groups, groups[y == "anger"])  # whole groups holding an "anger" row
    with pytest.raises(ProbeError, match=r"classes \['anger'\] occur only in the test part"):
        evaluate(X, **kwargs, split=(np.flatnonzero(~angry), np.flatnonzero(angry)))
    with pytest.raises(ProbeError, match="needs train and test rows"):
        evaluate(X, **kwargs, split=(np.arange(240), np.array([], int)))


def test_convergence_warnings_name_layer_pooling_and_the_fix():
    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c"] * 40)
    X = rng.normal(size=(2, 120, 30)) + 3 * (y == "a")[None, :, None]
    cfg = EvalConfig(n_bootstrap=0, lexical=False, control=False, max_iter=2, n_folds=3)
    with pytest.warns(ProbeWarning) as caught:
        evaluate(X, y=y, groups=np.arange(120), texts=None, task="classification", config=cfg,
                 site_keys=[("hook_resid_post", 14), ("hook_resid_post", 15)],
                 site_labels=[f"blocks.{layer}.hook_resid_post (last)" for layer in (14, 15)])
    text = " ".join(str(w.message) for w in caught)
    assert "blocks.14.hook_resid_post (last) folds [0, 1, 2]" in text and "max_iter=2" in text
    assert "--max-iter" in text and "site 14" not in text and "site 0" not in text
