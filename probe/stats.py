"""Honest statistics for probe sweeps: group-safe folds, metrics, cluster bootstrap, chance.

* :func:`group_stratified_folds` assigns whole GROUPS (scenarios, dialogues) to folds, so no
  group can be in both the train and the test rows of a fold; it checks that, and says so
  loudly when the data cannot support the folds asked for.
* :func:`score` computes every metric for many sites and many row weightings at once. With
  all-ones weights it is the pooled out-of-fold score; with test-fold masks it gives per-fold
  scores; with :func:`group_bootstrap_weights` it gives a cluster bootstrap (groups, not rows,
  are resampled: rows of one scenario are correlated).
* :func:`chance_levels` gives what a label-blind predictor scores.

>>> y = np.array(["joy", "fear"] * 6); groups = np.repeat(np.arange(6), 2)
>>> folds = group_stratified_folds(y, groups, n_splits=3, seed=0)
>>> [len(test) for _, test in folds]
[4, 4, 4]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from probe.errors import EmoprobeError

Task = Literal["classification", "regression"]
FoldList = list[tuple[np.ndarray, np.ndarray]]
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "auroc")
REGRESSION_METRICS = ("r2", "pearson_r")


class ProbeError(EmoprobeError, ValueError):
    """Inputs a probe sweep cannot use honestly; the message says what is wrong and the fix."""


class ProbeWarning(UserWarning):
    """A reported fallback or a result to read with care (fewer folds, no convergence, ...)."""


# ---------------------------------------------------------------------------------- folds


def infer_task(y: Sequence) -> Task:
    """``"regression"`` for non-integer floats, ``"classification"`` for labels and ints.

    Floats that are all whole numbers (class ids read from a file as numbers, or a 1-5 rating)
    are ambiguous: pass ``task=`` instead of letting them be guessed.

    Raises:
        ProbeError: For whole-number floats.
    """
    y = np.asarray(y)
    if y.dtype.kind != "f":
        return "classification"
    finite = y[np.isfinite(y)]
    if len(finite) and np.all(finite == np.round(finite)):
        raise ProbeError("the targets are whole numbers stored as floats: class ids or a score? "
                         "pass task='classification' or task='regression'")
    return "regression"


def group_stratified_folds(
    y: Sequence,
    groups: Sequence,
    n_splits: int = 5,
    seed: int = 0,
    *,
    task: Task | None = None,
    fallback: Literal["error", "reduce"] = "error",
) -> FoldList:
    """Group-aware k-fold: stratified by class (``StratifiedGroupKFold``) or plain
    (``GroupKFold``, continuous targets); whole groups go to one test fold.

    Args:
        y: Targets: labels (classification) or floats (regression).
        groups: One id per row; rows sharing an id are never split between train and test.
        n_splits: Number of folds.
        seed: Shuffling seed; the same inputs and seed give the same folds.
        task: ``"classification"`` or ``"regression"``; None infers it (floats: regression).
        fallback: When a class occurs in fewer groups than ``n_splits`` (or there are fewer
            groups than folds): ``"error"`` raises, ``"reduce"`` lowers ``n_splits`` to what
            the data support and warns with a :class:`ProbeWarning` naming the new number.

    Returns:
        ``n_splits`` pairs of sorted ``(train_idx, test_idx)``; every row is in exactly one
        test part.

    Raises:
        ProbeError: Mismatched lengths, NaN or missing targets or groups, a single class, a
            class confined to one group, or (with ``fallback="error"``) too few groups.
    """
    y, groups = _check_targets(y, groups)
    task = task or infer_task(y)
    n_splits = _supported_splits(y, groups, n_splits, task, fallback)
    if task == "classification":
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits, shuffle=True, random_state=seed)
    fold_of_group: dict = {}
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        for g in np.unique(groups[test]):
            if fold_of_group.setdefault(g, f) != f:
                raise ProbeError(f"group {g!r} was put in two test folds")  # pragma: no cover
    fold = np.array([fold_of_group[g] for g in groups])  # a row's fold is its group's fold
    folds = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_splits)]
    check_folds(folds, groups)
    if task == "classification":
        _check_classes_trained(y, folds)
    return folds


def check_folds(folds: FoldList, groups: Sequence) -> None:
    """Raise :class:`ProbeError` if a group straddles train and test or rows are misassigned."""
    groups = np.asarray(groups)
    seen = np.zeros(len(groups), dtype=int)
    for f, (train, test) in enumerate(folds):
        leaked = np.intersect1d(groups[train], groups[test])
        if len(leaked):
            raise ProbeError(f"fold {f}: groups {leaked[:5].tolist()} are in train and test")
        if len(np.intersect1d(train, test)):
            raise ProbeError(f"fold {f}: a row is in both train and test")
        seen[test] += 1
    if (seen != 1).any():
        raise ProbeError(f"{int((seen != 1).sum())} rows are not in exactly one test fold")


def _check_targets(y: Sequence, groups: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y, groups = np.asarray(y), np.asarray(groups)
    if y.ndim != 1 or len(y) != len(groups):
        raise ProbeError(f"y has shape {y.shape} but there are {len(groups)} groups; "
                         "need one target and one group per row")
    bad_y = _missing(y)
    if bad_y.any():
        raise ProbeError(f"{int(bad_y.sum())} targets are NaN/None (first rows "
                         f"{np.flatnonzero(bad_y)[:5].tolist()}); drop those rows first")
    if _missing(groups).any():
        raise ProbeError(f"{int(_missing(groups).sum())} rows have no group; give each its "
                         "own id (e.g. its row id) if it has no natural group")
    return y, groups


def _missing(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "fc":
        return ~np.isfinite(a)
    if a.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in a], bool)
    return np.zeros(len(a), dtype=bool)


def _supported_splits(y, groups, n_splits: int, task: Task, fallback: str) -> int:
    """The number of folds the data support, or an error explaining why not."""
    if n_splits < 2:
        raise ProbeError(f"n_splits must be at least 2, got {n_splits}")
    limit, why = len(np.unique(groups)), "groups"
    if task == "classification":
        classes, codes = np.unique(y, return_inverse=True)
        classes = classes.tolist()  # plain Python values in messages
        if len(classes) < 2:
            raise ProbeError(f"only one class ({classes[0]!r}) in y; a probe needs two or more")
        per_class = [len(np.unique(groups[codes == k])) for k in range(len(classes))]
        k = int(np.argmin(per_class))
        if per_class[k] < 2:
            raise ProbeError(f"class {classes[k]!r} occurs in a single group, so it cannot be "
                             "both trained on and tested; drop it or merge it")
        if per_class[k] < limit:
            limit, why = per_class[k], f"groups containing class {classes[k]!r}"
    if limit < 2:
        raise ProbeError(f"only {limit} {why}: need at least 2 for cross-validation")
    if limit >= n_splits:
        return n_splits
    message = f"only {limit} {why}, fewer than n_splits={n_splits}"
    if fallback == "error":
        raise ProbeError(f"{message}; lower the folds (--folds / n_folds) or let them be reduced "
                         "with a reported fallback (--fold-fallback reduce / fallback='reduce')")
    warnings.warn(f"{message}: using {limit} folds instead", ProbeWarning, stacklevel=3)
    return limit


def _check_classes_trained(y: np.ndarray, folds: FoldList) -> None:
    for f, (train, _) in enumerate(folds):
        absent = np.setdiff1d(np.unique(y), y[train]).tolist()
        if len(absent):
            raise ProbeError(f"fold {f} has no training rows of class {absent[0]!r}; "
                             "try another seed or fewer folds")


# ------------------------------------------------------------------------------ bootstrap


def group_bootstrap_weights(groups: Sequence, n_boot: int, seed: int = 0) -> np.ndarray:
    """Cluster-bootstrap row weights ``[n_boot, n]``: each resample draws as many groups as
    there are, with replacement, and a row weighs as often as its group was drawn."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    G = codes.max() + 1
    counts = np.random.default_rng(seed).multinomial(G, np.full(G, 1 / G), size=n_boot)
    return counts[:, codes].astype(np.float64)


