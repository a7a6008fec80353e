"""The activation store: resumable (also after SIGKILL), never complete before it is, honest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probe.cache import CacheConfig, block_size_for, cache_activations
from probe.store import ActivationStore, StoreError, is_complete, open_store
from probe.store_info import describe
from tests.conftest import REPO_ROOT

class CacheChild:
    """``tests/probe/_cache_child.py``: imports once, then forks one caching run per request."""

    def __init__(self, model_dir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.probe._cache_child",
                                      str(model_dir)], cwd=REPO_ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, store: Path, *kill) -> int:
        """Cache into ``store`` (killed at a named point if given); the run's exit code."""
        self.proc.stdin.write(json.dumps([str(store), *kill]) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("exit "):
                return int(line.split()[1])
        raise RuntimeError(f"the caching child died (exit {self.proc.wait()})")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def child(tiny_dir):
    server = CacheChild(tiny_dir / "llama")
    yield server
    server.close()


def _assert_same_store(a: Path, b: Path) -> None:
    """Bit-identical: a resumed store runs exactly the computation of an uninterrupted one."""
    x, y = open_store(a), open_store(b)
    assert set(x.data_vars) == set(y.data_vars)
    for name in x.data_vars:
        xa, ya = x[name].values, y[name].values
        assert np.array_equal(xa, ya, equal_nan=True), name
    assert x.attrs["progress"] == y.attrs["progress"]
    for c in ("sample", "text_hash", "label", "group"):
        assert (x[c].values == y[c].values).all()


def _on_disk(store: Path) -> dict:
    """The root attributes as the file holds them (no derived values)."""
    return json.loads((store / "zarr.json").read_text())["attributes"]


def _rows(store: Path) -> set[int]:
    return set(_on_disk(store)["progress"].values())


@pytest.fixture(scope="module")
def reference_store(child, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert child(out) == 0
    return out


def test_block_size_rule():
    assert block_size_for(96, 5) == 15  # the kill tests' store: 7 blocks, the last of 6 rows
    assert block_size_for(448, 32) == 64  # the default dataset: 7 blocks
    assert block_size_for(10, 32) == 32 and block_size_for(100_000, 32) == 512
    assert block_size_for(100_000, 48) == 480 and block_size_for(100_000, 1000) == 1000
    for n in (1, 7, 84, 300, 5000):
        for b in (1, 8, 32):
            size = block_size_for(n, b)
            assert size % b == 0 and (size <= 512 or size == b)
            # the smallest whole number of batches covering n/8 rows: Ctrl-C loses <= ~1/8
            assert size == b or size - b < -(-n // 8)


def test_ctrl_c_keeps_the_committed_blocks(tiny_llama, toy_dataset, tmp_path, monkeypatch):
    """24 rows in batches of 3: blocks of 3 rows; Ctrl-C during block 5 keeps blocks 0-4."""
    import probe.cache

    real = probe.cache.iter_blocks

    def interrupted(*args, **kwargs):
        for i, block in enumerate(real(*args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield block

    monkeypatch.setattr(probe.cache, "iter_blocks", interrupted)
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        cache_activations(tiny_llama, toy_dataset, config=CacheConfig(batch_size=3), out=out,
                          progress=False)
    assert _rows(out) == {15}
    monkeypatch.undo()
    cache_activations(tiny_llama, toy_dataset, config=CacheConfig(batch_size=3), out=out,
                      progress=False)
    assert _rows(out) == {24} and open_store(out).attrs["complete"]


def test_kills_at_named_points_then_resume_is_identical(child, tmp_path, reference_store):
    """Blocks of 15 rows: each kill keeps exactly the blocks committed before it."""
    out = tmp_path / "killed.zarr"
    assert child(out, "after-commit", 1) == -signal.SIGKILL
    assert _rows(out) == {30} and not _on_disk(out)["complete"]
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)

    assert child(out, "mid-metadata", 3) == -signal.SIGKILL
    assert _rows(out) == {45}  # block 3 is on disk but its commit is not
    assert list(out.glob("zarr.*.partial"))

    assert child(out, "mid-block", 5) == -signal.SIGKILL
    assert _rows(out) == {75} and not list(out.glob("zarr.*.partial"))
    partial = open_store(out, require_complete=False)
    assert not partial.attrs["complete"]
    assert "unfinished: L0 75/96" in describe(out)

    assert child(out) == 0
    assert _on_disk(out)["complete"]
    _assert_same_store(out, reference_store)


def test_kill_between_progress_and_complete_is_repaired(child, tmp_path, reference_store):
    """All rows committed, ``complete`` never written: the store is complete, a rerun says so."""
    out = tmp_path / "torn.zarr"
    assert child(out, "before-complete") == -signal.SIGKILL
    assert _rows(out) == {96} and _on_disk(out)["complete"] is False
    assert open_store(out).attrs["complete"]  # completeness is derived from progress
    assert "status    complete" in describe(out)
    chunks = {p: p.stat().st_mtime_ns for p in out.rglob("c/*") if p.is_file()}
    assert child(out) == 0
    assert _on_disk(out)["complete"] is True
    assert {p: p.stat().st_mtime_ns for p in chunks} == chunks  # nothing was recomputed
    _assert_same_store(out, reference_store)


def test_every_commit_is_one_consistent_write(tiny_llama, toy_dataset, tmp_path, monkeypatch):
    """Each write of the root metadata holds progress and completeness that agree."""
    from zarr.storage import LocalStore

    seen: list[dict] = []
    real_set = LocalStore.set

    async def spy(self, key, value):
        await real_set(self, key, value)
        if key == "zarr.json":
            seen.append(json.loads(value.to_bytes())["attributes"])

    monkeypatch.setattr(LocalStore, "set", spy)
    cache_activations(tiny_llama, toy_dataset, config=CacheConfig(batch_size=4), out=tmp_path / "s",
                      progress=False)
    commits = [a for a in seen if a.get("progress")]
    assert len(commits) >= len(toy_dataset) // 4  # one per block at least
    for attrs in commits:
        assert attrs["complete"] == is_complete(attrs["progress"], len(toy_dataset)), attrs
    assert commits[-1]["complete"]


def test_store_opens_as_labelled_xarray(reference_store):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_zarr(reference_store)  # the README's one-liner: consolidated metadata
    assert not [w for w in caught if "onsolidated" in str(w.message)]
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
    assert "batches   5 texts, right padding, committed in blocks of 15 rows" in text


def test_refuses_a_store_from_a_different_run(tiny_llama, toy_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    cache_activations(tiny_llama, toy_dataset, config=CacheConfig(block_size=8), out=out, progress=False)
    with pytest.raises(StoreError, match="poolings"):
        cache_activations(tiny_llama, toy_dataset, config=CacheConfig(poolings=("mean",), block_size=8),
                          out=out, progress=False)
    with pytest.raises(StoreError, match="dataset_hash"):
        cache_activations(tiny_llama, toy_dataset.select(list(range(10))),
                          config=CacheConfig(block_size=8), out=out, progress=False)
    # batching decides which rows share a forward pass, so it decides the last bits
    with pytest.raises(StoreError, match="batch_size: store has 32, this run has 4"):
        cache_activations(tiny_llama, toy_dataset, config=CacheConfig(block_size=8, batch_size=4),
                          out=out, progress=False)
    # the store records whichever side the tokenizer defaults to (it varies across
    # transformers releases), so ask for the other one
    other = "left" if open_store(out).attrs["emoprobe"]["padding_side"] == "right" else "right"
    with pytest.raises(StoreError, match="padding_side"):
        cache_activations(tiny_llama, toy_dataset, config=CacheConfig(block_size=8,
                          padding_side=other), out=out, progress=False)
    assert open_store(out).attrs["complete"]


def test_adding_sites_later_caches_only_what_is_missing(tiny_llama, toy_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    cfg = CacheConfig(sites="blocks.0.hook_resid_post", block_size=8)
    cache_activations(tiny_llama, toy_dataset, config=cfg, out=out, progress=False)
    before = open_store(out)["hook_resid_post"].sel(layer=0).values
    cfg2 = CacheConfig(sites="blocks.0-2.hook_resid_post blocks.1.hook_mlp_out", block_size=8)
    cache_activations(tiny_llama, toy_dataset, config=cfg2, out=out, progress=False)
    ds = open_store(out)
    assert np.array_equal(ds["hook_resid_post"].sel(layer=0).values, before)  # not rewritten
    assert np.isfinite(ds["hook_resid_post"].values).all()
    assert np.isfinite(ds["hook_mlp_out"].sel(layer=1).values).all()
    assert "hook_mlp_out" in xr.open_zarr(out).data_vars  # consolidated metadata follows


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
