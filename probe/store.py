"""Resumable Zarr v3 activation stores that open as labelled ``xarray.Dataset``s.

Layout of a store (a Zarr v3 group on disk):

* one array per site kind, e.g. ``hook_resid_post`` with dims
  ``(sample, layer, pooling, d_model)``; ``attn.hook_z`` has ``(..., head, d_head)``,
  ``mlp.hook_post`` ``(..., d_mlp)``, ``hook_embed`` has no ``layer`` dim;
* coordinates: ``sample`` (the dataset's ids), ``text``, ``text_hash``, ``split``, ``group``, one per target
  column (multi-label targets as ``|``-joined names), ``layer``, ``pooling``;
* chunks of ``block_size`` samples x one layer x one pooling, so one layer reads fast;
* root attributes ``emoprobe`` (provenance), ``progress`` (rows per array and layer), ``complete``;
* consolidated metadata in the root ``zarr.json`` (``xarray.open_zarr`` opens it without warning).

Rows are written a block at a time, in order; after every array of a block is on disk,
``progress`` and ``complete`` are rewritten together in one write of the root ``zarr.json``,
which Zarr (>= 3.1.3) replaces atomically. A run killed at any moment therefore leaves a store
whose committed prefix is exact; resuming recomputes the rest and the result is identical to an
uninterrupted run. Completeness is *derived* from ``progress`` (every tracked array and layer
committed to the last row); the ``complete`` attribute mirrors it for other readers, and a
rerun repairs it if an older writer left it behind.

>>> ds = open_store("cache/smollm2-135m/emotion-scenarios-1a2b3c4d.zarr")  # doctest: +SKIP
>>> ds["hook_resid_post"].sel(layer=19, pooling="last")  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from probe import bf16, objectstore
from probe.data.schema import EmotionDataset
from probe.errors import EmoprobeError
from probe.paths import cache_root
from probe.objectstore import Remote
from probe.store_create import creating_sibling, half_created, leftover_siblings, write_new_store
from probe.zarr_strings import quiet_zarr

#: Provenance keys that must match for a run to write into an existing store.
MATCH_KEYS = (
    "model_id", "weight_fingerprint", "dtype", "dataset_hash", "n_samples", "chat_template",
    "system_prompt", "poolings", "store_dtype", "block_size", "max_length", "batch_size",
    "padding_side", "truncate",
)
#: Keys added to MATCH_KEYS later: they enter a store's path key only when set, so stores made
#: before them keep their default path.
LATER_KEYS = ("truncate",)
STORE_DTYPES = ("float16", "float32", "bfloat16")
#: The folder inside a store where :mod:`probe.distributed` workers mark finished blocks.
MARKERS = ".emoprobe-blocks"


class StoreError(EmoprobeError, RuntimeError):
    """A store is missing, incomplete, locked, or does not match the run."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock (a writer, or :mod:`probe.distributed` workers)."""


@dataclass(frozen=True)
class VariableSpec:
    """An array to hold one site kind: its layers and trailing (feature) dims."""

    name: str
    layers: tuple[int, ...] | None
    feature_dims: tuple[str, ...]
    feature_shape: tuple[int, ...]

    def dims(self) -> list[str]:
        lead = ["sample"] + (["layer"] if self.layers is not None else []) + ["pooling"]
        return lead + list(self.feature_dims)


