"""Caching with many workers (GPUs, processes, nodes) into one store.

Each worker owns a fixed, disjoint set of blocks (block ``b`` of the dataset belongs to rank
``b % world_size``); a block is whole Zarr chunks (block size = the store's sample chunk), so
no two workers ever write the same file. Within a block a worker runs exactly the batches a
one-process run would (:func:`probe.capture.plan_blocks`), so the store is bit-identical to one
made by ``probe cache`` alone, given the same thread settings.

Progress stays correct with concurrent writers because workers never touch the store's metadata:

1. rank 0 creates (or reopens) the store and its arrays under the store's exclusive lock; the
   other ranks wait until they are there;
2. every worker holds a *shared* lock while it writes (a one-process ``probe cache`` on the
   same store is locked out), writes a block's chunks, then an atomic done-marker
   ``.emoprobe-blocks/<first row>.json`` naming what the block covered;
3. :func:`finalize` (the last worker to finish, or ``probe cache --finalize``) takes the
   exclusive lock and folds the markers into ``progress``: an array's committed prefix grows
   through consecutive done blocks, and the store is complete when every prefix reaches the end.

A killed worker leaves chunks without a marker: they do not count, and rerunning the job (any
number of workers) redoes exactly the blocks that have no marker. Engines: the local launcher
(:func:`cache_with_workers`, ``probe cache --workers N``), ``torchrun`` (``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK``) and SLURM job arrays (``SLURM_ARRAY_TASK_ID`` /
``SLURM_ARRAY_TASK_COUNT``), all on one store on a shared POSIX filesystem or an object store.

On an object store (an fsspec URL, :mod:`probe.objectstore`) there is no lock and no rename:
a marker is one PUT written after its block's chunks, workers never delete anything, and
finalize is lock-free: it derives progress from the committed prefix and the markers, writes the
root ``zarr.json`` only if that changes it, and re-reads until what it reads is what it would
write. Progress only ever counts blocks whose marker exists, so any interleaving of finalizers
is sound, and running one again (or several at once) converges to the same ``zarr.json``.
Markers are kept there: deleting them without a lock could let a slower finalizer, holding an
older ``progress``, write back less than is done.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe import objectstore
from probe.errors import EmoprobeError
from probe.io import atomic_write
from probe.objectstore import Remote
from probe.store import MARKERS


class DistributedError(EmoprobeError, RuntimeError):
    """A worker cannot join, or the store is not ready for it."""


@dataclass(frozen=True)
class Rank:
    """Who this worker is: ``rank`` of ``world`` workers, on ``device``."""

    rank: int
    world: int
    device: str | None = None


def rank_from_env(env=os.environ) -> Rank | None:
    """The worker's rank from torchrun (``RANK``/``WORLD_SIZE``) or a SLURM job array."""
    if "RANK" in env and "WORLD_SIZE" in env:
        local = env.get("LOCAL_RANK")
        dev = f"cuda:{local}" if local is not None and torch.cuda.is_available() else None
        return Rank(int(env["RANK"]), int(env["WORLD_SIZE"]), dev)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return Rank(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    return None


def owned_blocks(n_rows: int, block_size: int, rank: Rank) -> list[int]:
    """First rows of the blocks ``rank`` owns (round robin over the dataset's blocks).

    >>> owned_blocks(10, 3, Rank(1, 2))
    [3, 9]
    """
    if not 0 <= rank.rank < rank.world:
        raise DistributedError(f"rank {rank.rank} is not in 0..{rank.world - 1}")
    firsts = range(0, n_rows, block_size)
    return [first for b, first in enumerate(firsts) if b % rank.world == rank.rank]


# --------------------------------------------------------------------------------- markers
def marker_dir(path: Path) -> Path:
    return Path(path) / MARKERS


def write_marker(path: Path | Remote, first: int, stop: int, keys: Sequence[str]) -> None:
    """Record, atomically, that rows ``first:stop`` of ``keys`` are on disk."""
    record = {"first": first, "stop": stop, "keys": sorted(keys)}
    if isinstance(path, Remote):  # one PUT each, after the block's chunks
        if not path.exists(f"{MARKERS}/zarr.json"):
            path.write_json(f"{MARKERS}/zarr.json", _MARKER_GROUP)
        path.write_json(f"{MARKERS}/{first}.json", record)
        return
    folder = marker_dir(path)
    folder.mkdir(exist_ok=True)
    if not (folder / "zarr.json").is_file():  # an (empty) Zarr group, so readers skip it quietly
        _atomic(folder / "zarr.json", json.dumps(_MARKER_GROUP))
    _atomic(folder / f"{first}.json", json.dumps(record))


_MARKER_GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {"emoprobe": "done blocks"}}


