"""Emotion directions read from an activation store, as values that save like steering vectors.

Core reading, so every plugin can use it: ``steering`` turns them into steering vectors,
``circuits`` projects on them. The methods are in :mod:`probe.direction_methods`.

>>> dirs = store_directions("cache/smollm2-135m/emotion-scenarios-....zarr",
...                         method="context-agnostic", layers=[24])  # doctest: +SKIP
>>> dirs["happiness"].directions  # {Site: unit float32 tensor}  # doctest: +SKIP
>>> dirs.save("runs/x/directions")  # happiness.safetensors + happiness.json, ...  # doctest: +SKIP

Every direction points so that +1 means "more of the emotion", is L2-normalised per site
(``normalize=False`` keeps raw norms; they are in ``meta["norms"]`` either way), and carries the
site's typical RMS over the rows it was computed from (``meta["rms"]``). Files: ``NAME.safetensors``
(tensors named by site, the metadata in its header, a SHA-256 of the tensors) and ``NAME.json``
(the same metadata), the format :class:`steering.vector.SteeringVector` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from probe.artifacts import save_safetensors
from probe.direction_methods import STORE_METHODS, DirectionError, Rows, compute, site_kind
from probe.io import atomic_write
from probe.sites import Site

__all__ = ["FORMAT", "PROVENANCE_KEYS", "Direction", "DirectionSet", "checksum", "file_base",
           "file_stem", "load_rows", "site_tensors", "store_directions",
           "unit_directions", "write_direction"]

#: Version of the file format :func:`write_direction` writes.
FORMAT = 1
#: Store provenance a direction keeps (which model, weights and data it was read from).
PROVENANCE_KEYS = ("model", "model_id", "weight_fingerprint", "architecture", "n_layers",
                   "d_model", "dtype", "chat_template", "system_prompt", "dataset", "dataset_hash")


def load_rows(store, *, site: str = "resid_post", layers: Iterable[int] | None = None,
              pooling: str = "last", target: str | None = None,
              context: Sequence[str] | None = None) -> Rows:
    """Read pooled rows from a store (a path or an opened ``xarray.Dataset``).

    Args:
        store: Store path, or the dataset :func:`probe.store.open_store` returned.
        site: Site kind (``resid_post``, ``attn_out``, ...).
        layers: Layers to read (default: every layer the store holds completely).
        pooling: One of the store's poolings.
        target: Label coordinate (default: the dataset's default target).
        context: Coordinates that define a context for context-agnostic directions and PCA
            pairs (default: ``group``, plus ``valence`` when it varies within an emotion).
    """
    from probe.store import StoreError, open_store

    path = None if not isinstance(store, (str, Path)) else Path(store)
    try:
        ds = open_store(path) if path is not None else store
    except StoreError as exc:
        raise DirectionError(str(exc)) from None
    prov = dict(ds.attrs.get("emoprobe", {}))
    kind = site_kind(site)
    if kind not in ds.data_vars:
        raise DirectionError(f"the store has no {kind} (it holds {', '.join(ds.data_vars)}); "
                            f"cache it with probe cache --sites 'blocks.*.{kind}'")
    poolings = list(prov.get("poolings", ds["pooling"].values.tolist()))
    if pooling not in poolings:
        raise DirectionError(f"pooling {pooling!r} is not in the store; it has {poolings}")
    target = target or prov.get("default_target")
    if target is None or target not in ds.coords:
        labels = [c for c in prov.get("targets", {})]
        raise DirectionError(f"target {target!r} is not a label of this store; it has {labels}")
    layers = _store_layers(ds, kind, layers, prov)
    var = ds[kind].sel(pooling=pooling)
    if "layer" in var.dims:
        var = var.sel(layer=layers).transpose("sample", "layer", ...)
    X = np.asarray(var.values, dtype=np.float32)
    X = X.reshape(X.shape[0], len(layers) if "layer" in var.dims else 1, -1)
    if not np.isfinite(X).all():
        raise DirectionError(f"{kind} has NaN/inf values at layers {layers} (an unfinished store?)")
    labels = np.asarray(ds[target].values).astype(str)
    ctx = _contexts(ds, labels, context)
    meta = {k: prov[k] for k in PROVENANCE_KEYS if k in prov}
    meta["store"] = str(path) if path is not None else prov.get("store")
    return Rows(X, labels, ctx, layers if "layer" in var.dims else [None], kind, pooling, target, meta)


def _store_layers(ds, kind: str, layers, prov: dict) -> list[int]:
    if "layer" not in ds[kind].dims:
        return [None]
    n = int(prov.get("n_samples", ds.sizes["sample"]))
    progress = ds.attrs.get("progress", {})
    have = sorted(int(k.split("/")[1]) for k, v in progress.items()
                  if k.startswith(kind + "/") and v == n)
    if layers is None:
        if not have:
            raise DirectionError(f"no layer of {kind} is fully cached in this store")
        return have
    layers = [int(x) for x in layers]
    if not layers:
        raise DirectionError("layers is empty; give e.g. range(10, 20)")
    missing = [x for x in layers if x not in have]
    if missing:
        raise DirectionError(f"layers {missing} of {kind} are not cached in this store (cached: "
                            f"{have[0] if have else '-'}..{have[-1] if have else '-'}, "
                            f"{len(have)} layers); rerun probe cache with those layers")
    return layers


def _contexts(ds, labels: np.ndarray, context: Sequence[str] | None) -> np.ndarray:
    if context is None:
        # valence is part of the context when it belongs to the stimulus, not to the emotion:
        # SEV replies give each (scenario, event valence) in all six emotions; in
        # emotion-scenarios each emotion's event has one valence per scenario
        context = ["group"]
        if "valence" in ds.coords:
            val = np.asarray(ds["valence"].values).astype(str)
            grp = np.asarray(ds["group"].values).astype(str)
            cells = {}
            for g, e, v in zip(grp, labels, val):
                cells.setdefault((g, e), set()).add(v)
            if any(len(v) > 1 for v in cells.values()):
                context.append("valence")
    missing = [c for c in context if c not in ds.coords]
    if missing:
        raise DirectionError(f"context coordinates {missing} are not in the store; it has "
                            f"{sorted(ds.coords)}")
    parts = [np.asarray(ds[c].values).astype(str) for c in context]
    return np.array(["|".join(p) for p in zip(*parts)]) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------------ values
@dataclass(frozen=True, eq=False)
class Direction:
    """One direction per site, plus provenance (``meta``: model, weights, method, rms, ...).

    Attributes:
        directions: ``{Site: Tensor}``, one 1-D float32 CPU vector per site, in site order.
        meta: Provenance (see :mod:`steering.vector` for the keys).
    """

    directions: dict[Site, Tensor]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", site_tensors(self.directions))
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def sites(self) -> list[Site]:
        return list(self.directions)

    @property
    def layers(self) -> list[int]:
        """Layers the direction has (``hook_embed`` has none)."""
        return sorted({s.layer for s in self.directions if s.layer is not None})

    def checksum(self) -> str:
        """SHA-256 over site names and float32 bytes, in site order."""
        return checksum(self.directions)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.safetensors`` and ``path.json`` (atomically); returns the tensor file."""
        return write_direction(path, self.directions, self.meta)


class DirectionSet(dict):
    """``{emotion: Direction}``; :meth:`save` writes one file pair per emotion."""

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """One ``<emotion>.safetensors`` + ``.json`` per direction in ``folder``."""
        return [d.save(Path(folder) / file_stem(name)) for name, d in self.items()]


def site_tensors(directions: Mapping) -> dict[Site, Tensor]:
    """``{Site: 1-D finite float32 CPU tensor}`` in site order, from sites or site names."""
    if not directions:
        raise DirectionError("a steering vector needs at least one site")
    clean: dict[Site, Tensor] = {}
    for site, vec in directions.items():
        site = Site.parse(site) if isinstance(site, str) else site
        if not isinstance(site, Site):
            raise DirectionError(f"keys must be Sites or site names, got {site!r}")
        vec = torch.as_tensor(vec).detach().to("cpu", torch.float32).contiguous()
        if vec.dim() != 1 or vec.numel() == 0:
            raise DirectionError(f"the vector at {site} must be 1-D, got shape {tuple(vec.shape)}")
        if not torch.isfinite(vec).all():
            raise DirectionError(f"the vector at {site} has NaN or inf entries")
        clean[site] = vec
    return dict(sorted(clean.items()))


# ------------------------------------------------------------------------------ files
def checksum(directions: Mapping[Site, Tensor]) -> str:
    """SHA-256 over site names and float32 bytes, in the mapping's order."""
    h = hashlib.sha256()
    for site, vec in directions.items():
        h.update(str(site).encode() + b"\0")
        h.update(vec.numpy().astype("<f4").tobytes())
    return h.hexdigest()


def write_direction(path: str | os.PathLike, directions: Mapping[Site, Tensor], meta: Mapping
                    ) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (atomically); returns the tensor file."""
    base = file_base(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    header = {**meta, "format": FORMAT, "sites": [str(s) for s in directions],
              "sha256": checksum(directions)}
    text = json.dumps(header, indent=1, sort_keys=True, allow_nan=False, default=_plain)
    tensors = {str(s): v for s, v in directions.items()}
    st = base.with_name(base.name + ".safetensors")
    side = base.with_name(base.name + ".json")
    save_safetensors(tensors, st, metadata={"emoprobe": text})
    atomic_write(side, text + "\n")
    return st


def file_base(path: str | os.PathLike) -> Path:
    """``NAME`` of ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p


def file_stem(name: str) -> str:
    """``name`` as a file name: letters, digits, ``-_.``; anything else ``_``."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep or "vector"


def _plain(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, range):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


# ------------------------------------------------------------------------------ making them
def unit_directions(raw: Mapping[str, np.ndarray], rows: Rows, method: str, *,
                    normalize: bool = True, extra: dict | None = None,
                    rms: np.ndarray | None = None) -> DirectionSet:
    """Wrap ``{emotion: [layers, d]}`` as directions with provenance and typical RMS
    (``rms`` per layer; default: the RMS of ``rows``)."""
    import probe

    sites = [Site(rows.kind, layer) if layer is not None else Site(rows.kind) for layer in rows.layers]
    if rms is None:
        rms = np.sqrt((rows.X.astype(np.float64) ** 2).mean(axis=(0, 2)))
    out = DirectionSet()
    for e, arr in raw.items():
        norms = np.linalg.norm(arr, axis=-1)
        if normalize and (norms == 0).any():
            raise DirectionError(f"the {e} direction is zero at {sites[int(np.argmin(norms))]}")
        vecs = arr / norms[:, None] if normalize else arr
        meta = {**rows.meta, "method": method, "emotion": e, "site": rows.kind,
                "pooling": rows.pooling, "target": rows.target,
                "layers": [x for x in rows.layers if x is not None], "normalized": normalize,
                "rms": {str(s): float(r) for s, r in zip(sites, rms)},
                "norms": {str(s): float(n) for s, n in zip(sites, norms)},
                "n_rows": int(len(rows.labels)), "n_rows_emotion": int((rows.labels == e).sum()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "toolkit_version": probe.__version__, **(extra or {})}
        out[e] = Direction({s: torch.from_numpy(v.astype(np.float32)) for s, v in zip(sites, vecs)}, meta)
    return out


def store_directions(store, *, method: str, site: str = "resid_post",
                     layers: Iterable[int] | None = None, pooling: str = "last",
                     target: str | None = None, neutral: str | None = "neutral",
                     emotions: Sequence[str] | None = None, context: Sequence[str] | None = None,
                     rows=None, normalize: bool = True) -> DirectionSet:
    """One direction per emotion from a store (a path or an opened store).

    Args:
        store: Store path, or the dataset :func:`probe.store.open_store` returned.
        method: One of :data:`probe.direction_methods.STORE_METHODS`.
        site, layers, pooling, target, context: What to read (see :func:`load_rows`).
        neutral: Label of neutral rows (excluded from the emotions; the reference for
            ``mean-diff-neutral`` and PCA pairs); None if there is none.
        emotions: Which emotions (default: every label but ``neutral``).
        rows: Boolean mask or indices of the store's rows to use (e.g. a training split).
        normalize: L2-normalise each site's vector (raw norms stay in ``meta["norms"]``).

    Returns:
        ``{emotion: Direction}`` (a :class:`DirectionSet`).
    """
    if method not in STORE_METHODS:
        raise DirectionError(f"unknown method {method!r}; store methods are "
                             f"{', '.join(STORE_METHODS)}")
    data = load_rows(store, site=site, layers=layers, pooling=pooling, target=target,
                     context=context)
    if rows is not None:
        data = data.select(rows)
    raw = compute(data, method, emotions=emotions, neutral=neutral)
    return unit_directions(raw, data, method, normalize=normalize)
