"""Child process for kill-and-resume tests: caches a tiny model's activations into stores.

usage: python -m tests.probe._cache_child MODEL_DIR

It imports torch, transformers and the toolkit once (seconds), then serves requests: each line
on stdin is a JSON list ``[STORE]`` or ``[STORE, POINT]`` or ``[STORE, POINT, BLOCK]``. For each
it forks a fresh process that loads the model and caches the dataset into ``STORE`` (resuming
it), and answers ``exit CODE`` on stdout (``-9``: killed by SIGKILL). Forking happens before any
torch computation in this process, and every run is the same computation, so stores written by
different runs can be compared bit for bit.

Without ``POINT`` a run caches the whole store. With one, it SIGKILLs itself at that named
point of the write path, deterministically (no timing involved):

``mid-block K``       block K's first array is on disk, the other arrays and the commit are not
``mid-metadata K``    while block K's commit rewrites ``zarr.json``: the temporary file Zarr
                      writes first is on disk, the rename has not happened
``after-commit K``    right after block K is committed, before block K+1 is written
``before-complete``   the last block's ``progress`` is written but not ``complete`` (where a
                      writer that commits the two in separate writes can die)
``mid-create``        creating the store: its coordinates are on disk, its provenance is not

Blocks follow the default rule (:func:`probe.cache.block_size_for`): 96 rows in batches of 5
give blocks of 15 rows, the last one of 6.
"""

import json
import os
import signal
import sys
import uuid
from pathlib import Path

import zarr

from probe.cache import CacheConfig, cache_activations
from probe.data.schema import EmotionDataset
from probe.models import load_model
from probe.store import ActivationStore, is_complete

N_ROWS = 96
CONFIG = CacheConfig(sites="hook_embed blocks.*.hook_resid_post blocks.1.attn.hook_z",
                     poolings=("last", "content-mean"), batch_size=5)
POINTS = ("mid-block", "mid-metadata", "after-commit", "before-complete", "mid-create")


def dataset() -> EmotionDataset:
    from tests.tiny import CORPUS

    rows = [{"id": f"r{i}", "text": f"{CORPUS[i % len(CORPUS)]} ({i})", "label": "ab"[i % 2]}
            for i in range(N_ROWS)]
    return EmotionDataset.from_records("kill-test", rows)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, block: int | None) -> None:
    """Patch the store's write path so that the process dies at ``point``."""
    write_block, commit = ActivationStore.write_block, ActivationStore._commit
    current = {"block": None}

    def patched_write_block(self, start, arrays):
        current["block"] = start // self.block_size
        if point == "mid-block" and current["block"] == block:
            name, (layers, values) = next(iter(arrays.items()))
            if layers is None:
                self.group[name][start:start + len(values)] = values
            else:
                self.group[name][start:start + len(values), layers[0]:layers[-1] + 1] = values
            _die()
        write_block(self, start, arrays)
        if point == "after-commit" and current["block"] == block:
            _die()

    def patched_commit(self, progress):
        at_block = current["block"] == block
        if point == "mid-metadata" and at_block:
            (Path(self.path) / f"zarr.{uuid.uuid4().hex}.partial").write_text('{"torn": ')
            _die()
        if point == "before-complete" and is_complete(progress, self.n_samples):
            self.group.update_attributes({"progress": dict(progress)})  # complete stays False
            _die()
        commit(self, progress)

    ActivationStore.write_block = patched_write_block
    ActivationStore._commit = patched_commit
    if point == "mid-create":
        update = zarr.Group.update_attributes

        def patched_update(self, attrs):
            if "emoprobe" in attrs:
                _die()
            return update(self, attrs)

        zarr.Group.update_attributes = patched_update


def run(model_dir: str, store: str, point: str | None = None, block: int | None = None) -> None:
    """One caching run (in a forked process), killed at ``point`` if given."""
    signal.alarm(120)  # a hung run dies (exit -14) instead of hanging the test
    if point is not None:
        if point not in POINTS:
            raise SystemExit(f"unknown kill point {point!r}; choose from {POINTS}")
        install(point, block)
    lm = load_model(model_dir, device="cpu", dtype="float32")
    cache_activations(lm, dataset(), config=CONFIG, out=store, progress=False)


def main() -> None:
    model_dir = sys.argv[1]
    load_model(model_dir, device="cpu", dtype="float32")  # resolve transformers' lazy imports once
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:  # the run
            code = 1
            try:
                run(model_dir, *json.loads(line))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
