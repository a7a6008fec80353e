"""Cross-validated ridge probes (continuous targets) at every site, in closed form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probe.engine.logistic import CVFit, Form, check_inputs, concat
from probe.engine.prepare import (
    FoldList,
    copy_tensor,
    fold_masks,
    lapack_threads,
    solver_threads,
    standardise,
)
from probe.stats import ProbeError


def targets(y) -> np.ndarray:
    """``[n, T]`` float64 targets (a copy), checked finite."""
    Y = np.array(y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if not np.isfinite(Y).all():
        raise ProbeError(f"{int((~np.isfinite(Y)).any(1).sum())} targets are NaN or inf")
    return Y


def fit_ridge_cv(
    X: Float[np.ndarray, "S n d"] | Float[Tensor, "S n d"],
    y: Sequence | np.ndarray,
    folds: FoldList,
    *,
    alpha: float = 10.0,
    device: str | torch.device = "cpu",
    form: Form = "auto",
    site_batch: int | None = None,
    return_coef: bool = False,
) -> CVFit:
    """Cross-validated ``StandardScaler + Ridge(alpha)`` at every site, in closed form.

    Solved in float64 (``(Xc'Xc + alpha I) w = Xc'y`` in primal form, or through the
    ``n_train x n_train`` kernel in dual form), so it matches scikit-learn to ~1e-8.

    Args:
        X: Pooled activations ``[S, n, d]``.
        y: n targets, or ``[n, T]`` for T targets at once (e.g. EmoBank V, A, D).
        folds: ``(train_idx, test_idx)`` pairs.
        alpha: L2 strength, exactly as in ``sklearn.linear_model.Ridge``.
        device: Torch device.
        form: ``"primal"``, ``"dual"`` or ``"auto"`` (dual when a fold has fewer rows than d).
        site_batch: Solve this many sites at a time to bound memory (None: all).
        return_coef: Also return per-fold weights ``[S, F, T, d]`` on standardised features.

    Returns:
        A :class:`CVFit` with ``[S, n, T]`` out-of-fold predictions.
    """
    Y = targets(y)
    check_inputs(X, len(Y), None)
    train, test = fold_masks(folds, len(Y), device)
    Yt = torch.as_tensor(Y, device=device)
    step = site_batch or X.shape[0]
    with solver_threads(device):
        parts = [ridge_batch(X[i:i + step], Yt, train, test, device=device, alpha=alpha,
                             form=form, return_coef=return_coef)
                 for i in range(0, X.shape[0], step)]
    return concat(parts, None)


def ridge_batch(X, Y: Tensor, train: Tensor, test: Tensor, *, device, alpha: float, form: Form,
                return_coef: bool, standardize: bool = True, std_out: list | None = None) -> CVFit:
    """Closed-form ridge for one batch of sites; ``std_out`` receives the standardisation."""
    std = standardise(copy_tensor(X, device, torch.float64), train, standardize=standardize)
    if std_out is not None:
        std_out.append(std)
    (S, n, d), F = std.Xg.shape, len(train)
    pred = std.Xg.new_full((S, n, Y.shape[1]), float("nan"))
    coef = std.Xg.new_zeros(S, F, Y.shape[1], d)
    intercept = std.Xg.new_zeros(S, F, Y.shape[1])
    dual = form == "dual" or (form == "auto" and int(train.sum(1).max()) < d)
    for f in range(F):
        Xc = (std.Xg[:, train[f]] - std.mu[:, f, None]) / std.sd[:, f, None]  # [S, n_f, d]
        y_mean = Y[train[f]].mean(0)
        yc = (Y[train[f]] - y_mean).expand(S, -1, -1)
        with lapack_threads(device):
            if dual:
                Kf = Xc @ Xc.mT
                Kf.diagonal(dim1=1, dim2=2).add_(alpha)
                w = Xc.mT @ torch.cholesky_solve(yc, torch.linalg.cholesky(Kf))
            else:
                G = Xc.mT @ Xc
                G.diagonal(dim1=1, dim2=2).add_(alpha)
                w = torch.cholesky_solve(Xc.mT @ yc, torch.linalg.cholesky(G))
        Xte = (std.Xg[:, test[f]] - std.mu[:, f, None]) / std.sd[:, f, None]
        pred[:, test[f]] = Xte @ w + y_mean
        coef[:, f], intercept[:, f] = w.mT, y_mean
    out = lambda t: t.cpu().numpy() if return_coef else None
    return CVFit(pred.cpu().numpy(), None, np.zeros((S, F), int), np.ones((S, F), bool),
                 "dual" if dual else "primal", out(coef), out(intercept))
