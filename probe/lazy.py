"""Out-of-core reading: probe sweeps over stores larger than RAM, with Dask over the Zarr chunks.

A store is chunked one block of samples x one layer x one pooling. :func:`open_lazy` opens it
as Dask arrays with exactly those chunks, and :func:`read_sites` assembles one probe job's
``[sites, n, features]`` float32 matrix chunk by chunk, straight into its output (no float16
copy of the whole selection, no concatenation). :func:`sites_per_read` sizes the jobs so that
what is read *and* what the probe engine holds for it stay under a memory budget, so the store
as a whole can be far larger than RAM; only one site's problem (``n x features`` plus the
solver's working set) has to fit.

``probe sweep --memory 8GiB`` (or ``probe_store(..., memory=...)``) uses this path.

>>> ds = open_lazy("cache/big.zarr")  # doctest: +SKIP
>>> rows = np.arange(ds.sizes["sample"])  # doctest: +SKIP
>>> X = read_sites(ds["hook_resid_post"], "last", [10, 11], rows)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import xarray as xr

from probe.engine import memory_estimate
from probe.errors import EmoprobeError


class MemoryBudgetError(EmoprobeError, ValueError):
    """The memory budget cannot hold even one probe problem."""


def require_dask():
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is an optional extra
        raise MemoryBudgetError("out-of-core sweeps need Dask: pip install 'emoprobe[scale]' "
                                "(or pip install 'dask[array]')") from None
    return da


def parse_memory(text: str | int | None) -> int | None:
    """``"8GiB"``, ``"500MB"``, ``"2g"`` or bytes -> bytes.

    >>> parse_memory("1.5GiB"), parse_memory("500MB"), parse_memory(1024)
    (1610612736, 500000000, 1024)
    """
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise MemoryBudgetError(f"--memory takes a size such as 8GiB or 500MB, not {text!r}")
    value, unit, binary = float(m.group(1)), m.group(2), m.group(3)
    scale = (1024 if binary or not unit else 1000) ** " kmgt".index(unit or " ")
    return int(value * scale)


def is_chunked(var: xr.DataArray) -> bool:
    """Whether ``var`` is Dask-backed, asked without touching its data.

    ``var.data`` of a lazily opened variable reads the whole variable into memory (and xarray
    keeps it cached there), so it must never be how this is asked.
    """
    return var.chunks is not None


def open_lazy(store) -> xr.Dataset:
    """A store (path or opened dataset) with its data variables as Dask arrays over its chunks.

    Nothing is read: each variable is chunked as stored, without loading it first.
    """
    from probe.store import open_store

    require_dask()
    ds = store if isinstance(store, xr.Dataset) else open_store(store, require_complete=False)
    out = {}
    for name, var in ds.data_vars.items():
        if is_chunked(var):
            continue
        chunks = var.encoding.get("chunks") or var.encoding.get("preferred_chunks")
        if isinstance(chunks, dict):
            chunks = tuple(chunks[d] for d in var.dims)
        out[name] = var.chunk() if chunks is None else var.chunk(dict(zip(var.dims, chunks)))
    return ds.assign(out) if out else ds


def read_sites(var: xr.DataArray, pooling: str, layers: Sequence[int] | None,
               rows: np.ndarray, *, scheduler: str = "threads") -> np.ndarray:
    """``[sites, len(rows), features]`` float32 of one pooling and some layers, chunk by chunk.

    Args:
        var: a store variable (Dask-backed, e.g. from :func:`open_lazy`).
        pooling: which pooling.
        layers: which layers (None for a variable without a layer dim, e.g. ``hook_embed``).
        rows: sample positions to keep, in order.
        scheduler: Dask scheduler (``"threads"``, or ``"synchronous"`` for the least memory).
    """
    da = require_dask()
    sel = var.sel(pooling=pooling)
    if layers is not None:
        sel = sel.sel(layer=list(layers))
    data = sel.data if is_chunked(sel) else da.from_array(np.asarray(sel.values))
    if layers is None:
        data = data[:, None]
    data = data.reshape(data.shape[0], data.shape[1], -1)
    rows = np.asarray(rows)
    if len(rows) != data.shape[0] or (rows != np.arange(len(rows))).any():
        data = data[rows]
    data = data.astype(np.float32).transpose(1, 0, 2)
    out = np.empty(data.shape, dtype=np.float32)
    da.store(data, out, lock=False, scheduler=scheduler)
    return out


def site_bytes(n: int, width: int, task: str, n_classes: int, n_folds: int) -> int:
    """Peak bytes one site costs: its float32 matrix plus the probe engine's working set."""
    read = 4 * n * width
    if task == "classification":
        return read + memory_estimate(1, n, width, n_folds, max(n_classes, 2))
    return read + 8 * (n * width + 2 * width * width)  # ridge: float64 copy and Gram


def sites_per_read(memory: int, *, n: int, width: int, task: str, n_classes: int,
                   n_folds: int) -> int:
    """How many sites one job may hold within ``memory`` bytes (at least one, or an error)."""
    per = site_bytes(n, width, task, n_classes, n_folds)
    if per > memory:
        raise MemoryBudgetError(
            f"one probe problem ({n} samples x {width} features) needs about {per / 2**20:.0f} "
            f"MiB, more than the memory budget of {memory / 2**20:.0f} MiB; raise --memory, or "
            "probe fewer samples (--limit)")
    return max(1, memory // per)
