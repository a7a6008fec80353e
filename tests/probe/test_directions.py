"""Directions in the core: methods on labelled rows, reading a store, values and their files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe.direction_methods import STORE_METHODS, DirectionError, Rows, compute, site_kind
from probe.directions import (
    Direction,
    DirectionSet,
    file_base,
    file_stem,
    store_directions,
    unit_directions,
)
from probe.sites import Site

EMOTIONS = ["anger", "joy"]


def rows(n_ctx: int = 8, d: int = 6, seed: int = 0) -> Rows:
    rng = np.random.default_rng(seed)
    X, y, ctx = [], [], []
    for c in range(n_ctx):
        offset = rng.normal(size=d)
        for i, e in enumerate([*EMOTIONS, "neutral"]):
            X.append([offset + (i + 1 if e != "neutral" else 0) * np.eye(d)[i]
                      + 0.1 * rng.normal(size=d)])
            y.append(e)
            ctx.append(f"s{c}")
    return Rows(np.asarray(X, np.float32), np.array(y), np.array(ctx), [3], "hook_resid_post",
                "last", "emotion", {"model": "toy", "weight_fingerprint": "abc"})


def test_store_methods_are_named_and_each_one_computes():
    assert STORE_METHODS == ("mean-diff", "mean-diff-neutral", "context-agnostic", "pca-diff",
                             "pca-center", "lda")
    for method in STORE_METHODS:
        raw = compute(rows(), method)
        assert sorted(raw) == EMOTIONS and raw["joy"].shape == (1, 6)
    with pytest.raises(DirectionError, match="unknown method 'probe'"):
        compute(rows(), "probe")  # a steering method, not a store one
    assert site_kind("attn_out") == "hook_attn_out"
    with pytest.raises(DirectionError, match="unknown site"):
        site_kind("residual")


def test_unit_directions_are_normalised_values_with_provenance():
    data = rows()
    dirs = unit_directions(compute(data, "mean-diff-neutral"), data, "mean-diff-neutral")
    assert isinstance(dirs, DirectionSet) and sorted(dirs) == EMOTIONS
    joy = dirs["joy"]
    site = Site("hook_resid_post", 3)
    assert joy.sites == [site] and joy.layers == [3]
    assert float(joy.directions[site].norm()) == pytest.approx(1.0, abs=1e-6)
    assert joy.meta["method"] == "mean-diff-neutral" and joy.meta["weight_fingerprint"] == "abc"
    assert joy.meta["norms"][str(site)] > 1.0 and joy.meta["n_rows_emotion"] == 8
    zero = {"joy": np.zeros((1, 6))}
    with pytest.raises(DirectionError, match="the joy direction is zero"):
        unit_directions(zero, data, "x")


def test_direction_files_hold_the_tensors_and_their_checksum(tmp_path):
    vec = torch.arange(4, dtype=torch.float32)
    d = Direction({"blocks.1.hook_resid_post": vec}, {"emotion": "joy", "layers": range(1, 2)})
    assert d.sites == [Site("hook_resid_post", 1)]  # site names parsed
    paths = DirectionSet({"joy/sad": d}).save(tmp_path / "dirs")
    assert [p.name for p in paths] == ["joy_sad.safetensors"]
    meta = json.loads((tmp_path / "dirs" / "joy_sad.json").read_text())
    assert meta["sha256"] == d.checksum() and meta["format"] == 1 and meta["layers"] == [1]
    from safetensors.torch import load_file

    assert torch.equal(load_file(paths[0])["blocks.1.hook_resid_post"], vec)
    assert file_base("a/x.safetensors").name == "x" and file_stem("") == "vector"
    with pytest.raises(DirectionError, match="NaN or inf"):
        Direction({"blocks.1.hook_resid_post": torch.tensor([1.0, float("nan")])})


def test_store_directions_read_a_store(tiny_llama, toy_dataset, tmp_path):
    from probe.cache import CacheConfig, cache_activations

    store = cache_activations(tiny_llama, toy_dataset,
                              config=CacheConfig(sites="blocks.1.hook_resid_post"),
                              out=tmp_path / "toy.zarr", progress=False)
    dirs = store_directions(store, method="mean-diff", layers=[1], neutral=None)
    labels = sorted(set(toy_dataset.frame[toy_dataset.default_target]) - {""})
    assert sorted(dirs) == labels
    site = Site("hook_resid_post", 1)
    assert all(float(d.directions[site].norm()) == pytest.approx(1.0, abs=1e-5)
               for d in dirs.values())
    assert dirs[labels[0]].meta["weight_fingerprint"] == tiny_llama.provenance()["weight_fingerprint"]
    with pytest.raises(DirectionError, match="not cached"):
        store_directions(store, method="mean-diff", layers=[0])
