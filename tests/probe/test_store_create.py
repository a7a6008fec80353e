"""Creating a store is atomic: a kill while creating never leaves a store without provenance
that no rerun resumes (issue 15: "made by a different run", every key None)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from probe.store import StoreError, open_store
from probe.store_create import leftover_siblings
from probe.store_info import describe
from tests.probe._cache_child import dataset
from tests.probe.test_store import CacheChild, _assert_same_store


@pytest.fixture(scope="module")
def child(tiny_dir):
    server = CacheChild(tiny_dir / "llama")
    yield server
    server.close()


def test_sigkill_while_creating_leaves_no_store_and_a_rerun_builds_it(child, tmp_path):
    out = tmp_path / "s.zarr"
    assert child(out, "mid-create") == -9  # coordinates written, provenance not yet
    assert not (out / "zarr.json").exists()  # no store without provenance ...
    assert len(leftover_siblings(out)) == 1  # ... only the hidden folder it was built in
    with pytest.raises(StoreError, match="no activation store.*interrupted"):
        open_store(out, require_complete=False)
    assert child(out) == 0
    assert leftover_siblings(out) == []  # the rerun removed the dead creator's folder
    ref = tmp_path / "ref.zarr"
    assert child(ref) == 0
    _assert_same_store(out, ref)
    assert "status    complete" in describe(out)


def _old_half_created(path, n=4):
    """What the previous version left when killed between coordinates and provenance."""
    group = zarr.open_group(path if not hasattr(path, "is_dir") else str(path), mode="a")
    for name in ("sample", "text", "text_hash", "label"):
        group.create_array(name, shape=(n,), dtype=str, dimension_names=["sample"])[:] = \
            np.array([f"{name}{i}" for i in range(n)])
    group.create_array("layer", shape=(3,), dtype="int64", dimension_names=["layer"])[:] = \
        np.arange(3)


def test_an_older_half_created_store_is_named_and_rebuilt(child, tmp_path):
    out = tmp_path / "old.zarr"
    _old_half_created(out)
    assert "HALF-CREATED" in describe(out)  # not "rerun to resume" with every key None
    assert child(out) == 0
    ds = open_store(out)
    assert ds.attrs["emoprobe"]["n_samples"] == len(dataset())
    assert ds["sample"].values[0] == "r0"


def test_a_folder_with_other_data_is_never_taken_for_a_leftover(tiny_llama, toy_dataset,
                                                                 tmp_path):
    from probe.cache import CacheConfig, cache_activations

    out = tmp_path / "theirs.zarr"
    _old_half_created(out)
    zarr.open_group(str(out), mode="a").create_array(
        "results", shape=(4, 2), dtype="float32", dimension_names=["sample", "x"])
    with pytest.raises(StoreError, match="made by a different run"):
        cache_activations(tiny_llama, toy_dataset, out=out, progress=False,
                          config=CacheConfig(sites="blocks.0.hook_resid_post"))
    assert (out / "results" / "zarr.json").is_file()


def test_a_failed_creation_removes_its_folder(tiny_llama, toy_dataset, tmp_path, monkeypatch):
    from probe import store as store_mod
    from probe.cache import CacheConfig, cache_activations

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "write_new_store", boom)
    out = tmp_path / "s.zarr"
    with pytest.raises(OSError, match="disk full"):
        cache_activations(tiny_llama, toy_dataset, out=out, progress=False,
                          config=CacheConfig(sites="blocks.0.hook_resid_post"))
    assert leftover_siblings(out) == [] and not (out / "zarr.json").exists()
    monkeypatch.undo()
    cache_activations(tiny_llama, toy_dataset, out=out, progress=False,
                      config=CacheConfig(sites="blocks.0.hook_resid_post"))
    assert open_store(out).attrs["complete"]


def test_an_object_store_half_created_store_is_rebuilt(tiny_llama, toy_dataset):
    """Object stores cannot rename: a store there without provenance is a creation that was
    killed, which a rerun removes and rebuilds."""
    import uuid

    from probe.cache import CacheConfig, cache_activations
    from probe.objectstore import Remote

    url = f"memory://half-{uuid.uuid4().hex[:8]}/s.zarr"
    remote = Remote.at(url)
    _old_half_created(remote.zarr_store())
    assert "HALF-CREATED" in describe(url)
    cache_activations(tiny_llama, toy_dataset, out=url, progress=False,
                      config=CacheConfig(sites="blocks.0.hook_resid_post"))
    ds = open_store(url)
    assert ds.attrs["complete"] and list(ds["sample"].values[:2]) == ["r0", "r1"]
