"""Several worker processes write one store: bit-identical to one process, and a killed
worker's blocks are redone on resume."""

import os
import signal
import time

import numpy as np
import pytest
import torch
import zarr

from probe import distributed
from probe.cache import CacheConfig, cache_activations
from probe.distributed import (DistributedError, Rank, cache_with_workers, finalize, owned_blocks,
                               rank_from_env)
from probe.models import load_model
from probe.store import open_store

CONFIG = CacheConfig(sites="hook_embed blocks.*.hook_resid_post blocks.1.attn.hook_z",
                     poolings=("last", "content-mean"), batch_size=2, block_size=4,
                     padding_side="right")


def loader(tiny_dir):
    return (load_model, (str(tiny_dir / "llama"),), {"device": "cpu", "dtype": "float32"})


def arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(a[...]) for name, a in group.arrays()}, dict(group.attrs)


def assert_same_store(a, b):
    (va, attrs_a), (vb, attrs_b) = arrays(a), arrays(b)
    assert va.keys() == vb.keys()
    for name in va:
        x, y = va[name], vb[name]
        if x.dtype.kind == "f":  # bit for bit, NaN included
            x, y = x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")
        assert np.array_equal(x, y), name
    assert attrs_a["progress"] == attrs_b["progress"] and attrs_a["complete"] == attrs_b["complete"]


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """The store one process makes (one torch thread, as each worker below)."""
    from probe.data.schema import EmotionDataset
    from tests.tiny import CORPUS

    labels = ["sadness", "joy", "neutral", "anger", "fear", "joy"]
    ds = EmotionDataset.from_records("toy", [{"id": f"r{i}", "text": t, "label": labels[i % 6],
                                              "group": f"g{i % 12}"} for i, t in enumerate(CORPUS)])
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = cache_activations(load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32"),
                                 ds, config=CONFIG, out=tmp_path_factory.mktemp("ref") / "one.zarr",
                                 progress=False)
    finally:
        torch.set_num_threads(old)
    return ds, path


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_write_the_one_process_store(tiny_dir, tmp_path, reference, workers):
    ds, one = reference
    out = cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=tmp_path / "w.zarr",
                             workers=workers, devices=["cpu"] * workers, start_method="fork")
    assert_same_store(one, out)
    assert open_store(out).attrs["complete"] and not (out / distributed.MARKERS).exists()


def test_a_killed_worker_is_redone_on_resume(tiny_dir, tmp_path, reference, monkeypatch):
    """Worker 1 of 2 is SIGKILLed after writing the chunks of its second block (rows 12-15),
    before that block's marker: the run fails, the store is incomplete with only the blocks
    before the gap committed, and rerunning redoes exactly the rest (bit for bit)."""
    ds, one = reference
    write = distributed.write_marker

    def killing(path, first, stop, keys):
        if first == 12:
            # die only once worker 0 has finished its blocks (0, 8, then 16): what survives
            # must not depend on how fast each process ran on a loaded machine
            deadline = time.monotonic() + 240
            while 16 not in distributed.read_markers(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        write(path, first, stop, keys)

    monkeypatch.setattr(distributed, "write_marker", killing)
    out = tmp_path / "k.zarr"
    with pytest.raises(DistributedError, match="workers failed.*emoprobe-worker-1.*rerun"):
        cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=out, workers=2,
                           devices=["cpu", "cpu"], start_method="fork")
    progress = arrays(out)[1]["progress"]
    assert set(progress.values()) == {12}
    assert not open_store(out, require_complete=False).attrs["complete"]
    assert sorted(distributed.read_markers(out)) == [16]  # done after the gap: kept
    # rank 1 owns blocks 4, 12, 20: 12 lost its marker, 20 never ran
    monkeypatch.setattr(distributed, "write_marker", write)
    cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=out, workers=2,
                       devices=["cpu", "cpu"], start_method="fork")
    assert_same_store(one, out)


def test_rank_0_waits_for_ranks_already_writing_a_rerun_store(tiny_dir, tmp_path, reference):
    """On a rerun the arrays exist, so rank 1 may take its shared lock before rank 0 reopens the
    store under the exclusive one: rank 0 then waits for it (it used to fail with "another
    process is writing", a race seen on a loaded machine), and gives up after ``wait_s``."""
    import shutil
    import threading

    from probe.cache import plan_cache
    from probe.store import StoreLockedError

    ds, one = reference
    out = tmp_path / "again.zarr"
    shutil.copytree(one, out)
    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    job = plan_cache(lm, ds, CONFIG, out)
    held = distributed._Lock(out, exclusive=False)          # rank 1, mid-work
    try:
        with pytest.raises(StoreLockedError, match="another process is writing"):
            distributed._prepare(job, ds, wait_s=0.5)
        done = []
        t = threading.Thread(target=lambda: done.append(distributed._prepare(job, ds, wait_s=60)))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not done                      # waiting, not failing
    finally:
        held.close()                                          # rank 1 finishes
    t.join(timeout=60)
    assert done == [None]
    assert_same_store(one, out)


def test_a_worker_error_is_reported_and_stops_the_others(tiny_dir, tmp_path):
    from probe.data.schema import EmotionDataset

    ds = EmotionDataset.from_records("pics", [{"id": str(i), "text": "a b", "label": "xy"[i % 2],
                                               "image": "x.png"} for i in range(8)])
    # Whichever worker fails first stops the other (exit -15), so either rank, or both, may report
    error = r"\(worker (0|1|0, 1): CaptureError: .*'image' column.*text only"
    with pytest.raises(DistributedError, match=error) as raised:
        cache_with_workers(loader(tiny_dir), ds, config=CONFIG, out=tmp_path / "e.zarr",
                           workers=2, devices=["cpu", "cpu"], start_method="fork", wait_s=60)
    assert "emoprobe-worker-0" in str(raised.value) and "emoprobe-worker-1" in str(raised.value)


def test_ranks_and_blocks():
    assert owned_blocks(10, 3, Rank(0, 2)) == [0, 6] and owned_blocks(10, 3, Rank(1, 2)) == [3, 9]
    assert rank_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == Rank(3, 8, None)
    assert rank_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
                          "SLURM_ARRAY_TASK_COUNT": "6"}) == Rank(4, 6)
    assert rank_from_env({}) is None
    with pytest.raises(DistributedError):
        owned_blocks(10, 3, Rank(2, 2))
    assert finalize.__doc__


def test_cli_distributed_worker_then_finalize(tiny_dir, tmp_path, monkeypatch, capsys):
    """``probe cache --distributed`` as torchrun starts it (RANK/WORLD_SIZE set): one worker of
    one writes every block, and the store it leaves is complete."""
    from probe.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    out = tmp_path / "d.zarr"
    argv = ["cache", "--model", str(tiny_dir / "llama"), "--dataset", "emotion-scenarios",
            "--limit", "35", "--sites", "blocks.*.hook_resid_post", "--out", str(out),
            "--distributed", "--quiet"]
    assert main(argv) == 0
    assert "worker 0/1 done" in capsys.readouterr().out
    assert open_store(out).attrs["complete"]
