"""Creating a store atomically: it either has its provenance or does not exist.

A local store is built in a hidden sibling folder (``.NAME.creating-<hex>``) that its creator
holds locked, and renamed into place once its coordinates and provenance attributes are
written; a run killed while creating leaves only that sibling, which the next run at the
same path removes (its lock died with its creator). Object stores cannot rename a folder: a
store there counts as created once its root attributes hold the provenance, and a rerun
removes one that does not (see :func:`half_created`).

Stores written before this module existed were created in place, with the provenance written
last; one killed in between has a root ``zarr.json`` without provenance, which
:func:`half_created` recognises (only coordinates, no attributes) so a rerun can rebuild it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr

from probe.data.schema import EmotionDataset
from probe.modality import POOLING_MODALITY
from probe.zarr_strings import quiet_zarr, write_strings

#: Where a local store is built before it is renamed into place: ``.NAME.creating-<hex>``.
CREATING = ".creating-"


def creating_sibling(path: Path) -> Path:
    """A fresh hidden folder beside ``path`` to build the store in."""
    return path.parent / f".{path.name}{CREATING}{uuid.uuid4().hex[:12]}"


def leftover_siblings(path: Path) -> list[Path]:
    """Folders in which earlier runs started creating ``path`` (live or dead)."""
    return sorted(path.parent.glob(f".{path.name}{CREATING}*"))


def half_created(root_attrs: Mapping, children: Mapping[str, tuple[int, ...]]) -> bool:
    """True for a store whose creation stopped before its provenance was written.

    ``root_attrs``: the root group's attributes; ``children``: each array's shape. Only
    what store creation writes may be there (1-d coordinates, ``sample`` among them), so a
    folder holding anything else is never taken for a leftover.
    """
    return ("emoprobe" not in root_attrs and not root_attrs.get("progress")
            and "sample" in children and all(len(shape) == 1 for shape in children.values()))


def coord_values(ds: EmotionDataset, col: str) -> np.ndarray:
    """A target column as a store coordinate (multi-label names joined by ``|``)."""
    kind = ds.targets.get(col)
    values = ds.frame[col]
    if kind == "continuous":
        return values.astype("float64").to_numpy()
    if kind == "multilabel":
        return np.array(["|".join(v) if v is not None else "" for v in values], dtype=str)
    return np.array(["" if v is None or v != v else str(v) for v in values], dtype=str)


def write_new_store(target, provenance: Mapping, dataset: EmotionDataset,
                    extra: Mapping[str, np.ndarray], *, nonce: str | None = None) -> None:
    """Write the coordinates, then the attributes (provenance), of a store at ``target``.

    ``target`` is what Zarr opens (a folder or an ``FsspecStore``); ``nonce``, recorded as
    ``created_by``, lets a run on an object store notice another that created it at once.
    """
    group = zarr.open_group(target, mode="a")
    n = len(dataset)
    coords = {
        "sample": np.asarray(dataset.ids, dtype=str),
        "text": np.asarray(dataset.texts, dtype=str),
        "text_hash": dataset.text_hashes(),
        "split": np.asarray(dataset.frame["split"], dtype=str),
        "group": np.asarray(dataset.frame["group"], dtype=str),
    }
    for col in dataset.targets:
        coords[col] = coord_values(dataset, col)
    coords.update({k: np.asarray(v) for k, v in extra.items() if k not in coords})
    for name, values in coords.items():
        if values.dtype.kind in "fiu":
            group.create_array(name, shape=(n,), dtype=values.dtype,
                               dimension_names=["sample"])[:] = values
        else:
            write_strings(group, name, values, "sample")
    layer = group.create_array("layer", shape=(provenance["n_layers"],), dtype="int64",
                               dimension_names=["layer"])
    layer[:] = np.arange(provenance["n_layers"])
    write_strings(group, "pooling", provenance["poolings"], "pooling")
    write_strings(group, "modality", [POOLING_MODALITY.get(p, "all")
                                      for p in provenance["poolings"]], "pooling")
    prov = dict(provenance, sample_coords=[c for c in coords if c != "sample"],
                pooling_coords=["modality"],
                targets=dict(dataset.targets), default_target=dataset.default_target)
    if nonce is not None:
        prov["created_by"] = nonce
    with quiet_zarr():
        group.update_attributes({"emoprobe": prov, "progress": {}, "complete": False})
