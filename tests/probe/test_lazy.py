"""Out-of-core sweeps: Dask over the store's Zarr chunks, under a memory budget."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("dask")

from probe.evaluate import EvalConfig
from probe.lazy import MemoryBudgetError, open_lazy, parse_memory, read_sites, sites_per_read
from probe.store import open_store
from probe.sweep import _read, probe_store
from tests.conftest import REPO_ROOT
from tests.probe._capped_sweep import CHILD_ENV
from tests.probe._synthetic_store import make_store

KEY = ["site", "layer", "pooling", "estimator", "metric"]


def test_lazy_reads_equal_eager_reads_over_the_zarr_chunks(tmp_path):
    path = make_store(tmp_path / "s.zarr", n=250, layers=4, d=16, block=100, dtype="float16")
    ds, lazy = open_store(path), open_lazy(path)
    var = lazy["hook_resid_post"]
    assert var.data.chunksize == (100, 1, 1, 16)  # the store's own chunks
    rows = np.sort(np.random.default_rng(0).choice(250, 180, replace=False))
    for layers in ([0], [1, 3]):
        a = _read(ds["hook_resid_post"], "mean", layers, rows)
        b = read_sites(var, "mean", layers, rows)
        assert b.dtype == np.float32 and np.array_equal(a, b)


def test_opening_lazily_reads_nothing(tmp_path):
    """``open_lazy`` chunks each variable as stored without loading it (it once asked
    ``var.data``, which reads a lazily opened variable whole and keeps it cached)."""
    import tracemalloc

    path = make_store(tmp_path / "s.zarr", n=600, layers=16, d=256, block=200)
    size = 600 * 16 * 2 * 256 * 4
    open_lazy(path)  # imports and first-use caches outside the measurement
    tracemalloc.start()
    try:
        ds = open_lazy(open_store(path, require_complete=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds["hook_resid_post"].chunks is not None
    assert peak < size / 10, f"opening lazily allocated {peak / 2**20:.1f} MiB"


def test_budget_sizes_jobs_and_refuses_an_impossible_one():
    assert parse_memory("1.5GiB") == 3 * 2**29 and parse_memory("20MB") == 20_000_000
    kw = {"n": 1000, "width": 256, "task": "classification", "n_classes": 4, "n_folds": 5}
    assert sites_per_read(2**30, **kw) > 100 > sites_per_read(16 * 2**20, **kw) >= 1
    with pytest.raises(MemoryBudgetError, match="raise --memory"):
        sites_per_read(2**20, **kw)
    with pytest.raises(MemoryBudgetError, match="8GiB"):
        parse_memory("lots")


def test_out_of_core_sweep_under_a_ram_cap_equals_the_in_memory_sweep(tmp_path, one_thread):
    """A child process caps its address space (RLIMIT_AS) 24 MiB above what it uses after
    warming up, below the store's 75 MiB of activations: the out-of-core sweep runs there
    and gives the in-memory sweep's results; the in-memory sweep, which reads one pooling's
    37.5 MiB at once, fails there.

    glibc is told to map every allocation over 128 KiB on its own and to keep one arena, so
    the address space grows with what is allocated: with its defaults a thread's 64 MiB arena
    or a raised mmap threshold holds freed memory the cap cannot see, and on one CI machine the
    in-memory sweep fitted under the cap that way. Under these settings the out-of-core sweep
    needs 8-16 MiB whatever the store's size (16 to 64 layers, benchmarks/bench_out_of_core.py)
    and the in-memory one 2.5 times the store or more; before ``open_lazy`` stopped reading whole
    variables the out-of-core sweep needed more than the store (96 MiB at 64 layers), and this
    test fails."""
    path = make_store(tmp_path / "big.zarr", n=600, layers=64, d=256, block=200)
    per_pooling = 600 * 64 * 256 * 4
    assert per_pooling > 24 * 2**20  # and the store holds two poolings
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO_ROOT)}
    out = tmp_path / "ooc.csv"
    child = subprocess.run([sys.executable, "-m", "tests.probe._capped_sweep", str(path), "24",
                            "6MiB", str(out)], cwd=REPO_ROOT, env=env, capture_output=True,
                           check=False, text=True, timeout=300)
    assert "out-of-core ok" in child.stdout, (child.returncode, child.stderr[-2000:])
    assert child.returncode == 0 or child.returncode < 0, "in-memory sweep fit under the cap"
    config = EvalConfig(n_bootstrap=0, control=False, lexical=False)
    want = probe_store(path, config=config, progress=False)
    got = pd.read_csv(out)
    merged = want.merge(got, on=KEY, suffixes=("_mem", "_ooc"))
    assert len(merged) == len(want) == len(got) == 64 * 2 * 3 + 3  # + chance rows
    np.testing.assert_allclose(merged["value_ooc"], merged["value_mem"], rtol=0, atol=1e-6)