def percentile_ci(samples: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring resamples where a metric is undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        lo, hi = np.nanquantile(samples, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return lo, hi


# -------------------------------------------------------------------------------- metrics


def score(task: Task, y: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> dict:
    """Every metric of ``task`` for S sites under B row weightings, vectorised.

    Args:
        task: ``"classification"`` or ``"regression"``.
        y: n targets; class codes ``0..K-1`` for classification.
        pred: ``[S, n, K]`` class probabilities, or ``[S, n]`` predictions.
        weights: ``[B, n]`` non-negative row weights (ones, test masks, bootstrap counts).

    Returns:
        ``{metric: [B, S] array}``; NaN where a metric is undefined for a weighting (e.g.
        AUROC when a resample holds one class).

    >>> p = np.array([[[.9, .1], [.2, .8], [.6, .4]]])
    >>> {k: v.round(3).tolist() for k, v in score("classification", np.array([0, 1, 1]), p,
    ...                                           np.ones((1, 3))).items()}
    {'accuracy': [[0.667]], 'macro_f1': [[0.667]], 'auroc': [[1.0]]}
    """
    W = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    P = torch.as_tensor(np.asarray(pred, dtype=np.float64))
    missing = ~torch.isfinite(P.reshape(*P.shape[:2], -1)).all(-1).any(0)  # rows never predicted
    if (missing & (W > 0).any(0)).any():
        raise ProbeError(f"{int(missing.sum())} rows have no prediction but a weight; score "
                         "only rows that are in a test fold")
    P = torch.where(missing[:, None] if P.ndim == 3 else missing, 0.0, P)
    if task == "classification":
        return _classification(torch.as_tensor(np.asarray(y)), P, W)
    return _regression(torch.as_tensor(np.asarray(y, dtype=np.float64)), P, W)


def _classification(y, P, W) -> dict:
    K = P.shape[-1]
    Yh = torch.nn.functional.one_hot(y, K).double()  # [n, K]
    Ph = torch.nn.functional.one_hot(P.argmax(-1), K).double()  # [S, n, K]
    total = W.sum(1, keepdim=True)
    correct = (Ph * Yh).sum(-1)  # [S, n]
    tp = torch.einsum("bn,snk->bsk", W, Ph * Yh)
    denom = torch.einsum("bn,snk->bsk", W, Ph) + (W @ Yh)[:, None]
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-300), torch.nan)
    return {"accuracy": (W @ correct.T / total).numpy(),
            "macro_f1": torch.nanmean(f1, -1).numpy(),
            "auroc": _macro_auroc(Yh, P, W).numpy()}


def _macro_auroc(Yh, P, W) -> torch.Tensor:
    """Weighted one-vs-rest AUROC (ties count half), averaged over classes, [B, S].

    Per class: sort the negatives' scores once; under every weighting a positive wins the
    cumulative weight of the negatives below it (found by binary search) -- O(B n) per
    (site, class), no pairwise matrix.
    """
    S, _, K = P.shape
    Wt = np.ascontiguousarray(W.numpy().T, dtype=np.float32)  # [n, B]; counts: exact
    total = Wt.sum(0)
    out = np.full((len(total), S, K), np.nan)
    for s in range(S):
        for k in range(K):
            pos = Yh[:, k].numpy().astype(bool)
            score_ = P[s, :, k].numpy()
            order = np.flatnonzero(~pos)[np.argsort(score_[~pos], kind="stable")]
            neg_sorted = score_[order]
            lo = np.searchsorted(neg_sorted, score_[pos], "left")  # negatives strictly below
            hi = np.searchsorted(neg_sorted, score_[pos], "right")  # ... or tied
            below = _prefix_sums(Wt[order], np.concatenate([lo, hi]))
            w_pos = Wt[pos]
            npos = w_pos.sum(0)
            wins = (w_pos * (below[: len(lo)] + below[len(lo):])).sum(0, dtype=np.float64) / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                out[:, s, k] = np.where((npos > 0) & (npos < total),
                                        wins / (npos * (total - npos)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no defined class
        return torch.as_tensor(np.nanmean(out, -1))


def _prefix_sums(A: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """``A[:c].sum(0)`` for every cut c, ``[len(cuts), B]``: a cumulative sum, or for few
    cuts segment sums between them (vectorised) and a short cumulative sum over those."""
    edges = np.unique(cuts[(cuts > 0) & (cuts < len(A))])
    if len(edges) > len(A) // 4:
        cum, points = np.cumsum(A, axis=0), np.arange(1, len(A) + 1)
    else:
        starts = np.concatenate([[0], edges]).astype(int)
        cum = np.cumsum(np.add.reduceat(A, starts, axis=0), axis=0) if len(A) else A
        points = np.concatenate([edges, [len(A)]]).astype(int)  # cum[i] = A[:points[i]].sum(0)
    values = np.concatenate([np.zeros((1, A.shape[1]), A.dtype), cum])
    return values[np.searchsorted(np.concatenate([[0], points]), cuts)]


def _regression(y, P, W) -> dict:
    if P.ndim == 3:
        P = P[..., 0]
    total = W.sum(1, keepdim=True)
    my = (W @ y)[:, None] / total  # [B, 1]
    mp = W @ P.T / total  # [B, S]
    res = W @ ((y[None] - P) ** 2).T
    tot = W @ (y**2) - total[:, 0] * my[:, 0] ** 2
    cov = W @ (P * y).T - total * my * mp
    var_p = W @ (P**2).T - total * mp**2
    r2 = 1 - res / tot[:, None]
    r = cov / (var_p.clamp_min(0) * tot[:, None].clamp_min(0)).sqrt()
    # no correlation with a constant side: constant predictions, or constant targets (e.g. a
    # model that gives every item the same rating), whose variance is rounding noise
    varies_y = tot > 64 * torch.finfo(tot.dtype).eps * (W @ y**2)
    defined = (var_p > 0) & varies_y[:, None]
    return {"r2": r2.numpy(), "pearson_r": torch.where(defined, r, torch.nan).numpy()}


# --------------------------------------------------------------------------------- chance


def chance_levels(y: Sequence, task: Task | None = None) -> dict[str, float]:
    """What a predictor that never looks at the input scores.

    Classification: ``majority_accuracy`` (always predict the largest class),
    ``shuffle_accuracy`` = sum_k p_k^2 and ``shuffle_macro_f1`` = 1/K (exact expectations of
    predicting a random permutation of the true labels), ``majority_macro_f1``, and
    ``auroc`` = 0.5. Regression: ``r2`` = 0 (the mean) and ``pearson_r`` = 0.

    >>> chance_levels(["a", "a", "a", "b"])["majority_accuracy"]
    0.75
    """
    y = np.asarray(y)
    if (task or infer_task(y)) == "regression":
        return {"r2": 0.0, "pearson_r": 0.0}
    p = np.unique(y, return_counts=True)[1] / len(y)
    K, top = len(p), float(p.max())
    return {"majority_accuracy": top, "shuffle_accuracy": float((p**2).sum()),
            "shuffle_macro_f1": 1 / K, "majority_macro_f1": 2 * top / (1 + top) / K,
            "auroc": 0.5}


def chance_scores(y: Sequence, task: Task) -> dict[str, float]:
    """One chance value per table metric: the better of the majority and shuffle predictors."""
    c = chance_levels(y, task)
    if task == "regression":
        return c
    return {"accuracy": c["majority_accuracy"],
            "macro_f1": max(c["shuffle_macro_f1"], c["majority_macro_f1"]),
            "auroc": c["auroc"]}
