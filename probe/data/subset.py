"""Deterministic subsets for ``--limit``: whole groups, classes in proportion.

A random subset of rows breaks group-aware cross-validation on small limits (a class ends up in
one scenario) and splits groups. :func:`stratified_limit` instead takes whole groups, in an order
fixed by the seed, always from the class furthest below its share of the full dataset, until no
further group fits in ``n`` rows. :func:`smallest_working_limit` finds the smallest ``n`` whose
subset passes a check (e.g. "5-fold group-stratified cross-validation is possible"), so an error
can suggest a limit that works.

>>> from probe.data import load_dataset
>>> small = stratified_limit(load_dataset("emotion-scenarios"), 84)
>>> len(small), small.frame["group"].nunique(), set(small.frame["emotion"].value_counts())
(84, 12, {12})
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import pandas as pd

from probe.data.schema import DatasetError, EmotionDataset

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
