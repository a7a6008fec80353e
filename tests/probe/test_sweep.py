"""probe_store on real stores from a tiny model: results, and clear errors for degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from probe.cache import CacheConfig, cache_activations
from probe.data.schema import EmotionDataset
from probe.evaluate import EvalConfig
from probe.results import format_summary
from probe.stats import ProbeError, ProbeWarning
from probe.store import StoreError, open_store
from probe.sweep import probe_store

WORDS = ["day", "dog", "rain", "plan", "trip", "meal", "song"]
FAST = EvalConfig(n_folds=3, n_bootstrap=20, lexical=True)


def _dataset(n=36, with_missing=False):
    rows = []
    for i in range(n):
        label = ["joy", "sadness", "anger"][i % 3]
        if with_missing and i % 6 == 5:
            label = None
        rows.append({"id": f"r{i}", "text": f"{label or 'plain'} words {i} about the {WORDS[i % 7]}",
                     "label": label, "score": float(i % 5), "group": f"g{i // 3}",
                     "tags": ("a", "b") if i % 2 else ("a",)})
    return EmotionDataset.from_records("tiny-sweep", rows, targets={
        "label": "label", "score": "continuous", "tags": "multilabel"})


@pytest.fixture()
def store(tiny_llama, tmp_path):
    out = tmp_path / "s.zarr"
    cache_activations(tiny_llama, _dataset(with_missing=True), out=out, progress=False,
                      config=CacheConfig(sites="hook_embed blocks.0-1.hook_resid_post", block_size=16))
    return out


def test_results_cover_every_site_pooling_and_baseline(store):
    df = probe_store(store, target="label", config=FAST, progress=False)
    probe = df[df.estimator == "probe"]
    assert set(probe.site) == {"hook_embed", "hook_resid_post"}
    assert set(probe.pooling) == {"last", "content-mean"}
    assert set(probe.metric) == {"accuracy", "macro_f1", "auroc", "selectivity"}
    assert {"lexical", "chance", "control"} <= set(df.estimator)
    assert df.attrs["n_dropped"] == 6 and df.attrs["n_used"] == 30
    assert (df[df.estimator == "probe"].n == 30).all()


def test_regression_target(store):
    with pytest.raises(ProbeError, match="whole numbers"):  # 0-4: ids or a score?
        probe_store(store, target="score", config=FAST, progress=False)
    df = probe_store(store, target="score", task="regression", sites="blocks.1.hook_resid_post",
                     poolings=["last"], config=FAST, progress=False)
    assert set(df[df.estimator == "probe"].metric) >= {"r2", "pearson_r"}
    assert set(df.layer.dropna()) == {1}


def test_clear_errors(store):
    with pytest.raises(ProbeError, match="multi-label"):
        probe_store(store, target="tags", config=FAST, progress=False)
    with pytest.raises(ProbeError, match="not in this store"):
        probe_store(store, target="valence", config=FAST, progress=False)
    with pytest.raises(ProbeError, match="no cached blocks.2.hook_resid_post"):
        probe_store(store, sites="blocks.2.hook_resid_post", config=FAST, progress=False)
    with pytest.raises(ProbeError, match="no cached blocks.0.hook_mlp_out"):
        probe_store(store, sites="blocks.0.hook_mlp_out", config=FAST, progress=False)
    with pytest.raises(ProbeError, match="pooling 'token'"):
        probe_store(store, poolings=["token"], config=FAST, progress=False)


def test_nan_activations_are_reported_not_scored(store):
    arr = zarr.open_group(str(store), mode="r+")["hook_resid_post"]
    block = arr[0:16]
    block[3, 1, 0, 5] = np.nan
    arr[0:16] = block
    with pytest.raises(ProbeError, match="(?i)nan|finite"):
        probe_store(store, sites="blocks.1.hook_resid_post", poolings=["last"], config=FAST,
                    progress=False)


def test_incomplete_store_is_refused(tiny_llama, tmp_path):
    out = tmp_path / "s.zarr"
    cache_activations(tiny_llama, _dataset(), out=out, progress=False,
                      config=CacheConfig(sites="blocks.0.hook_resid_post", block_size=16))
    group = zarr.open_group(str(out), mode="r+")
    group.attrs.update({"complete": False, "progress": {"hook_resid_post/0": 16}})
    with pytest.raises(StoreError, match="incomplete"):
        probe_store(out, config=FAST, progress=False)


def test_control_key_coverage_is_reported(store):
    df = probe_store(store, target="label", poolings=["last"], sites="blocks.0.hook_resid_post",
                     config=FAST, progress=False)
    # 7 distinct last words over 30 rows: every test key was seen in training
    assert df.attrs["control_key_coverage"] == {"last": {"key": "the content's last word",
                                                         "cv": 1.0}}
    assert df.attrs["n_folds"] == 3 and df.attrs["task"] == "classification"


def _pair(tiny_llama, tmp_path, *, second=None, config=None):
    """Two stores of one tiny model: rows 0-35 and 36-71 of a 72-row dataset."""
    config = config or CacheConfig(sites="hook_embed blocks.0-1.hook_resid_post", block_size=16)
    rows = _dataset(72).frame
    paths = []
    for i, part in enumerate((rows.iloc[:36], rows.iloc[36:] if second is None else second)):
        ds = EmotionDataset(f"part{i}", part.reset_index(drop=True), targets={
            "label": "label", "score": "continuous", "tags": "multilabel"}, default_target="label")
        paths.append(cache_activations(tiny_llama, ds, out=tmp_path / f"p{i}.zarr", config=config,
                                       progress=False))
    return paths


def test_heldout_store_next_to_cv(tiny_llama, tmp_path):
    train, held = _pair(tiny_llama, tmp_path)
    df = probe_store(train, target="label", eval_store=held, config=FAST, progress=False)
    for evaluation in ("cv", "heldout"):
        part = df[(df.evaluation == evaluation) & (df.estimator == "probe")]
        assert set(part.site) == {"hook_embed", "hook_resid_post"}
        assert set(part.pooling) == {"last", "content-mean"}
        assert (part.n == 36).all()
    assert df[df.evaluation == "heldout"].n_folds.isna().all()
    assert {"lexical", "chance", "control"} <= set(df[df.evaluation == "heldout"].estimator)
    assert df.attrs["n_heldout"] == 36 and df.attrs["n_used"] == 36
    assert set(df.attrs["control_key_coverage"]["last"]) == {"key", "cv", "heldout"}
    text = format_summary(df, pooling="last")
    assert "held-out" in text.splitlines()[0] and "held-out lexical" in text


def test_heldout_stores_that_cannot_be_compared_are_refused(tiny_llama, tiny_dir, tmp_path):
    rows = _dataset(72).frame
    two_classes = rows.iloc[36:][rows.iloc[36:]["label"] != "anger"]
    train, held = _pair(tiny_llama, tmp_path, second=two_classes)
    with pytest.raises(ProbeError, match=r"\['anger'\] only in the training rows"):
        probe_store(train, target="label", eval_store=held, config=FAST, progress=False)
    with pytest.raises(ProbeError, match="pooling 'mean' is not in this store"):
        probe_store(train, eval_store=held, poolings=["mean"], config=FAST, progress=False)
    from probe.models import load_model

    qwen = load_model(str(tiny_dir / "qwen2"), device="cpu", dtype="float32")
    other = cache_activations(qwen, EmotionDataset("q", rows.iloc[36:].reset_index(drop=True),
                                                   targets={"label": "label"},
                                                   default_target="label"),
                              out=tmp_path / "q.zarr", progress=False,
                              config=CacheConfig(sites="blocks.0-1.hook_resid_post"))
    with pytest.raises(ProbeError, match="(?s)not made with the same model.*model_id"):
        probe_store(train, eval_store=other, sites="blocks.0.hook_resid_post", config=FAST,
                    progress=False)
    partial = tmp_path / "partial.zarr"
    cache_activations(tiny_llama, EmotionDataset("part1", rows.iloc[36:].reset_index(drop=True),
                                                 targets={"label": "label"},
                                                 default_target="label"),
                      out=partial, progress=False,
                      config=CacheConfig(sites="blocks.0.hook_resid_post", block_size=16))
    with pytest.raises(ProbeError, match="held-out store: the store has no cached "
                                         "blocks.1.hook_resid_post"):
        probe_store(train, eval_store=partial, sites="blocks.0-1.hook_resid_post", config=FAST,
                    progress=False)
    with pytest.raises(ProbeError, match="either eval_store"):
        probe_store(train, eval_store=held, split_eval="train", config=FAST, progress=False)


def test_split_column_defines_train_and_test(tiny_llama, tmp_path):
    frame = _dataset(72).frame
    frame["split"] = np.where(np.arange(72) < 48, "train", "test")  # groups of 3 stay whole
    ds = EmotionDataset("splits", frame, targets={"label": "label", "score": "continuous",
                                                  "tags": "multilabel"}, default_target="label")
    store = cache_activations(tiny_llama, ds, out=tmp_path / "s.zarr", progress=False,
                              config=CacheConfig(sites="blocks.1.hook_resid_post", block_size=32))
    df = probe_store(store, split_eval="train:test", config=FAST, progress=False)
    assert set(df.evaluation) == {"heldout"} and (df[df.estimator == "probe"].n == 24).all()
    assert df.attrs["n_train"] == 48 and df.attrs["n_heldout"] == 24
    text = format_summary(df, pooling="last")
    assert text.splitlines()[0].split()[:3] == ["site", "peak", "accuracy"]
    with pytest.raises(ProbeError, match="no test rows"):
        probe_store(store, split_eval="train:dev", config=FAST, progress=False)


def test_whole_number_targets_need_a_task(tiny_llama, tmp_path):
    frame = _dataset(36).frame.assign(emotion_id=lambda f: (np.arange(36) % 3).astype(float))
    ds = EmotionDataset("ids", frame, targets={"emotion_id": "continuous"},
                        default_target="emotion_id")
    store = cache_activations(tiny_llama, ds, out=tmp_path / "ids.zarr", progress=False,
                              config=CacheConfig(sites="blocks.1.hook_resid_post"))
    with pytest.raises(ProbeError, match=r"whole numbers \(0, 1, 2\)"):
        probe_store(store, config=FAST, progress=False)
    df = probe_store(store, task="classification", poolings=["last"], config=FAST,
                     progress=False)
    assert "accuracy" in set(df.metric) and df.attrs["task_reason"] == "--task classification"
    df = probe_store(store, task="regression", poolings=["last"], config=FAST, progress=False)
    assert "r2" in set(df.metric)


def test_token_pooling_keys_the_control_on_the_target_word(tiny_llama, tmp_path):
    frame = _dataset(36).frame
    frame["target_word"] = [t.split()[0] for t in frame["text"]]  # label or "plain"
    ds = EmotionDataset("tok", frame, targets={"label": "label"}, default_target="label")
    store = cache_activations(tiny_llama, ds, out=tmp_path / "t.zarr", progress=False,
                              config=CacheConfig(sites="blocks.1.hook_resid_post",
                                                 poolings=("token", "last")))
    with pytest.warns(ProbeWarning, match="equals the real labelling"):
        df = probe_store(store, target_words=frame["target_word"], config=FAST, progress=False)
    cover = df.attrs["control_key_coverage"]
    assert cover["token"]["key"] == "the target word"
    assert cover["last"]["key"] == "the content's last word"
    with pytest.warns(ProbeWarning, match="no target words"):
        probe_store(store, poolings=["token"], config=FAST, progress=False)


@pytest.fixture(scope="module")
def smollm_store(tmp_path_factory):
    """SmolLM2 on 12 emotion-scenarios (84 texts, every scenario with all 7 emotions), chat
    template on, `last` pooling: hook_embed is one constant vector (the template's last token)."""
    from probe.data import load_dataset
    from probe.models import load_model

    dataset = load_dataset("emotion-scenarios")
    dataset = dataset.select(dataset.frame["group"].isin(sorted(set(dataset.frame["group"]))[:12]))
    out = tmp_path_factory.mktemp("smollm") / "es.zarr"
    return cache_activations(load_model("smollm2-135m"), dataset, out=out, progress=False,
                             config=CacheConfig(sites="hook_embed blocks.12.hook_resid_post",
                                                poolings=("last", "content-mean")))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_real_constant_embedding_has_zero_selectivity(smollm_store):
    df = probe_store(smollm_store, config=EvalConfig(n_bootstrap=500, lexical=False),
                     progress=False)
    x = open_store(smollm_store)["hook_embed"].sel(pooling="last").values
    assert (x == x[0]).all()  # the representation is constant
    sel = df[df.metric == "selectivity"].set_index(["site", "pooling"])
    embed = sel.loc[("hook_embed", "last")]
    control = df[(df.estimator == "control") & (df.metric == "accuracy") & (df.layer.isna())
                 & (df.pooling == "last")].value.iloc[0]
    assert control < 1 / 7 - 0.03  # the control's own chance on these folds is lower ...
    assert embed.value == pytest.approx(0.0, abs=1e-9)  # ... which no longer counts
    assert embed.ci_low <= 0.0 <= embed.ci_high
    informative = sel.loc[("hook_resid_post", "content-mean")]  # 0.23 [0.13, 0.33] measured
    assert informative.value > 0.15 and informative.ci_low > 0.08


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("n, d", [(150, 12), (60, 200)])  # primal and dual (n < d) solves
def test_all_rows_probes_match_sklearn_in_raw_space(n, d):
    from probe.probes import LogisticProbe, RidgeProbe
    from probe.sweep import _fit_all_rows

    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    X = (rng.normal(size=(n, d)) * rng.uniform(0.1, 30, d) + rng.normal(0, 50, d)).astype("f4")
    X[:, :3] += 20 * (y[:, None] == np.array(["a", "b", "c"]))
    X[:, 5] = 7.0  # a constant feature
    cfg = EvalConfig()  # the sweep's own tolerance
    fit = _fit_all_rows(np.stack([X, X[:, ::-1]]), y, "classification", cfg, ["s0", "s1"])
    assert fit.coef.shape == (2, 3, d) and fit.converged.all()
    ref = LogisticProbe(C=cfg.C, tol=1e-10, max_iter=10_000).fit(X.astype("f8"), y)
    logits = X.astype("f8") @ fit.coef[0].T + fit.intercept[0]
    ref_logits = ref.decision_function(X.astype("f8"))
    np.testing.assert_allclose(logits - logits.mean(1, keepdims=True),
                               ref_logits - ref_logits.mean(1, keepdims=True), atol=2e-3, rtol=0)
    np.testing.assert_allclose(fit.coef[1], fit.coef[0][:, ::-1], atol=1e-4)
    assert fit.coef[0][:, 5].tolist() == [0.0, 0.0, 0.0]
    t = X[:, 0] - X[:, 1] + rng.normal(size=n).astype("f4")
    ridge = _fit_all_rows(X[None], t, "regression", cfg, ["s0"])
    np.testing.assert_allclose(X.astype("f8") @ ridge.coef[0, 0] + ridge.intercept[0, 0],
                               RidgeProbe(alpha=cfg.alpha).fit(X.astype("f8"), t).predict(X),
                               atol=1e-6 * np.abs(t).max())


def test_chunk_warnings_are_reported_once_per_pooling(tiny_llama, tmp_path, monkeypatch):
    import warnings

    import probe.sweep

    frame = _dataset(36).frame.assign(text=lambda f: f["text"] + " the end")  # one control key
    ds = EmotionDataset("ends", frame, targets={"label": "label"}, default_target="label")
    store = cache_activations(tiny_llama, ds, out=tmp_path / "e.zarr", progress=False,
                              config=CacheConfig(sites="blocks.0-1.hook_resid_post"))
    monkeypatch.setattr(probe.sweep, "READ_BUDGET", 1)  # one layer per chunk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe_store(store, config=FAST, progress=False)
    skipped = [str(w.message) for w in caught if "control task skipped" in str(w.message)]
    assert sorted(m.split(":")[0] for m in skipped) == ["pooling content-mean", "pooling last"]
