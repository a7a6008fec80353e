"""probe_store on real stores from a tiny model: results, and clear errors for degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from probe.cache import CacheConfig, cache_activations
from probe.data.schema import EmotionDataset
from probe.evaluate import EvalConfig
from probe.stats import ProbeError
from probe.store import StoreError
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
    df = probe_store(store, target="score", sites="blocks.1.hook_resid_post", poolings=["last"],
                     config=FAST, progress=False)
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
    assert df.attrs["control_key_coverage"] == 1.0 and df.attrs["n_folds"] == 3
