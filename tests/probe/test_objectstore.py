"""Stores at fsspec URLs: memory:// in one process, and file:// forced through the object-store
bookkeeping (no flock, no rename in it) for several worker processes."""

import importlib
import importlib.util
import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from probe import distributed, objectstore
from probe import store as store_module
from probe.cache import CacheConfig, cache_activations
from probe.cli import _redacted, main
from probe.distributed import (DistributedError, Rank, cache_with_workers, finalize, read_markers,
                               run_worker)
from probe.evaluate import EvalConfig
from probe.models import load_model
from probe.objectstore import ObjectStoreError, Remote
from probe.store import ActivationStore, StoreError, open_store
from probe.sweep import probe_store
from tests.probe._synthetic_store import make_store
from tests.probe.test_distributed import (CONFIG, arrays, assert_same_store, loader,  # noqa: F401
                                          reference)  # the local one-process store (a fixture)

KEY = ["site", "layer", "pooling", "estimator", "metric"]


@pytest.fixture
def as_object_store(monkeypatch):
    """file:// URLs go through the object-store code path (inherited by forked workers)."""
    monkeypatch.setenv(objectstore.ENV_FILE_AS_OBJECT_STORE, "1")


def tiny_lm(tiny_dir):
    return load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")


def memory_arrays(url):
    """Arrays and attributes of a memory:// store, for assert_same_store's comparison."""
    import zarr

    group = zarr.open_group(Remote.at(url).zarr_store(read_only=True), mode="r")
    return {name: np.asarray(a[...]) for name, a in group.arrays()}, dict(group.attrs)


def test_memory_store_resumes_after_a_crash_between_chunks_and_progress(tiny_dir, reference,
                                                                        monkeypatch, one_thread):
    """A one-process run to memory:// dies after writing rows 8-11 but before the progress that
    would commit them: the store says 8 rows, and a rerun completes it bit for bit."""
    ds, one = reference
    url = "memory://crash/one.zarr"
    commit = ActivationStore._commit

    def dying(self, progress):
        if min(progress.values(), default=0) >= 12:
            raise RuntimeError("killed")
        commit(self, progress)

    monkeypatch.setattr(ActivationStore, "_commit", dying)
    with pytest.raises(RuntimeError, match="killed"):
        cache_activations(tiny_lm(tiny_dir), ds, config=CONFIG, out=url, progress=False)
    assert set(memory_arrays(url)[1]["progress"].values()) == {8}
    with pytest.raises(StoreError, match="incomplete"):
        open_store(url)
    monkeypatch.setattr(ActivationStore, "_commit", commit)
    assert cache_activations(tiny_lm(tiny_dir), ds, config=CONFIG, out=url,
                             progress=False) == url
    monkeypatch.setattr("tests.probe.test_distributed.arrays",
                        lambda p: memory_arrays(p) if str(p).startswith("memory://") else arrays(p))
    assert_same_store(one, url)
    assert open_store(url).attrs["complete"]
    with pytest.raises(DistributedError, match="made by a different run .batch_size"):
        run_worker(tiny_lm(tiny_dir), ds, config=replace(CONFIG, batch_size=4), out=url,
                   rank=Rank(1, 2), wait_s=5)


def test_info_and_errors_on_urls(tiny_dir, capsys, monkeypatch):
    make_store("memory://info/s.zarr", n=40, layers=2, d=8, block=20)
    assert main(["info", "memory://info/s.zarr"]) == 0
    out = capsys.readouterr().out
    assert "store     memory://info/s.zarr" in out and "status    complete" in out
    with pytest.raises(StoreError, match="no activation store at memory://nothing.zarr"):
        open_store("memory://nothing.zarr")
    assert main(["info", "memory://nothing.zarr"]) == 2
    assert main(["info", "nosuchproto://b/x.zarr"]) == 2
    assert "knows no protocol 'nosuchproto'" in capsys.readouterr().err
    assert main(["info", "memory://x.zarr", "--storage-options", "{bad"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    monkeypatch.delenv(objectstore.ENV_OPTIONS, raising=False)
    options = '{"skip_instance_cache": true}'
    assert main(["info", "memory://info/s.zarr", "--storage-options", options]) == 0
    assert objectstore.ENV_OPTIONS not in os.environ  # the option lasts one command
    with pytest.raises(DistributedError, match="memory:// store lives inside one process"):
        cache_with_workers(loader(tiny_dir), None, config=CONFIG, out="memory://w.zarr", workers=2)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_protocol_without_its_backend_says_what_to_install():
    with pytest.raises(ObjectStoreError, match="pip install s3fs"):
        open_store("s3://bucket/x.zarr")


class FakeS3(MemoryFileSystem):
    """An in-memory 's3' whose top-level folders are buckets (no network)."""

    protocol = ("s3",)
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("s3://"))


def test_bucket_check_and_storage_options_from_the_environment(monkeypatch, reference):
    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "s3", FakeS3)
    monkeypatch.setenv(objectstore.ENV_OPTIONS, json.dumps({"endpoint_url": "http://s3.test"}))
    remote = Remote.at("s3://nobucket/stores/x.zarr")
    assert remote.fs.storage_options["endpoint_url"] == "http://s3.test"
    ds, _ = reference
    prov = {**open_store(reference[1]).attrs["emoprobe"]}
    with pytest.raises(ObjectStoreError, match="bucket 'nobucket' does not exist"):
        ActivationStore.open_for_writing("s3://nobucket/stores/x.zarr", provenance=prov, dataset=ds)
    FakeS3().mkdir("bucket")
    with ActivationStore.open_for_writing("s3://bucket/stores/x.zarr", provenance=prov,
                                          dataset=ds) as store:
        assert store.path == "s3://bucket/stores/x.zarr"
    assert FakeS3().exists("bucket/stores/x.zarr/zarr.json")
    assert "endpoint_url" not in json.dumps(open_store("s3://bucket/stores/x.zarr",
                                                       require_complete=False).attrs)


