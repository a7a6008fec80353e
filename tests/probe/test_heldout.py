"""Held-out pairs and splits: what may be compared, and clear refusals otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from probe.heldout import (
    check_label_sets,
    check_pair,
    parse_split_eval,
    split_rows,
    warn_overlap,
)
from probe.stats import ProbeError, ProbeWarning


def test_parse_split_eval():
    assert parse_split_eval("train:test") == (("train",), ("test",))
    assert parse_split_eval(" Train : dev, test ") == (("train",), ("dev", "test"))
    assert parse_split_eval("train") == (("train",), None)
    for bad, match in ((":test", "expected TRAIN"), ("train:", "expected TRAIN"),
                       ("train:train", "on both sides")):
        with pytest.raises(ProbeError, match=match):
            parse_split_eval(bad)


def test_split_rows():
    splits = np.array(["train", "dev", "test", "train", "test"])
    train, test = split_rows(splits, "train")
    assert train.tolist() == [0, 3] and test.tolist() == [1, 2, 4]
    assert split_rows(splits, "train:test")[1].tolist() == [2, 4]
    with pytest.raises(ProbeError, match=r"no test rows; the rows' split column holds \{all: 3\}"):
        split_rows(np.array(["all"] * 3), "all")
    with pytest.raises(ProbeError, match="no training rows.*--eval-dataset"):
        split_rows(np.array(["all"] * 3), "train")


def _store(**prov) -> xr.Dataset:
    base = {"model_id": "m", "weight_fingerprint": "w1", "chat_template": True,
            "system_prompt": None, "dtype": "float32"}
    ds = xr.Dataset(coords={"pooling": ["last", "content-mean"]})
    ds.attrs["emoprobe"] = {**base, **prov}
    return ds


def test_check_pair_names_every_difference():
    check_pair(_store(), _store(), ["last"])
    with pytest.raises(ProbeError, match=r"(?s)weight_fingerprint: training store 'w1', "
                                         r"held-out store 'w2'.*chat_template"):
        check_pair(_store(), _store(weight_fingerprint="w2", chat_template=False), ["last"])
    other = _store()
    other = other.assign_coords(pooling=["mean"])
    with pytest.raises(ProbeError, match="pooling 'last' is not in the held-out store"):
        check_pair(_store(), other, ["last"])
    with pytest.warns(ProbeWarning, match="different dtypes"):
        check_pair(_store(), _store(dtype="bfloat16"), ["last"])


def test_label_sets_must_match():
    check_label_sets(np.array(["a", "b"]), np.array(["b", "a", "a"]), "valence")
    with pytest.raises(ProbeError, match=r"\['c'\] only in the training rows; \['d'\] only in "
                                         r"the held-out rows"):
        check_label_sets(np.array(["a", "b", "c"]), np.array(["a", "b", "d"]), "valence")


def test_overlapping_texts_are_reported():
    assert warn_overlap(["h1", "h2"], ["h3"]) == 0
    with pytest.warns(ProbeWarning, match="1 of 2 held-out texts also occur"):
        assert warn_overlap(["h1", "h2"], ["h2", "h4"]) == 1
