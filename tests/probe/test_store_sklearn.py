"""A store's labels, groups, ids and texts work with NumPy, pandas and scikit-learn as
``xarray.open_zarr`` opens them (no conversion by the toolkit in between)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from probe.cache import CacheConfig, cache_activations
from probe.store import open_store


@pytest.fixture(scope="module")
def tiny_store(tiny_llama, tmp_path_factory):
    from probe.data.schema import EmotionDataset
    from tests.tiny import CORPUS

    rows = [{"id": f"r{i}", "text": f"{t} é ✓ ({i})", "label": ["joy", "anger", "fear"][i % 3],
             "group": f"g{i % 4}"} for i, t in enumerate(CORPUS)]
    out = tmp_path_factory.mktemp("sk") / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # zarr's "no V3 specification" warning
        cache_activations(tiny_llama, EmotionDataset.from_records("toy", rows), out=out,
                          config=CacheConfig(sites="blocks.1.hook_resid_post", batch_size=8),
                          progress=False)
    return out


def test_labels_groups_work_with_sklearn_as_opened(tiny_store):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(tiny_store)
    X = ds["hook_resid_post"].sel(layer=1, pooling="last").values.astype("float32")
    y, g = ds["label"].values, ds["group"].values
    LogisticRegression(max_iter=200).fit(X, y)
    scores = cross_val_score(LogisticRegression(max_iter=200), X, y, groups=g, cv=GroupKFold(2))
    assert scores.shape == (2,)
    assert set(y.astype(str)) == {"joy", "anger", "fear"}
    for name in ("sample", "text", "label", "group", "split", "text_hash", "pooling"):
        values = ds[name].values
        assert values.dtype == object and all(type(v) is str for v in values), name
        assert values.astype(str).dtype.kind == "U"
    assert ds["text"].values[1].endswith("é ✓ (1)")
    counts = pd.Series(y).value_counts()
    assert counts.to_dict() == {"joy": 8, "anger": 8, "fear": 8}
    assert pd.DataFrame({"label": y, "group": g}).groupby("group").size().sum() == 24
    assert list(ds.sel(sample=["r3", "r0"])["label"].values) == ["joy", "joy"]


def test_open_store_gives_the_same_strings(tiny_store):
    ds, raw = open_store(tiny_store), xr.open_zarr(tiny_store)
    for name in ("sample", "text", "label", "group"):
        assert list(ds[name].values) == list(raw[name].values)
        assert ds[name].values.dtype == object


def test_older_stores_written_as_zarr_strings_open_as_python_strings(tmp_path):
    """Stores made before this encoding hold Zarr ``string`` coordinates (NumPy StringDType
    when opened); the toolkit's opener still hands out plain Python strings."""
    import zarr

    path = tmp_path / "old.zarr"
    g = zarr.open_group(str(path), mode="w")
    g.create_array("label", shape=(3,), dtype=str, dimension_names=["sample"])[:] = \
        np.array(["a", "b", "a"])
    x = g.create_array("x", shape=(3, 2), dtype="float32", dimension_names=["sample", "d"],
                       attributes={"coordinates": "label"})
    x[:] = np.arange(6, dtype="float32").reshape(3, 2)
    g.update_attributes({"emoprobe": {"n_samples": 3}, "progress": {"x": 3}, "complete": True})
    assert xr.open_zarr(path, consolidated=False)["label"].values.dtype.kind == "T"  # the fault
    y = open_store(path)["label"].values
    assert y.dtype == object and list(y.astype(str)) == ["a", "b", "a"]
