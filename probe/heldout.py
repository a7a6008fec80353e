"""Held-out evaluation: train on one set of rows, score on another.

Two ways to hold data out, both scored with ``evaluation == "heldout"`` rows:

* **another store** (``eval_store=``, ``--eval-store`` / ``--eval-dataset``): the same model,
  chat template and poolings over a different dataset. :func:`check_pair` refuses pairs that
  cannot be compared and says what differs; :func:`check_label_sets` that the two stores have
  the same classes. The training store is also cross-validated, so a sweep reports
  in-distribution CV next to transfer.
* **a split column** (``split_eval=``, ``--split-eval train:test``): rows whose ``split`` is
  ``train`` are fitted, the others (or the named ones) are scored; no CV.

>>> parse_split_eval("train:dev,test")
(('train',), ('dev', 'test'))
>>> parse_split_eval("train")
(('train',), None)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

from probe.stats import ProbeError, ProbeWarning

#: Provenance that must agree for features of two stores to be compared by one probe.
PAIR_KEYS = ("model_id", "weight_fingerprint", "chat_template", "system_prompt")


def parse_split_eval(spec: str | tuple) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """``"TRAIN[:TEST]"`` -> ``(train splits, test splits or None for "every other split")``;
    each side may list several splits separated by commas."""
    if isinstance(spec, tuple):
        train, test = spec
        return tuple(train), None if test is None else tuple(test)
    train, colon, test = str(spec).partition(":")
    train_splits, test_splits = _names(train), _names(test)
    if not train_splits or (colon and not test_splits):
        raise ProbeError(f"--split-eval {spec!r}: expected TRAIN or TRAIN:TEST split names, e.g. "
                         "train:test or train:dev,test")
    overlap = set(train_splits) & set(test_splits)
    if overlap:
        raise ProbeError(f"--split-eval {spec!r}: {sorted(overlap)} is on both sides")
    return train_splits, test_splits or None


def _names(part: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in part.split(",") if p.strip())


def split_rows(splits: np.ndarray, spec: str | tuple) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and test rows among ``splits`` (one split name per row)."""
    train_splits, test_splits = parse_split_eval(spec)
    splits = np.array([str(s).lower() for s in splits])
    train = np.flatnonzero(np.isin(splits, train_splits))
    test = np.flatnonzero(~np.isin(splits, train_splits) if test_splits is None
                          else np.isin(splits, test_splits))
    if not len(train) or not len(test):
        names, counts = np.unique(splits, return_counts=True)
        have = ", ".join(f"{n or '(empty)'}: {c}" for n, c in zip(names, counts))
        side = "training" if not len(train) else "test"
        raise ProbeError(f"--split-eval {_spec(spec)} leaves no {side} rows; the rows' split "
                         f"column holds {{{have}}}. Give the file a split column (train/dev/test), "
                         "or hold out another dataset with --eval-dataset / --eval-store")
    return train, test


def _spec(spec) -> str:
    train, test = parse_split_eval(spec)
    return ",".join(train) + (":" + ",".join(test) if test else "")


def check_pair(train: xr.Dataset, heldout: xr.Dataset, poolings: Sequence[str]) -> None:
    """Refuse a held-out store that a probe of ``train`` cannot be applied to.

    Raises:
        ProbeError: The model, weights, chat template or system prompt differ (listing each
            difference), or a pooling is missing from the held-out store.
    """
    a, b = train.attrs["emoprobe"], heldout.attrs["emoprobe"]
    diffs = [f"  {k}: training store {a.get(k)!r}, held-out store {b.get(k)!r}"
             for k in PAIR_KEYS if a.get(k) != b.get(k)]
    if diffs:
        raise ProbeError("the held-out store was not made with the same model and template as "
                         "the training store:\n" + "\n".join(diffs)
                         + "\nCache the held-out dataset with the same --model, chat template "
                         "and --system-prompt")
    have = [str(p) for p in heldout["pooling"].values]
    missing = [p for p in poolings if p not in have]
    if missing:
        raise ProbeError(f"pooling {missing[0]!r} is not in the held-out store (it has {have}); "
                         "cache it with the same --pooling as the training store")
    if a.get("dtype") != b.get("dtype"):
        warnings.warn(f"the stores were computed in different dtypes ({a.get('dtype')} vs "
                      f"{b.get('dtype')}): held-out scores include that numerical difference",
                      ProbeWarning, stacklevel=2)


def check_label_sets(train_y: np.ndarray, heldout_y: np.ndarray, target: str) -> None:
    """Both sides of a classification must have the same classes; the error says which are
    missing where."""
    a, b = set(np.unique(train_y).tolist()), set(np.unique(heldout_y).tolist())
    if a == b:
        return
    parts = []
    if a - b:
        parts.append(f"{sorted(a - b)} only in the training rows")
    if b - a:
        parts.append(f"{sorted(b - a)} only in the held-out rows")
    raise ProbeError(f"target {target!r} has different classes on the two sides: "
                     f"{'; '.join(parts)}. Held-out scores need the same label set: drop those "
                     "rows or classes from the data")


def warn_overlap(train_hashes: Sequence[str], heldout_hashes: Sequence[str]) -> int:
    """Warn when held-out texts also occur in the training rows; returns how many do."""
    shared = int(np.isin(np.asarray(heldout_hashes, dtype=str),
                         np.asarray(train_hashes, dtype=str)).sum())
    if shared:
        warnings.warn(f"{shared} of {len(heldout_hashes)} held-out texts also occur in the "
                      "training rows: their held-out scores are not held out", ProbeWarning,
                      stacklevel=2)
    return shared