def test_storage_options_never_reach_the_run_record():
    argv = ["sweep", "--store", "s3://b/x.zarr", "--storage-options", '{"secret": "s"}',
            "--storage={\"key\": \"k\"}"]
    assert _redacted(argv) == ["sweep", "--store", "s3://b/x.zarr", "--storage-options",
                               "<redacted>", "--storage=<redacted>"]


def test_workers_through_the_object_store_path_write_the_one_process_store(
        tiny_dir, tmp_path, reference, as_object_store, monkeypatch):
    """2 worker processes, file:// forced into object-store mode: bit-identical store; markers
    are kept (lock-free finalize never deletes); finalize again changes nothing."""
    ds, one = reference
    url = f"file://{tmp_path}/w.zarr"
    assert objectstore.is_remote(url)

    def forbidden(*args, **kwargs):
        raise AssertionError("the object-store path took a POSIX lock or renamed a marker")

    for module, name in ((distributed, "_Lock"), (distributed, "_atomic"), (store_module, "_lock")):
        monkeypatch.setattr(module, name, forbidden)  # inherited by the forked workers
    cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=url, workers=2,
                       devices=["cpu", "cpu"], start_method="fork")
    out = tmp_path / "w.zarr"
    assert_same_store(one, out)
    assert sorted(read_markers(Remote.at(url))) == list(range(0, 24, 4))
    assert not list(out.glob("*.lock")) and not list(out.rglob(".*.put"))
    before = (out / "zarr.json").read_bytes(), (out / "zarr.json").stat().st_mtime_ns
    assert finalize(url) is True
    assert ((out / "zarr.json").read_bytes(), (out / "zarr.json").stat().st_mtime_ns) == before


def test_a_killed_object_store_worker_is_redone(tiny_dir, tmp_path, reference, as_object_store,
                                                monkeypatch):
    """Worker 1 of 2 is SIGKILLed halfway through writing its second block's chunks (rows 12-15:
    one array written, the next not): no marker, progress stops at 12, the later block's marker
    counts only once the gap is filled, and a rerun completes the store bit for bit."""
    ds, one = reference
    write = distributed._write

    def killing(array, first, *args):
        if first == 12 and array.basename == "hook_resid_post":
            # the launcher stops the other worker when this one dies: let worker 0 commit its
            # block 16 first (under load it may still be behind), so the test is not a race
            deadline = time.monotonic() + 120
            while 16 not in read_markers(Remote.at(url)) and time.monotonic() < deadline:
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)
        write(array, first, *args)

    monkeypatch.setattr(distributed, "_write", killing)
    url = f"file://{tmp_path}/k.zarr"
    with pytest.raises(DistributedError, match="workers failed.*emoprobe-worker-1"):
        cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=url, workers=2,
                           devices=["cpu", "cpu"], start_method="fork")
    assert set(arrays(tmp_path / "k.zarr")[1]["progress"].values()) == {12}
    assert 12 not in read_markers(Remote.at(url)) and 16 in read_markers(Remote.at(url))
    monkeypatch.setattr(distributed, "_write", write)
    cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=url, workers=2,
                       devices=["cpu", "cpu"], start_method="fork")
    assert_same_store(one, tmp_path / "k.zarr")


def _finalize_child(url, results):
    results.put(finalize(url))


def test_concurrent_finalizers_agree(tmp_path, as_object_store):
    """Markers for every block, progress reset to 0: four finalizers at once (two processes, two
    rounds) all report complete and leave one progress, the full one."""
    url = f"file://{tmp_path}/f.zarr"
    make_store(url, n=60, layers=2, d=8, block=20)
    remote = Remote.at(url)
    full = remote.read_json("zarr.json")["attributes"]["progress"]
    for first in (0, 20, 40):
        distributed.write_marker(remote, first, first + 20, list(full))
    import zarr

    group = zarr.open_group(remote.zarr_store(), mode="r+", use_consolidated=True)
    group.update_attributes({"progress": {k: 0 for k in full}, "complete": False})
    assert not open_store(url, require_complete=False).attrs["complete"]
    ctx, results = mp.get_context("fork"), mp.get_context("fork").Queue()
    for _ in range(2):
        procs = [ctx.Process(target=_finalize_child, args=(url, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
    assert [results.get(timeout=5) for _ in range(4)] == [True] * 4
    assert remote.read_json("zarr.json")["attributes"]["progress"] == full
    assert open_store(url).attrs["complete"]


def test_out_of_core_sweep_from_a_memory_store_equals_the_in_memory_sweep(one_thread):
    pytest.importorskip("dask")
    url = make_store("memory://sweep/s.zarr", n=120, layers=3, d=16, block=40)
    config = EvalConfig(n_bootstrap=0, control=False, lexical=False, n_folds=3)
    want = probe_store(url, config=config, progress=False)
    got = probe_store(url, config=config, progress=False, memory="2MiB")
    merged = want.merge(got, on=KEY, suffixes=("_mem", "_ooc"))
    assert len(merged) == len(want) == len(got) == 3 * 2 * 3 + 3
    np.testing.assert_allclose(merged["value_ooc"], merged["value_mem"], rtol=0, atol=1e-6)
    assert isinstance(got, pd.DataFrame)