_atomic = atomic_write  # a unique temporary name per writer, then a rename


def read_markers(path: Path | Remote, *, since: int = 0) -> dict[int, dict]:
    """The done-markers of a store, by first row (on an object store, those from ``since``)."""
    if isinstance(path, Remote):  # one GET per marker: skip those below every committed prefix
        names = [n for n in path.listdir(MARKERS)
                 if n.endswith(".json") and n[:-5].isdigit() and int(n[:-5]) >= since]
        return {int(m["first"]): m for m in (path.read_json(f"{MARKERS}/{n}") for n in names)}
    folder = marker_dir(path)
    if not folder.is_dir():
        return {}
    out = {}
    for f in folder.glob("[0-9]*.json"):
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):  # pragma: no cover - never written partially
            continue
        out[int(m["first"])] = m
    return out


def fold_markers(progress: dict[str, int], markers: dict[int, dict]) -> dict[str, int]:
    """Extend each key's committed prefix through consecutive done blocks.

    >>> done = {0: {"stop": 4, "keys": ["a"]}, 4: {"stop": 8, "keys": ["a", "b"]}}
    >>> fold_markers({"a": 0, "b": 4}, done)
    {'a': 8, 'b': 8}
    """
    out = dict(progress)
    for key, done in progress.items():
        while (m := markers.get(done)) is not None and key in m["keys"]:
            done = int(m["stop"])
        out[key] = done
    return out


# ----------------------------------------------------------------------------------- locks
class _Lock:
    """flock on the store directory: shared for workers, exclusive for create / finalize."""

    def __init__(self, path: Path, exclusive: bool, *, wait: bool = True) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(self.fd, flags)
        except BlockingIOError:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)


# -------------------------------------------------------------------------------- a worker
def run_worker(lm, dataset, *, config, out: str | Path, rank: Rank, wait_s: float = 600.0,
               progress: bool = False) -> bool:
    """Cache this worker's blocks into the store at ``out``; finalize if it finishes last.

    Returns:
        Whether the store is complete after this worker (False: others still run, or a
        block is missing).
    """
    from probe.cache import plan_cache

    job = plan_cache(lm, dataset, config, out)
    if rank.rank == 0:
        _prepare(job, dataset, wait_s)
    _wait_ready(job, wait_s)
    if isinstance(job.path, str):  # an object store: no lock; finalize is lock-free
        _work(lm, job, rank, progress)
        return finalize(job.path) is True
    lock = _Lock(job.path, exclusive=False)
    try:
        _work(lm, job, rank, progress)
    finally:
        lock.close()
    return finalize(job.path, wait=False) is True


