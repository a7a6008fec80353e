"""One schema for every emotion dataset the toolkit reads.

An :class:`EmotionDataset` is a table with one row per stimulus and a few required columns:

``id``     unique string id of the row (stable across runs; store coordinates use it)
``text``   the stimulus text fed to the model
``split``  ``"train"``, ``"dev"``, ``"test"`` or ``"all"`` (as the source defines it)
``group``  a string id of the unit that must never straddle train and test (a scenario, a
           dialogue, a source document); a row with no natural group is its own group

plus one column per *target*. ``targets`` maps each target column to its kind:

``"label"``       one class name (str) per row; ``None`` where the row has no single label
``"multilabel"``  a tuple of class names per row (GoEmotions)
``"continuous"``  a float per row (EmoBank V/A/D)

Optional columns a loader may add: ``target_word`` (a word of ``text`` whose last token is the
read-out position for ``token`` pooling), ``speaker``, ``dialogue``, ``valence``, ...

>>> ds = EmotionDataset.from_records("toy", [
...     {"id": "a", "text": "I won!", "label": "joy"},
...     {"id": "b", "text": "He left.", "label": "sadness"}])
>>> ds.default_target, len(ds), ds.classes("label")
('label', 2, ('joy', 'sadness'))
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from probe.errors import EmoprobeError

TargetKind = Literal["label", "multilabel", "continuous"]
REQUIRED_COLUMNS = ("id", "text", "split", "group")


class DatasetError(EmoprobeError, ValueError):
    """A dataset is malformed or cannot be used as asked; the message says what to fix."""


@dataclass(frozen=True, eq=False)
class EmotionDataset:
    """A validated table of stimuli with typed target columns (see module docstring)."""

    name: str
    frame: pd.DataFrame
    targets: Mapping[str, TargetKind]
    default_target: str
    source: str = ""
    card: str | None = None
    class_order: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_records(
        cls,
        name: str,
        records: Iterable[Mapping],
        *,
        targets: Mapping[str, TargetKind] | None = None,
        default_target: str | None = None,
        source: str = "",
        card: str | None = None,
    ) -> EmotionDataset:
        """Build from dicts; missing ``split``/``group`` default to ``"all"``/the row id."""
        frame = pd.DataFrame(list(records))
        if frame.empty:
            raise DatasetError(f"dataset {name!r} has no rows")
        if "split" not in frame:
            frame["split"] = "all"
        if "group" not in frame and "id" in frame:
            frame["group"] = frame["id"]
        targets = dict(targets or {"label": "label"})
        return cls(
            name=name,
            frame=frame,
            targets=targets,
            default_target=default_target or next(iter(targets)),
            source=source,
            card=card,
        )

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        f = self.frame
        missing = [c for c in REQUIRED_COLUMNS if c not in f.columns]
        if missing:
            raise DatasetError(f"dataset {self.name!r} lacks required column(s) {missing}")
        if len(f) == 0:
            raise DatasetError(f"dataset {self.name!r} has no rows")
        for col in ("id", "text", "split", "group"):
            bad = f[col].isna() | ~f[col].map(lambda v: isinstance(v, str))
            if bad.any():
                raise DatasetError(
                    f"dataset {self.name!r}: column {col!r} must hold strings; "
                    f"row {int(np.flatnonzero(bad.to_numpy())[0])} holds {f[col][bad].iloc[0]!r}"
                )
        empty = f["text"].str.strip() == ""
        if empty.any():
            raise DatasetError(
                f"dataset {self.name!r}: {int(empty.sum())} row(s) have empty text "
                f"(first id {f['id'][empty].iloc[0]!r}); drop them or fill them in"
            )
        dup = f["id"].duplicated()
        if dup.any():
            raise DatasetError(
                f"dataset {self.name!r}: ids must be unique; {f['id'][dup].iloc[0]!r} repeats"
            )
        if self.default_target not in self.targets:
            raise DatasetError(
                f"dataset {self.name!r}: default target {self.default_target!r} is not one of "
                f"its targets {sorted(self.targets)}"
            )
        for col, kind in self.targets.items():
            if col not in f.columns:
                raise DatasetError(f"dataset {self.name!r}: target column {col!r} is missing")
            if kind not in ("label", "multilabel", "continuous"):
                raise DatasetError(f"target {col!r} has unknown kind {kind!r}")

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()

    @property
    def texts(self) -> list[str]:
        return self.frame["text"].tolist()

    def classes(self, target: str | None = None) -> tuple[str, ...]:
        """Class names of a ``label``/``multilabel`` target, in a fixed order."""
        target = target or self.default_target
        kind = self.target_kind(target)
        if kind == "continuous":
            raise DatasetError(f"target {target!r} is continuous; it has no classes")
        if target in self.class_order:
            return tuple(self.class_order[target])
        values = self.frame[target].dropna()
        if kind == "multilabel":
            names = {c for row in values for c in row}
        else:
            names = set(values)
        return tuple(sorted(names))

    def target_kind(self, target: str) -> TargetKind:
        if target not in self.targets:
            raise DatasetError(
                f"dataset {self.name!r} has no target {target!r}; "
                f"choose one of {sorted(self.targets)}"
            )
        return self.targets[target]

    def content_hash(self) -> str:
        """sha256 over ids, texts, groups, targets and media paths: identifies a store's data.

        Computed once per dataset (the frame is not meant to be mutated after construction).
        """
        if "_content_hash" in self.__dict__:
            return self.__dict__["_content_hash"]
        h = hashlib.sha256()
        cols = ["id", "text", "group", *sorted(self.targets)]
        cols += [c for c in ("image", "audio") if c in self.frame]  # a row's media paths
        for row in self.frame[cols].itertuples(index=False):
            h.update(json.dumps([_jsonable(v) for v in row]).encode())
        self.__dict__["_content_hash"] = h.hexdigest()  # frozen: bypass __setattr__ for the memo
        return self.__dict__["_content_hash"]

    def text_hashes(self) -> np.ndarray:
        """Short sha1 of each text (a store coordinate: detects a text changed under an id)."""
        return np.array([hashlib.sha1(t.encode()).hexdigest()[:16] for t in self.texts])

    # ------------------------------------------------------------------ selection
    def select(self, mask_or_index) -> EmotionDataset:
        """A new dataset with the chosen rows (boolean mask or integer positions)."""
        frame = self.frame.iloc[np.asarray(mask_or_index)] if not _is_mask(mask_or_index) \
            else self.frame[np.asarray(mask_or_index)]
        if len(frame) == 0:
            raise DatasetError(f"selection from dataset {self.name!r} is empty")
        return EmotionDataset(
            name=self.name, frame=frame.reset_index(drop=True), targets=dict(self.targets),
            default_target=self.default_target, source=self.source, card=self.card,
            class_order=dict(self.class_order),
        )

    def limit(self, n: int | None, seed: int = 0, *, target: str | None = None) -> EmotionDataset:
        """At most ``n`` rows: whole groups, classes of ``target`` in proportion, fixed by ``seed``.

        See :func:`stratified_limit`; rows keep their original order.
        """
        return stratified_limit(self, n, seed=seed, target=target)


def _is_mask(x) -> bool:
    arr = np.asarray(x)
    return arr.dtype == bool


def _jsonable(v):
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v if isinstance(v, (str, int, bool)) else str(v)


# ------------------------------------------------------------------ subsets for --limit
# Deterministic subsets for ``--limit``: whole groups, classes in proportion.
#
# A random subset of rows breaks group-aware cross-validation on small limits (a class ends up in
# one scenario) and splits groups. :func:`stratified_limit` instead takes whole groups, in an order
# fixed by the seed, always from the class furthest below its share of the full dataset, until no
# further group fits in ``n`` rows. :func:`smallest_working_limit` finds the smallest ``n`` whose
# subset passes a check (e.g. "5-fold group-stratified cross-validation is possible"), so an error
# can suggest a limit that works.

#: Quantile bins that stand in for classes when the target is continuous.
N_BINS = 5


def strata(ds: EmotionDataset, target: str | None = None) -> np.ndarray:
    """One stratum name per row: the class (``""`` if none), a quantile bin, or a first label."""
    target = target or ds.default_target
    kind = ds.target_kind(target)
    col = ds.frame[target]
    if kind == "continuous":
        values = pd.to_numeric(col, errors="coerce")
        ranks = values.rank(method="first", pct=True)
        bins = np.ceil(ranks.fillna(0).to_numpy() * N_BINS).astype(int)
        return np.where(values.notna().to_numpy(), bins.astype(str), "")
    if kind == "multilabel":
        return np.array([str(v[0]) if v else "" for v in col], dtype=object)
    return np.array(["" if v is None or v != v else str(v) for v in col], dtype=object)


def stratified_limit(ds: EmotionDataset, n: int | None, *, seed: int = 0,
                     target: str | None = None) -> EmotionDataset:
    """At most ``n`` rows in whole groups, each class near its share of ``ds``.

    Args:
        ds: the dataset.
        n: the most rows to keep; ``None`` or ``n >= len(ds)`` keeps everything.
        seed: fixes the order in which groups are taken (same seed, same subset).
        target: the target whose classes are balanced (default: the dataset's).

    Returns:
        The subset, rows in their original order.
    """
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise DatasetError(f"--limit must be positive, got {n}")
    _, group_of_row = np.unique(ds.frame["group"].to_numpy(dtype=str), return_inverse=True)
    names, stratum_of_row = np.unique(strata(ds, target).astype(str), return_inverse=True)
    counts = np.zeros((group_of_row.max() + 1, len(names)))
    np.add.at(counts, (group_of_row, stratum_of_row), 1)
    sizes, share = counts.sum(1), counts.sum(0) / len(ds)
    order = np.random.default_rng(seed).permutation(len(sizes))
    primary = counts.argmax(1)[order]  # a group queues under its most frequent class
    queues = [deque(order[primary == s]) for s in range(len(names))]
    taken, total, chosen = np.zeros(len(names)), 0, []
    while True:
        group = None
        for s in np.argsort(taken - share * n, kind="stable"):  # furthest below its share first
            queue = queues[s]
            while queue and total + sizes[queue[0]] > n:
                queue.popleft()  # too big now, and the total only grows
            if queue:
                group = queue.popleft()
                break
        if group is None:
            break
        chosen.append(group)
        taken += counts[group]
        total += sizes[group]
    if not chosen:
        smallest = int(sizes.min())
        raise DatasetError(f"--limit {n} is smaller than the smallest group ({smallest} rows); "
                           f"use --limit {smallest} or more")
    return ds.select(np.isin(group_of_row, chosen))


def smallest_working_limit(ds: EmotionDataset, works: Callable[[EmotionDataset], bool], *,
                           seed: int = 0, target: str | None = None) -> int | None:
    """The smallest ``n`` whose :func:`stratified_limit` subset passes ``works``.

    Assumes a larger subset passes whenever a smaller one does (checked at the answer);
    ``None`` when even the whole dataset fails.
    """
    def ok(n: int) -> bool:
        try:
            return works(stratified_limit(ds, n, seed=seed, target=target))
        except DatasetError:
            return False

    if not works(ds):
        return None
    lo, hi = 1, 1
    while hi < len(ds) and not ok(hi):
        lo, hi = hi + 1, min(2 * hi, len(ds))
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi
