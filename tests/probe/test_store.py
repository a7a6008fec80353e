"""The activation store: resumable (also after SIGKILL), never complete before it is, honest."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probe.cache import CacheConfig, cache_activations
from probe.store import ActivationStore, StoreError, describe, open_store
from tests.conftest import REPO_ROOT

CHILD = [sys.executable, "-m", "tests.probe._cache_child"]


def _child(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([*CHILD, *map(str, args)], cwd=REPO_ROOT, env=env, **kw)


def _assert_same_store(a: Path, b: Path) -> None:
    x, y = open_store(a), open_store(b)
    assert set(x.data_vars) == set(y.data_vars)
    for name in x.data_vars:
        xa, ya = x[name].values, y[name].values
        assert np.array_equal(xa, ya, equal_nan=True), name
    assert x.attrs["progress"] == y.attrs["progress"]
    for c in ("sample", "text_hash", "label", "group"):
        assert (x[c].values == y[c].values).all()


@pytest.fixture(scope="module")
def reference_store(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert _child([tiny_dir / "llama", out]).wait(timeout=300) == 0
    return out


def test_sigkill_mid_write_then_resume_is_identical(tiny_dir, tmp_path, reference_store):
    out = tmp_path / "killed.zarr"
    proc = _child([tiny_dir / "llama", out, "kill-at-block", 3])
    assert proc.wait(timeout=300) == -signal.SIGKILL
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)
    partial = open_store(out, require_complete=False)
    assert set(partial.attrs["progress"].values()) == {24}  # blocks 0-2 committed, 3 torn
    assert _child([tiny_dir / "llama", out]).wait(timeout=300) == 0
    _assert_same_store(out, reference_store)


def _committed_rows(out: Path) -> int:
    try:
        return min(open_store(out, require_complete=False).attrs["progress"].values() or [0])
    except (StoreError, OSError, ValueError, KeyError):
        return 0


def test_random_sigkills_then_resume_is_identical(tiny_dir, tmp_path, reference_store):
    out = tmp_path / "random.zarr"
    rng = random.Random(1)
    kills_mid_run = 0
    for _ in range(3):
        start_rows = _committed_rows(out)
        proc = _child([tiny_dir / "llama", out])
        deadline = time.time() + 120
        while proc.poll() is None and _committed_rows(out) <= start_rows and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a later block
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills_mid_run += 1
        proc.wait(timeout=60)
    assert kills_mid_run >= 2, "the child finished before it could be killed: make it longer"
    assert _child([tiny_dir / "llama", out]).wait(timeout=300) == 0
    _assert_same_store(out, reference_store)


def test_store_opens_as_labelled_xarray(reference_store):
    ds = xr.open_zarr(reference_store, consolidated=False)
    assert ds["hook_resid_post"].dims == ("sample", "layer", "pooling", "d_model")
    assert ds["attn.hook_z"].dims == ("sample", "layer", "pooling", "head", "d_head")
    assert ds["hook_embed"].dims == ("sample", "pooling", "d_model")
    assert list(ds.pooling.values) == ["last", "content-mean"]
    assert ds.sample.values[0] == "r0" and set(ds.label.values) == {"a", "b"}
    assert ds["hook_resid_post"].dtype == np.float16
    one = ds["hook_resid_post"].sel(layer=2, pooling="last").values
    assert one.shape == (96, 64) and np.isfinite(one).all()
    # attn.hook_z was cached only at layer 1: other layers read as NaN
    assert np.isnan(ds["attn.hook_z"].sel(layer=0).values).all()
    prov = ds.attrs["emoprobe"]
    for key in ("model_id", "weight_fingerprint", "dtype", "dataset_hash", "poolings",
                "chat_template", "toolkit_version", "revision"):
        assert key in prov
    text = describe(reference_store)
    assert "complete" in text and "layers cached: 0-2" in text


def test_refuses_a_store_from_a_different_run(tiny_llama, toy_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    cache_activations(tiny_llama, toy_dataset, config=CacheConfig(block_size=8), out=out, progress=False)
    with pytest.raises(StoreError, match="poolings"):
        cache_activations(tiny_llama, toy_dataset, config=CacheConfig(poolings=("mean",), block_size=8),
                          out=out, progress=False)
    with pytest.raises(StoreError, match="dataset_hash"):
        cache_activations(tiny_llama, toy_dataset.limit(10), config=CacheConfig(block_size=8),
                          out=out, progress=False)
    assert open_store(out).attrs["complete"]


def test_adding_sites_later_caches_only_what_is_missing(tiny_llama, toy_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    cfg = CacheConfig(sites="blocks.0.hook_resid_post", block_size=8)
    cache_activations(tiny_llama, toy_dataset, config=cfg, out=out, progress=False)
    before = open_store(out)["hook_resid_post"].sel(layer=0).values
    cfg2 = CacheConfig(sites="blocks.0-2.hook_resid_post blocks.1.hook_mlp_out", block_size=8)
    cache_activations(tiny_llama, toy_dataset, config=cfg2, out=out, progress=False)
    ds = open_store(out)
    assert np.array_equal(ds["hook_resid_post"].sel(layer=0).values, before)
    assert np.isfinite(ds["hook_resid_post"].values).all()
    assert np.isfinite(ds["hook_mlp_out"].sel(layer=1).values).all()


def test_float16_overflow_is_detected_not_stored(tiny_dir, toy_dataset, tmp_path):
    import torch

    from probe.models import load_model

    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    with torch.no_grad():
        lm.model.get_input_embeddings().weight.mul_(1e5)  # embeddings beyond float16's 65504
    out = tmp_path / "s.zarr"
    with pytest.raises(StoreError, match="store-dtype float32"):
        cache_activations(lm, toy_dataset, config=CacheConfig(sites="hook_embed", block_size=8),
                          out=out, progress=False)
    ds = open_store(out, require_complete=False)
    assert not ds.attrs["complete"] and ds.attrs["progress"] == {"hook_embed": 0}
    assert not np.isinf(ds["hook_embed"].values).any()
    out32 = tmp_path / "s32.zarr"
    cache_activations(lm, toy_dataset, config=CacheConfig(sites="hook_embed", block_size=8,
                                                          store_dtype="float32"), out=out32, progress=False)
    assert np.abs(open_store(out32)["hook_embed"].values).max() > 65504


def test_second_writer_is_locked_out(tiny_llama, toy_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    from probe.cache import provenance

    cfg = CacheConfig(block_size=8)
    prov = provenance(tiny_llama, toy_dataset, cfg)
    with ActivationStore.open_for_writing(out, provenance=prov, dataset=toy_dataset):
        with pytest.raises(StoreError, match="another process"):
            cache_activations(tiny_llama, toy_dataset, config=cfg, out=out, progress=False)


def test_refuses_to_write_into_a_foreign_directory(tiny_llama, toy_dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        cache_activations(tiny_llama, toy_dataset, out=tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no activation store"):
        open_store(tmp_path / "nope.zarr")