class ActivationStore:
    """Writer side of a store. Use :func:`open_store` to read one."""

    def __init__(self, path: Path | str, group: zarr.Group, lock_fh, *,
                 remote: Remote | None = None) -> None:
        self.path = path  # a local Path, or the URL of an object store
        self.group = group
        self._lock_fh = lock_fh
        self._where: Path | Remote = remote if remote is not None else Path(path)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open_for_writing(
        cls, path: str | Path, *, provenance: Mapping, dataset: EmotionDataset,
        coords: Mapping[str, np.ndarray] | None = None,
    ) -> ActivationStore:
        """Create the store, or reopen it for resuming if its provenance matches.

        ``coords``: per-sample coordinates besides the dataset's (e.g. a multimodal row's
        modality layout), written when the store is created. ``path`` may be an fsspec URL
        (:mod:`probe.objectstore`): no lock there, progress is written after the chunks.
        """
        if objectstore.is_remote(path):
            return cls._open_remote(objectstore.Remote.at(str(path)), provenance, dataset,
                                    coords or {})
        path = _local(path)
        path.mkdir(parents=True, exist_ok=True)
        lock_fh = _lock(path)
        try:
            _clear_leftovers(path)
            if (path / "zarr.json").is_file():
                group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
                _check_provenance(path, dict(group.attrs.get("emoprobe", {})), provenance)
                _drop_partial_files(path)
            else:
                lock_fh = _create_local(path, lock_fh, provenance, dataset, coords or {})
            group = _consolidated(path)
        except BaseException:
            lock_fh.close()
            raise
        return cls(path, group, lock_fh)

    @classmethod
    def _open_remote(cls, remote: Remote, provenance: Mapping, dataset: EmotionDataset,
                     coords: Mapping[str, np.ndarray]) -> ActivationStore:
        """Create or reopen a store on an object store (single writer: nothing locks it)."""
        if remote.exists("zarr.json") and _half_created(remote):
            remote.fs.rm(remote.root, recursive=True)  # a creation killed before provenance
        if remote.exists("zarr.json"):
            group = zarr.open_group(remote.zarr_store(), mode="r+", use_consolidated=False)
            _check_provenance(remote.url, dict(group.attrs.get("emoprobe", {})), provenance)
        else:
            remote.check_writable_location()
            _refuse_foreign(remote, remote.listdir())
            nonce = uuid.uuid4().hex
            write_new_store(remote.zarr_store(), provenance, dataset, coords, nonce=nonce)
            have = remote.read_json("zarr.json")["attributes"]["emoprobe"].get("created_by")
            if have != nonce:
                raise StoreError(f"another run created {remote.url} at the same moment; object "
                                 "stores have no lock: give each run its own store URL")
        return cls(remote.url, _consolidated(remote), None, remote=remote)

    @classmethod
    def reopen(cls, path: str | Path) -> ActivationStore:
        """An existing local store for committing progress (under the same exclusive lock)."""
        path = _local(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"no activation store at {path}")
        lock_fh = _lock(path)
        try:
            group = _consolidated(path)
        except BaseException:
            lock_fh.close()
            raise
        return cls(path, group, lock_fh)

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ arrays
    @property
    def provenance(self) -> dict:
        return dict(self.group.attrs["emoprobe"])

    @property
    def n_samples(self) -> int:
        return int(self.provenance["n_samples"])

    @property
    def block_size(self) -> int:
        return int(self.provenance["block_size"])

    def progress(self) -> dict[str, int]:
        return dict(self.group.attrs.get("progress", {}))

    def ensure_variable(self, spec: VariableSpec) -> None:
        """Create the array for ``spec`` (spanning every layer) and track its requested layers.

        Layers are chunked separately and tracked separately, so a later run can add layers
        (or site kinds) to a store; layers never cached read as NaN.
        """
        prov = self.provenance
        if spec.name not in self.group:
            n_pool = len(prov["poolings"])
            layered = spec.layers is not None
            shape = [self.n_samples] + ([prov["n_layers"]] if layered else []) + [n_pool]
            chunks = [self.block_size] + ([1] if layered else []) + [1]
            bits = prov["store_dtype"] == "bfloat16"  # uint16 bit patterns (probe.bf16)
            coords = prov["sample_coords"] + prov.get("pooling_coords", [])
            attrs = {"coordinates": " ".join(coords)}
            self.group.create_array(
                spec.name,
                shape=tuple(shape + list(spec.feature_shape)),
                chunks=tuple(chunks + list(spec.feature_shape)),
                dtype="uint16" if bits else prov["store_dtype"],
                fill_value=bf16.NAN_BITS if bits else np.nan,
                compressors=[BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")],
                dimension_names=spec.dims(),
                attributes={**attrs, bf16.ATTR: bf16.VALUE} if bits else attrs,
            )
            self.group = _consolidate(self._where)
        progress = self.progress()
        new = {k: 0 for k in progress_keys(spec) if k not in progress}
        if new:
            self._commit({**progress, **new})

    def write_block(self, start: int, arrays: Mapping[str, tuple[tuple[int, ...] | None, np.ndarray]]) -> None:
        """Write rows ``start:start+len`` of each ``name: (layers, values)``, then commit them.

        ``values`` has the layer axis (if any) second, holding exactly ``layers`` in order.
        """
        progress = self.progress()
        for name, (layers, values) in arrays.items():
            stop = start + values.shape[0]
            keys = progress_keys(VariableSpec(name, layers, (), ()))
            for key in keys:
                if progress.get(key, 0) < start:
                    raise StoreError(f"{key}: block at row {start} would leave a gap after "
                                     f"row {progress.get(key, 0)}")
            if layers is None:
                if progress.get(name, 0) < stop:
                    self.group[name][start:stop] = values
            else:
                todo = [j for j, key in enumerate(keys) if progress.get(key, 0) < stop]
                for j0, j1 in _runs(todo, layers):
                    self.group[name][start:stop, layers[j0]:layers[j1 - 1] + 1] = values[:, j0:j1]
            for key in keys:
                progress[key] = max(progress.get(key, 0), stop)
        self._commit(progress)

    def commit_progress(self, progress: Mapping[str, int]) -> None:
        """Record rows committed per array/layer, and completeness, in one metadata write."""
        self._commit(progress)

    def finalize(self) -> bool:
        """Make the ``complete`` attribute agree with ``progress``; return completeness.

        Repairs a store whose writer died between writing ``progress`` and ``complete`` (or
        one written by an older version that wrote them separately).
        """
        progress = self.progress()
        if self.group.attrs.get("complete") != is_complete(progress, self.n_samples):
            self._commit(progress)
        return is_complete(progress, self.n_samples)

    def _commit(self, progress: Mapping[str, int]) -> None:
        """Record committed rows and completeness in a single (atomic) metadata write."""
        with quiet_zarr():
            self.group.update_attributes({"progress": dict(progress),
                                          "complete": is_complete(progress, self.n_samples)})


def root_attributes(path: str | Path) -> dict | None:
    """A store's root attributes as its ``zarr.json`` holds them (nothing derived), read
    without any lock; None where there is no store."""
    where = objectstore.where(path)
    try:
        root = (where.read_json("zarr.json") if isinstance(where, Remote)
                else json.loads((where / "zarr.json").read_text()))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return dict(root.get("attributes") or {})


def is_complete(progress: Mapping[str, int], n_samples: int) -> bool:
    """True when every tracked array (and layer) is committed up to the last row."""
    return bool(progress) and all(v == n_samples for v in progress.values())


def progress_keys(spec: VariableSpec) -> list[str]:
    """Progress is tracked per array and layer: ``hook_embed``, ``hook_resid_post/19``."""
    if spec.layers is None:
        return [spec.name]
    return [f"{spec.name}/{layer}" for layer in spec.layers]


def _runs(todo: list[int], layers: Sequence[int]) -> list[tuple[int, int]]:
    """Split positions ``todo`` into runs ``[j0, j1)`` whose layers are consecutive."""
    runs: list[tuple[int, int]] = []
    for j in todo:
        if runs and runs[-1][1] == j and layers[j] == layers[j - 1] + 1:
            runs[-1] = (runs[-1][0], j + 1)
        else:
            runs.append((j, j + 1))
    return runs


# ---------------------------------------------------------------------- helpers
class _DirLock:
    """An exclusive advisory lock on the store directory itself (released on close or death)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise StoreLockedError(
                f"another process is writing {path}, and this run has sites or layers to add to "
                "it; wait for that process to finish (a run that only reads cached layers needs no "
                "wait), or use another store path (--out for probe cache, --store for probe sweep)")

    def close(self) -> None:
        os.close(self.fd)


def _lock(path: Path) -> _DirLock:
    return _DirLock(path)


def _local(path: str | Path) -> Path:
    """A local store path as given (a ``file://`` URL stripped of its scheme)."""
    return objectstore.local_path(path) if objectstore.protocol(path) else Path(path)


def zarr_target(where: Path | Remote, *, read_only: bool = False):
    """What zarr / xarray open for a store: its directory, or an ``FsspecStore`` for a URL."""
    return where.zarr_store(read_only=read_only) if isinstance(where, Remote) else str(where)


def _consolidated(where: Path | Remote) -> zarr.Group:
    """The group, opened on consolidated metadata that lists every array (rewritten if not)."""
    if isinstance(where, Remote):  # no lock: skip the workers' marker folder, so that a rerun
        root = where.read_json("zarr.json")
        where.fs.invalidate_cache(where.root)
        on_disk = {p.rstrip("/").split("/")[-2] for p in where.fs.glob(where.key("*/zarr.json"))}
        on_disk.discard(MARKERS)
        listed = set((root.get("consolidated_metadata") or {}).get("metadata", {})) - {MARKERS}
    else:
        root = json.loads((where / "zarr.json").read_text())
        on_disk = {p.parent.name for p in where.glob("*/zarr.json")}
        listed = set((root.get("consolidated_metadata") or {}).get("metadata", {}))
    if listed and listed == on_disk:
        return zarr.open_group(zarr_target(where), mode="r+", use_consolidated=True)
    return _consolidate(where)


def _consolidate(where: Path | Remote) -> zarr.Group:
    """Write consolidated metadata (for ``xarray.open_zarr(path)``); return the group."""
    with warnings.catch_warnings(), quiet_zarr():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        return zarr.consolidate_metadata(zarr_target(where))


def _create_local(path: Path, lock: _DirLock, provenance: Mapping, dataset: EmotionDataset,
                  coords: Mapping[str, np.ndarray]) -> _DirLock:
    """Build the store in a locked hidden sibling and rename it onto the (empty, locked)
    ``path``: the store appears with its provenance or not at all. Returns the lock now
    held on the store (the sibling's: a lock follows the folder through the rename)."""
    _refuse_foreign(path, list(path.iterdir()))
    tmp = creating_sibling(path)
    tmp.mkdir()
    tmp_lock = _lock(tmp)
    try:
        write_new_store(str(tmp), provenance, dataset, coords)
        os.replace(tmp, path)  # replaces the empty folder
    except BaseException:
        tmp_lock.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    lock.close()
    return tmp_lock


def _refuse_foreign(where, entries: list) -> None:
    if entries:
        raise StoreError(f"{where} exists and is not an activation store; choose another store "
                         "path (--out for probe cache, --store for probe sweep)")


def _clear_leftovers(path: Path) -> None:
    """Remove what killed creations left (called under the store's lock): hidden siblings no
    live process holds, and a store created in place by an older version without provenance."""
    for tmp in leftover_siblings(path):
        try:
            held = _lock(tmp)
        except (StoreError, FileNotFoundError):
            continue  # another run is creating it right now
        held.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if (path / "zarr.json").is_file() and _half_created(path):
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _half_created(where: Path | Remote) -> bool:
    """A store whose creation was killed before its provenance was written."""
    try:
        group = zarr.open_group(zarr_target(where), mode="r", use_consolidated=False)
        children = {name: arr.shape for name, arr in group.arrays()}
    except Exception:  # noqa: BLE001 - unreadable metadata is not ours to delete
        return False
    return half_created(dict(group.attrs), children)


def _drop_partial_files(path: Path) -> None:
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)


def _check_provenance(path: Path | str, have: Mapping, want: Mapping) -> None:
    diffs = [f"  {k}: store has {have.get(k)!r}, this run has {want.get(k)!r}"
             for k in MATCH_KEYS if have.get(k) != want.get(k)]
    if diffs:
        raise StoreError(
            f"refusing to write into {path}: it was made by a different run.\n" + "\n".join(diffs)
            + "\nUse another store path (--out for probe cache, --store for probe sweep), or delete "
            "this store to rebuild it."
        )


# ---------------------------------------------------------------------- reading
def open_store(path: str | Path, *, require_complete: bool = True,
               storage_options: Mapping | None = None) -> xr.Dataset:
    """Open a store lazily as an ``xarray.Dataset`` (provenance in ``ds.attrs``).

    Args:
        path: the store directory, or an fsspec URL (``s3://bucket/x.zarr``, ``memory://x``).
        require_complete: refuse a store whose caching has not finished (default). With
            ``False`` an unfinished store opens with its uncommitted rows as NaN.
        storage_options: fsspec options for a URL (default: ``$EMOPROBE_STORAGE_OPTIONS``).
    """
    if objectstore.is_remote(path):
        where: Path | Remote = objectstore.Remote.at(str(path), storage_options)
        found = where.exists("zarr.json")
    else:
        where = path = _local(path)
        found = (where / "zarr.json").is_file()
    if not found:
        creating = "" if isinstance(where, Remote) or not leftover_siblings(where) else (
            "; a run creating it was interrupted or is still creating it")
        raise StoreError(f"no activation store at {path}{creating} (run `probe cache` to make "
                         "one)")
    ds = bf16.decode(xr.open_zarr(zarr_target(where, read_only=True), consolidated=False,
                                  chunks=None))
    if isinstance(where, Remote):
        ds.encoding["source"] = where.url
    # numpy's variable-width StringDType refuses .astype(str); plain Python strings do not.
    ds = ds.assign_coords({name: (c.dims, c.values.astype(object))
                           for name, c in ds.coords.items() if c.dtype.kind == "T"})
    attrs = ds.attrs
    attrs["complete"] = is_complete(attrs.get("progress", {}),
                                    attrs.get("emoprobe", {}).get("n_samples"))
    if require_complete and not attrs["complete"]:
        n = attrs.get("emoprobe", {}).get("n_samples")
        unfinished = sorted({k.split("/")[0] for k, v in attrs.get("progress", {}).items() if v != n})
        raise StoreError(
            f"store {path} is incomplete: {', '.join(unfinished) or 'nothing'} not fully cached. "
            "Rerun the `probe cache` (or `probe sweep`) command that made it to resume; "
            "`probe info` shows what is cached (Python: open_store(..., require_complete=False))"
        )
    return ds


def cached_layers(ds: xr.Dataset, name: str) -> list[int]:
    """Layers of array ``name`` whose every row is committed."""
    n = ds.attrs["emoprobe"]["n_samples"]
    prog = ds.attrs.get("progress", {})
    return sorted(int(k.split("/")[1]) for k, v in prog.items()
                  if k.startswith(name + "/") and v == n)


def variable_specs(lm, sites: Sequence) -> list[VariableSpec]:
    """One :class:`VariableSpec` per site kind among ``sites`` (a list of :class:`Site`)."""
    kinds: dict[str, list[int]] = {}
    for s in sites:
        kinds.setdefault(s.kind, [])
        if s.layer is not None:
            kinds[s.kind].append(s.layer)
    out = []
    d_model = lm.arch.d_model(lm.model)
    for kind, layers in kinds.items():
        if kind == "attn.hook_z":
            dims, shape = ("head", "d_head"), lm.arch.head_shape(lm.model)
        elif kind == "mlp.hook_post":
            dims, shape = ("d_mlp",), (lm.arch.d_mlp(lm.model),)
        else:
            dims, shape = ("d_model",), (d_model,)
        out.append(VariableSpec(kind, None if kind == "hook_embed" else tuple(sorted(layers)),
                                dims, tuple(shape)))
    return out


def _env_cache_root() -> Path:
    """Where stores go by default: see :func:`probe.paths.cache_root`."""
    return cache_root()
