"""Cross-validated logistic probes at S sites x F folds as one batched solve."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probe.engine import precondition
from probe.engine.designs import Dual, Primal
from probe.engine.lbfgs import HISTORY, Softmax, minimise
from probe.engine.prepare import (
    FoldList,
    Standardised,
    copy_tensor,
    fold_masks,
    solver_threads,
    standardise,
)
from probe.stats import ProbeError, ProbeWarning

Form = Literal["auto", "primal", "dual"]
#: Working memory one site batch may take on top of the caller's X (bytes).
MEMORY_BUDGET = 2 << 30


@dataclass(frozen=True)
class CVFit:
    """Out-of-fold predictions of one probe at S sites over F folds.

    Attributes:
        predictions: ``[S, n, K]`` class probabilities (logistic) or ``[S, n, T]`` predicted
            targets (ridge), each row predicted by the fold that held it out; NaN for rows that
            are in no test fold.
        classes: The K class labels in column order (logistic), else None.
        n_iter: ``[S, F]`` solver iterations (0 for the closed-form ridge).
        converged: ``[S, F]`` whether each problem met the tolerance.
        form: How it was solved: ``"dual"``, ``"primal/gram"``, ``"primal/kernel"`` or
            ``"primal/sketch"`` (logistic; see :mod:`probe.engine`), ``"primal"`` or ``"dual"``
            (ridge).
        coef: ``[S, F, K, d]`` weights on the STANDARDISED features of each fold (what
            ``LogisticRegression.coef_`` is after a ``StandardScaler``), if requested.
        intercept: ``[S, F, K]`` matching intercepts, if requested.
    """

    predictions: np.ndarray
    classes: np.ndarray | None
    n_iter: np.ndarray
    converged: np.ndarray
    form: str
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None


@dataclass(frozen=True)
class Solved:
    """One site batch after the solve: its design, standardisation and parameters."""

    design: Primal | Dual
    std: Standardised
    W: Tensor  # [S, K, F, p]
    b: Tensor  # [S, K, F], the design's intercepts
    n_iter: Tensor  # [S, F]
    converged: Tensor  # [S, F]
    form: str


def encode(y, device) -> tuple[np.ndarray, Tensor]:
    """Sorted classes and the one-hot ``[n, K]`` float32 labels."""
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise ProbeError(f"need at least 2 classes to fit a classifier, got {classes.tolist()}")
    Y = torch.nn.functional.one_hot(torch.as_tensor(codes), len(classes))
    return classes, Y.to(device=device, dtype=torch.float32)


def objective(Y: Tensor, train: Tensor, C: float, classes: np.ndarray) -> Softmax:
    missing = (Y.T @ train.T.float()) == 0  # [K, F]
    if missing.any():
        k, f = map(int, missing.nonzero()[0])
        raise ProbeError(f"class {classes.tolist()[k]!r} has no training rows in fold {f}; "
                         "use probe.stats.group_stratified_folds or drop the class")
    return Softmax(Y=Y.T[None, :, None], mask=train[None, None].float(), C=C,
                   n_train=train.sum(1)[None].float())


def solve(X, obj: Softmax, train: Tensor, *, device, form: Form, tol: float, max_iter: int,
          standardize: bool = True) -> Solved:
    """Standardise one batch of sites, choose the form by shape and solve every problem."""
    std = standardise(copy_tensor(X, device), train, standardize=standardize)
    (S, n, d), F, K = std.Xg.shape, len(train), obj.rows
    n_train = int(train.sum(1).max())
    name, kind = precondition.choose(n, d, n_train, F, K)
    if form != "auto" and form != name:
        name, kind = form, (None if form == "dual" else
                            precondition.choose(n, d, n_train, F, K, primal_only=True)[1])
    c = obj.curvature
    if name == "dual":
        design = Dual(std, train, c)
    else:
        Xp = std.Xg if standardize else std.Xg / std.sd[:, 0, None]
        share = float(train.sum(1).double().mean()) / n  # the Gram is over all n rows
        design = Primal(std, precondition.build(kind, Xp, c * share))
        del Xp
    res = minimise(design, obj, S, tol=tol, max_iter=max_iter)
    theta = torch.cat([-res.theta / 2, res.theta / 2], 1) if obj.binary else res.theta
    W, b = theta[..., :-1], theta[..., -1]  # two classes: rows -w/2, w/2 (they sum to zero)
    return Solved(design, std, W, b, res.n_iter, res.converged,
                  name if kind is None else f"{name}/{kind}")


def standardised_weights(fit: Solved) -> tuple[Tensor, Tensor]:
    """Weights ``[S, K, F, d]`` and class-centred intercepts ``[S, K, F]`` on each fold's
    standardised features (``LogisticRegression.coef_`` / ``intercept_`` after a scaler)."""
    coef = fit.design.coef(fit.W)
    b = fit.design.intercept(coef, fit.b)
    return coef, b - b.mean(1, keepdim=True)


def site_batches(X, site_batch: int | None, F: int, K: int) -> list:
    """Slices of X's sites to solve at a time (``None``: as many as fit ``MEMORY_BUDGET``)."""
    S, n, d = X.shape
    if site_batch is None:
        site_batch = max(1, MEMORY_BUDGET // max(1, memory_estimate(1, n, d, F, K)))
    return [X[i:i + site_batch] for i in range(0, S, site_batch)]


def memory_estimate(S: int, n: int, d: int, F: int, K: int, form: str = "auto") -> int:
    """Peak bytes (float32) the logistic solve holds for S sites beyond the caller's X: the
    standardised copy, the design (per-fold rotations, or a preconditioner: a d x d inverse, an
    n x n kernel basis or a rank-256 sketch) and the solver's state (logits, L-BFGS history).

    Args:
        form: ``"auto"`` (what the solve would choose), ``"dual"``, or ``"primal/<kind>"``.
    """
    r = n - n // max(F, 2)  # training rows per fold
    if form == "auto":
        form = "/".join(v for v in precondition.choose(n, d, r, F, K) if v)
    design = {"dual": F * (n * r + 2 * r * r) + 2 * n * d, "primal/gram": 2 * d * d,
              "primal/kernel": n * n + n * d,
              "primal/sketch": 3 * d * (precondition.SKETCH_RANK + 16)}[form]
    p = r if form == "dual" else d
    return 4 * S * (n * d + design + 8 * K * F * n + (4 * HISTORY + 8) * K * F * (p + 1))


def warn_unconverged(converged: np.ndarray, labels: Sequence[str] | None, tol: float,
                     max_iter: int, what: str) -> None:
    """One :class:`ProbeWarning` naming the sites (and folds) that hit ``max_iter``."""
    if converged.all():
        return
    bad = np.argwhere(~converged)
    name = (lambda s: labels[s]) if labels is not None else (lambda s: f"site index {s}")
    where = [name(i[0]) + (f" fold {i[1]}" if len(i) > 1 else "") for i in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(
        f"{len(bad)} of {converged.size} {what} did not reach tol={tol} within "
        f"max_iter={max_iter} iterations: {'; '.join(where)}{more}. Raise the cap with "
        "--max-iter on the command line or EvalConfig(max_iter=...) in Python",
        ProbeWarning, stacklevel=3)


def check_inputs(X, n: int, site_labels) -> None:
    if len(X.shape) != 3:
        raise ProbeError(f"X must have shape [sites, samples, features], got {tuple(X.shape)}")
    if X.shape[1] != n:
        raise ProbeError(f"X has {X.shape[1]} samples per site but y has {n}")
    if site_labels is not None and len(site_labels) != X.shape[0]:
        raise ProbeError(f"got {len(site_labels)} site_labels for {X.shape[0]} sites")


def fit_logistic_cv(
    X: Float[np.ndarray, "S n d"] | Float[Tensor, "S n d"],
    y: Sequence | np.ndarray,
    folds: FoldList,
    *,
    C: float = 0.05,
    tol: float = 1e-5,
    max_iter: int = 300,
    device: str | torch.device = "cpu",
    form: Form = "auto",
    site_batch: int | None = None,
    return_coef: bool = False,
    site_labels: Sequence[str] | None = None,
) -> CVFit:
    """Cross-validated ``StandardScaler + LogisticRegression(C)`` at every site at once.

    Args:
        X: Pooled activations, one ``[n, d]`` matrix per site (numpy or torch, any float dtype).
        y: n class labels (strings or ints); every class must be in every fold's train rows.
        folds: ``(train_idx, test_idx)`` pairs, e.g. from ``probe.stats.group_stratified_folds``.
        C: Inverse L2 strength, exactly as in scikit-learn (two classes: scikit-learn's binary
            model, reported as two softmax rows ``-w/2, w/2``).
        tol: Stop a problem when ``max|grad| / (C * n_train) <= tol``, sklearn's criterion.
        max_iter: Iteration cap; problems that hit it are reported in ``converged`` and warned.
        device: Torch device for the solve ("cpu", "cuda", ...).
        form: ``"primal"``, ``"dual"`` (per-fold row-space rotation, for n < d) or ``"auto"``
            (the cheaper for this shape, with the cheaper preconditioner).
        site_batch: Solve this many sites at a time (None: as many as fit in ~2 GiB of working
            memory).
        return_coef: Also return per-fold weights and intercepts (standardised features).
        site_labels: A name per site for messages, e.g. ``"blocks.14.hook_resid_post (last)"``.

    Returns:
        A :class:`CVFit` with ``[S, n, K]`` out-of-fold class probabilities.
    """
    classes, Y = encode(y, device)
    check_inputs(X, len(Y), site_labels)
    train, test = fold_masks(folds, len(Y), device)
    obj = objective(Y, train, C, classes)
    parts = []
    with solver_threads(device):
        for Xb in site_batches(X, site_batch, len(train), obj.rows):
            fit = solve(Xb, obj, train, device=device, form=form, tol=tol, max_iter=max_iter)
            parts.append(_out_of_fold(fit, test, return_coef))
    out = concat(parts, classes)
    warn_unconverged(out.converged, site_labels, tol, max_iter, "site x fold problems")
    return out


def _out_of_fold(fit: Solved, test: Tensor, return_coef: bool) -> CVFit:
    proba = torch.softmax(fit.design.forward(fit.W, fit.b), 1)  # [S, K, F, n]
    oof = torch.einsum("skfn,fn->snk", proba, test.to(proba.dtype))
    oof[:, ~test.any(0)] = float("nan")
    coef = intercept = None
    if return_coef:
        coef, intercept = standardised_weights(fit)
        coef = coef.permute(0, 2, 1, 3).cpu().numpy()
        intercept = intercept.transpose(1, 2).cpu().numpy()
    return CVFit(oof.cpu().numpy(), None, fit.n_iter.cpu().numpy(), fit.converged.cpu().numpy(),
                 fit.form, coef, intercept)


def concat(parts: list[CVFit], classes) -> CVFit:
    cat = lambda name: (None if getattr(parts[0], name) is None
                        else np.concatenate([getattr(p, name) for p in parts]))
    return CVFit(cat("predictions"), classes, cat("n_iter"), cat("converged"),
                 "+".join(dict.fromkeys(p.form for p in parts)), cat("coef"), cat("intercept"))
