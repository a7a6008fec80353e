"""Readers never need the writer lock: a command that only reads a complete store is not
refused while another process holds the store's lock (issue 15: `probe steer` was)."""

from __future__ import annotations

import fcntl
import os

import pytest

from probe.cache import CacheConfig, cache_activations
from probe.cli import main
from probe.store import StoreError, open_store
from probe.store_info import describe

SITES = "blocks.0.hook_resid_post blocks.1.hook_resid_post"


@pytest.fixture()
def held(tmp_path):
    """A store path and a function that takes its writer lock as another process would."""
    fds = []

    def hold(path):
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a separate open: a separate holder
        fds.append(fd)

    yield hold
    for fd in fds:
        os.close(fd)


def test_a_complete_store_is_read_while_another_process_holds_its_lock(
        tiny_llama, toy_dataset, tmp_path, held):
    out = tmp_path / "s.zarr"
    config = CacheConfig(sites=SITES, batch_size=8)
    cache_activations(tiny_llama, toy_dataset, config=config, out=out, progress=False)
    held(out)
    # everything cached: no lock needed, the same path back
    assert cache_activations(tiny_llama, toy_dataset, config=config, out=out,
                             progress=False) == out
    one = CacheConfig(sites="blocks.1.hook_resid_post", batch_size=8)  # a cached subset
    assert cache_activations(tiny_llama, toy_dataset, config=one, out=out, progress=False) == out
    assert open_store(out).attrs["complete"] and "status    complete" in describe(out)
    more = CacheConfig(sites="blocks.2.hook_resid_post", batch_size=8)  # needs writing: locked
    with pytest.raises(StoreError, match="another process is writing"):
        cache_activations(tiny_llama, toy_dataset, config=more, out=out, progress=False)


def test_probe_sweep_and_info_on_a_locked_complete_store(capsys, tiny_dir, tmp_path, held):
    data = tmp_path / "d.csv"
    data.write_text("text,label,story\n" + "".join(
        f"a {w} story number {i} about the day,{lab},s{i // 3}\n"
        for i, (w, lab) in enumerate([("sunny", "joy"), ("grey", "sadness")] * 18)))
    store = tmp_path / "s.zarr"
    argv = ["sweep", "--model", str(tiny_dir / "llama"), "--dataset", str(data), "--folds", "3",
            "--bootstrap", "20", "--quiet", "--group-column", "story", "--store", str(store),
            "--no-save-probes", "--no-control"]
    assert main([*argv, "--out", str(tmp_path / "r1")]) == 0
    held(store)
    assert main([*argv, "--out", str(tmp_path / "r2")]) == 0, capsys.readouterr().err
    assert (tmp_path / "r2" / "run.json").is_file()
    assert main(["info", str(store)]) == 0
    assert "status    complete" in capsys.readouterr().out
