"""Split-half stability: do two disjoint halves of the prompts find the same components?

The scenario groups are split at random into two halves ``n_splits`` times; each half ranks the
components by its own mean score and keeps its top ``k``; the agreement is the Jaccard overlap
of the two top-``k`` sets. Applied to a circuit's ranking (``k`` = the circuit's size) and to
patching ground truth (``k`` = 20, by ``|effect|``). A half has half the prompts, so this is a
lower bound on the agreement of two full-size runs; below :data:`MIN_JACCARD` the run says the
circuit is not stable.

>>> split_half(per_row, groups, k=20, order="abs")   # doctest: +SKIP
{'k': 20, 'jaccard': 0.54, 'ci_low': 0.38, 'ci_high': 0.70, 'n_splits': 200, 'stable': False}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Median split-half Jaccard a stable circuit reaches.
MIN_JACCARD = 0.6


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else float("nan")


def top_k(scores: np.ndarray, k: int, *, order: str = "abs", sign: float = 1.0) -> np.ndarray:
    """Indices of the ``k`` best: by ``|score|`` (``abs``) or by ``sign * score`` ascending
    (``signed``: the components whose ablation moves the metric most against ``sign``)."""
    key = -np.abs(scores) if order == "abs" else sign * scores
    return np.argsort(key, kind="stable")[:k]


def split_half(per_row: np.ndarray, groups: Sequence[str] | None, *, k: int, order: str = "abs",
               sign: float = 1.0, n_splits: int = 200, seed: int = 0) -> dict:
    """Jaccard of the top-``k`` components of two disjoint halves of the scenario groups.

    Args:
        per_row: ``[rows, components]`` scores (attribution or patched effects) per prompt.
        groups: Scenario group of each row (rows are their own groups if None).
        k: Components kept per half.
        order, sign: How a half ranks (:func:`top_k`).
        n_splits: Random half splits.

    Returns the median Jaccard, its 2.5-97.5% range over splits, and ``stable``.
    """
    per_row = np.asarray(per_row, float)
    keys = np.asarray(groups if groups is not None else np.arange(len(per_row))).astype(str)
    uniq = np.unique(keys)
    if len(uniq) < 2:
        return {"k": k, "jaccard": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "n_splits": 0, "groups": len(uniq), "stable": False,
                "note": "fewer than 2 scenario groups: no split"}
    k = int(min(k, per_row.shape[1]))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_splits):
        a = np.isin(keys, halves(uniq, rng=rng)[0])
        ta = top_k(per_row[a].mean(0), k, order=order, sign=sign)
        tb = top_k(per_row[~a].mean(0), k, order=order, sign=sign)
        vals.append(jaccard(ta.tolist(), tb.tolist()))
    v = np.asarray(vals)
    med = float(np.median(v))
    lo, hi = np.quantile(v, [0.025, 0.975])
    return {"k": k, "jaccard": med, "ci_low": float(lo), "ci_high": float(hi),
            "n_splits": n_splits, "groups": len(uniq), "stable": bool(med >= MIN_JACCARD)}


def halves(*strata: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the groups in ``strata``, each stratum split in half at random
    (the first half gets the smaller share of an odd stratum)."""
    parts: tuple[list, list] = ([], [])
    for groups in strata:
        perm = rng.permutation(np.asarray(groups))
        parts[0].extend(perm[: len(perm) // 2])
        parts[1].extend(perm[len(perm) // 2:])
    return np.asarray(parts[0], dtype=str), np.asarray(parts[1], dtype=str)