def _prepare(job, dataset, wait_s: float) -> None:
    """Rank 0 makes (or reopens) the store under its exclusive lock. On a rerun the arrays are
    already there, so other ranks may have started and hold their shared locks: then wait for
    them (their blocks are theirs; nothing is lost) instead of failing."""
    from probe.cache import prepare_store
    from probe.store import StoreLockedError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            prepare_store(job, dataset)
            return
        except StoreLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_ready(job, wait_s: float) -> None:
    """Until rank 0 has made the store and every array this job writes."""
    import zarr

    from probe.store import zarr_target

    deadline = time.monotonic() + wait_s
    keys = job.progress_keys
    where = objectstore.where(job.path)
    while True:
        try:
            group = zarr.open_group(zarr_target(where), mode="r", use_consolidated=False)
            have = dict(group.attrs.get("progress", {}))
            if all(k in have for k in keys):
                if isinstance(where, Remote):  # no lock there: rank 0 did not check for us
                    _check_same_run(where, dict(group.attrs["emoprobe"]), job.provenance)
                return
        except (FileNotFoundError, KeyError, ValueError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DistributedError(f"{job.path} was not prepared within {wait_s:.0f} s; is rank 0 "
                                   "running (and writing to the same path)?")
        time.sleep(0.2)


def _check_same_run(where: Remote, have: dict, want: dict) -> None:
    from probe.store import MATCH_KEYS

    diffs = [k for k in MATCH_KEYS if have.get(k) != want.get(k)]
    if diffs:
        raise DistributedError(f"{where.url} was made by a different run ({', '.join(diffs)} "
                               "differ); give this job its own store URL")


def _work(lm, job, rank: Rank, progress: bool) -> None:
    import zarr

    from probe.cache import host_arrays, pending_specs
    from probe.capture import iter_blocks
    from probe.sites import Site
    from probe.store import zarr_target

    where = objectstore.where(job.path)
    group = zarr.open_group(zarr_target(where), mode="r+", use_consolidated=False)
    committed = dict(group.attrs.get("progress", {}))
    todo = pending_specs(job.specs, committed, job.n_rows)
    if not todo:
        return
    markers = read_markers(where)
    keys = [k for s in todo for k in _keys(s)]
    mine = [f for f in owned_blocks(job.n_rows, job.block_size, rank)
            if not _done(f, keys, committed, markers)]
    if not mine:
        return
    sites = [Site(s.name, layer) for s in todo for layer in (s.layers or [None])]
    for first, pooled in iter_blocks(lm, job.encoded, sites, job.config.poolings,
                                     batch_size=job.config.batch_size, block_size=job.block_size,
                                     padding_side=job.provenance["padding_side"],
                                     only=set(mine)):
        arrays = host_arrays(todo, pooled, job.config.store_dtype, first)
        stop = first + next(iter(arrays.values()))[1].shape[0]
        for name, (layers, values) in arrays.items():
            _write(group[name], first, stop, layers, values, committed, name)
        write_marker(where if isinstance(where, Remote) else job.path, first, stop, keys)


def _keys(spec) -> list[str]:
    from probe.store import progress_keys

    return progress_keys(spec)


def _done(first: int, keys, committed: dict, markers: dict) -> bool:
    if all(committed.get(k, 0) > first for k in keys):
        return True
    m = markers.get(first)
    return m is not None and set(keys) <= set(m["keys"])


def _write(array, first: int, stop: int, layers, values: np.ndarray, committed: dict,
           name: str) -> None:
    if layers is None:
        array[first:stop] = values
        return
    for j, layer in enumerate(layers):  # one chunk per layer: same bytes as a one-process run
        if committed.get(f"{name}/{layer}", 0) < stop:
            array[first:stop, layer] = values[:, j]


# -------------------------------------------------------------------------------- finalize
def finalize(path: str | Path, *, wait: bool = True) -> bool | None:
    """Fold done-markers into the store's progress; True when the store is complete.

    With ``wait=False`` returns None at once if workers still hold the store (local stores;
    on an object store finalize never waits and is safe to run at any time).
    """
    from probe.store import ActivationStore

    if objectstore.is_remote(path):
        return _finalize_remote(Remote.at(str(path)))
    path = objectstore.local_path(path) if objectstore.protocol(path) else Path(path)
    try:
        lock = _Lock(path, exclusive=True, wait=wait)
    except BlockingIOError:
        return None
    lock.close()  # ActivationStore takes the same exclusive lock itself
    try:
        store = ActivationStore.reopen(path)
    except BlockingIOError:  # pragma: no cover - a worker joined in between
        return None
    with store:
        markers = read_markers(path)
        new = fold_markers(store.progress(), markers)
        store.commit_progress(new)
        complete = store.finalize()
        for first, m in markers.items():
            if all(new.get(k, 0) >= m["stop"] for k in m["keys"]):
                (marker_dir(path) / f"{first}.json").unlink(missing_ok=True)
        folder = marker_dir(path)
        if complete and folder.is_dir() and not any(folder.glob("[0-9]*.json")):
            (folder / "zarr.json").unlink(missing_ok=True)
            folder.rmdir()
    return complete


def _finalize_remote(remote: Remote, rounds: int = 20) -> bool:
    """Lock-free finalize: fold the markers in until a re-read agrees with what was written."""
    import zarr

    from probe.store import StoreError, is_complete, zarr_target
    from probe.zarr_strings import quiet_zarr

    if not remote.exists("zarr.json"):
        raise StoreError(f"no activation store at {remote.url}")
    for _ in range(rounds):
        group = zarr.open_group(zarr_target(remote), mode="r+", use_consolidated=True)
        progress = dict(group.attrs.get("progress", {}))
        n = int(group.attrs["emoprobe"]["n_samples"])
        since = min(progress.values(), default=0)
        new = fold_markers(progress, read_markers(remote, since=since))
        complete = is_complete(new, n)
        if new == progress and group.attrs.get("complete") == complete:
            return complete
        with quiet_zarr():
            group.update_attributes({"progress": new, "complete": complete})
    return complete  # pragma: no cover - markers kept arriving; the next finalize folds them


# ---------------------------------------------------------------------------- the launcher
Loader = tuple[Callable, tuple] | tuple[Callable, tuple, dict]


def cache_with_workers(loader: Loader, dataset, *, config, out: str | Path, workers: int,
                       devices: Sequence[str] | None = None, start_method: str = "spawn",
                       wait_s: float = 600.0) -> Path:
    """Run ``workers`` processes on this machine, each loading the model with ``loader``.

    Args:
        loader: ``(function, args[, kwargs])`` that returns a loaded model in the worker,
            e.g. ``(load_model, ("llama-3-8b",), {"dtype": "bfloat16"})``; a worker given a
            device passes it as ``device=``.
        dataset, config, out: as for :func:`probe.cache.cache_activations`.
        workers: number of processes.
        devices: one device per worker (default: ``cuda:i`` round robin when GPUs are
            visible, else ``cpu``; CPU workers share the cores).
        start_method: ``"spawn"`` (safe with CUDA) or ``"fork"`` (fast; CPU only).
    """
    import multiprocessing as mp

    if workers < 1:
        raise DistributedError("--workers must be at least 1")
    if objectstore.protocol(out) == "memory":
        raise DistributedError(f"{out}: a memory:// store lives inside one process; worker "
                               "processes need a store they all see (a shared filesystem path, "
                               "or an object-store URL such as s3://bucket/x.zarr)")
    if devices is None:
        n_gpu = torch.cuda.device_count()
        devices = [f"cuda:{i % n_gpu}" if n_gpu else "cpu" for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context(start_method)
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, name=f"emoprobe-worker-{r}",
                         args=(loader, dataset, config, str(out), Rank(r, workers, devices[r]),
                               threads, wait_s, errors))
             for r in range(workers)]
    for p in procs:
        p.start()
    _join(procs)
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    where = objectstore.where(out)
    if where.exists("zarr.json") if isinstance(where, Remote) else (where / "zarr.json").is_file():
        finalize(out)
    if failed:
        told = [errors.get(timeout=1) for _ in range(errors.qsize())]
        by_msg: dict[str, list[int]] = {}
        for r, msg in told:
            by_msg.setdefault(msg, []).append(r)
        detail = "; ".join(f"worker {', '.join(map(str, sorted(rs)))}: {msg}"
                           for msg, rs in by_msg.items()) or str(failed)
        raise DistributedError(f"workers failed: {failed} ({detail}). Blocks they finished are "
                               "kept: fix the cause and rerun the same command to redo the rest")
    return Path(out)


def _join(procs) -> None:
    """Wait for every worker; when one fails, stop the others (their finished blocks stay)."""
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(timeout=0.2)
        if any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join()
            return


def _worker_main(loader, dataset, config, out, rank: Rank, threads: int, wait_s: float,
                 errors=None) -> None:
    fn, args, *rest = loader
    kwargs = dict(rest[0]) if rest else {}
    if rank.device is not None and rank.device != "cpu":
        kwargs["device"] = rank.device
    if rank.device in (None, "cpu"):
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # N interleaved loading bars say nothing
    try:
        lm = fn(*args, **kwargs)
        run_worker(lm, dataset, config=config, out=out, rank=rank, wait_s=wait_s)
    except Exception as exc:  # noqa: BLE001 - reported to the launcher, then the worker fails
        if errors is not None:
            errors.put((rank.rank, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
