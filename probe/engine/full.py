"""Full-data probe fits at every site: the weights a sweep saves, in raw activation space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probe.engine.logistic import (
    check_inputs,
    encode,
    objective,
    site_batches,
    solve,
    standardised_weights,
    warn_unconverged,
)
from probe.engine.prepare import Standardised, solver_threads
from probe.engine.ridge import ridge_batch, targets
from probe.stats import ProbeError


@dataclass(frozen=True, kw_only=True)
class ProbeFit:
    """Probes fitted on all rows at S sites, with weights in RAW activation space.

    ``X[s] @ coef[s].T + intercept[s]`` are the logits (classification) or predictions
    (regression) of site s on raw activations. The direction that raises class k's logit
    relative to the others is ``coef[s, k]``: for a softmax the rows sum to zero, so each
    already contrasts its class with the average class (two classes keep two rows,
    ``coef[s, 1] = -coef[s, 0]``, so both have a direction). It is the gradient of the logit
    with respect to the activation, and can be added to the residual stream as is.

    Attributes:
        coef: ``[S, K, d]`` float32 raw-space weights (K classes, or T regression targets).
        intercept: ``[S, K]`` float32 raw-space intercepts.
        classes: The K class labels in row order, or None for regression.
        mean: ``[S, d]`` float32 mean the probe standardised with (``StandardScaler.mean_``).
        scale: ``[S, d]`` float32 scale it divided by (``StandardScaler.scale_``; 1 for a
            constant feature).
        n_iter: ``[S]`` solver iterations (0 for the closed-form ridge).
        converged: ``[S]`` whether each site met the tolerance.
    """

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray | None
    mean: np.ndarray
    scale: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


def fit_probes(
    X: Float[np.ndarray, "S n d"] | Float[Tensor, "S n d"],
    y: Sequence | np.ndarray,
    *,
    task: Literal["classification", "regression"],
    C: float = 0.05,
    alpha: float = 10.0,
    tol: float = 1e-5,
    max_iter: int = 300,
    device: str | torch.device = "cpu",
    site_batch: int | None = None,
    site_labels: Sequence[str] | None = None,
) -> ProbeFit:
    """``StandardScaler + LogisticRegression(C)`` (or ``+ Ridge(alpha)``) on all rows of every
    site, returned in raw activation space (see :class:`ProbeFit`).

    Args:
        X: ``[S, n, d]`` pooled activations (numpy or torch, any float dtype).
        y: n labels (classification) or n / ``[n, T]`` float targets (regression).
        task: ``"classification"`` (multinomial logistic, L2, unpenalised intercept) or
            ``"regression"`` (ridge, closed form in float64).
        C: Inverse L2 strength of the logistic probe, as in scikit-learn.
        alpha: Ridge L2 strength, as in scikit-learn.
        tol: Logistic solver tolerance (scikit-learn's criterion).
        max_iter: Logistic iteration cap; sites that hit it are warned about by label.
        device: Torch device of the solve.
        site_batch: Sites solved at a time (None: as many as fit in ~2 GiB of working memory).
        site_labels: A name per site for messages, e.g. ``"blocks.14.hook_resid_post (last)"``.

    Returns:
        A :class:`ProbeFit`.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["calm", "fear"], 50)
    >>> X = rng.normal(size=(3, 100, 8)).astype("float32") + 2 * (y == "fear")[None, :, None]
    >>> fit = fit_probes(X, y, task="classification")
    >>> fit.coef.shape, fit.classes.tolist(), bool(fit.converged.all())
    ((3, 2, 8), ['calm', 'fear'], True)
    >>> logits = X[0] @ fit.coef[0].T + fit.intercept[0]
    >>> float((fit.classes[logits.argmax(1)] == y).mean()) > 0.9
    True
    """
    if task not in ("classification", "regression"):
        raise ProbeError(f"task must be 'classification' or 'regression', got {task!r}")
    fit = fit_full(X, y, task=task, C=C, alpha=alpha, tol=tol, max_iter=max_iter, device=device,
                   site_batch=site_batch, site_labels=site_labels)
    warn_unconverged(fit.converged, site_labels, tol, max_iter, "sites")
    return fit


def fit_full(X, y, *, task, C, alpha, tol, max_iter, device, site_batch, site_labels,
             standardize: bool = True, dtype=np.float32) -> ProbeFit:
    """:func:`fit_probes` without the warning; ``standardize=False`` fits raw features and
    ``dtype`` is that of the returned arrays (the ridge is solved in float64)."""
    with solver_threads(device):
        return _fit_full(X, y, task=task, C=C, alpha=alpha, tol=tol, max_iter=max_iter,
                         device=device, site_batch=site_batch, site_labels=site_labels,
                         standardize=standardize, dtype=dtype)


def _fit_full(X, y, *, task, C, alpha, tol, max_iter, device, site_batch, site_labels,
              standardize, dtype) -> ProbeFit:
    if task == "regression":
        Y = targets(y)
        check_inputs(X, len(Y), site_labels)
        train, test = _all_rows(len(Y), device)
        parts = []
        for i in range(0, X.shape[0], site_batch or X.shape[0]):
            stds = []
            cv = ridge_batch(X[i:i + (site_batch or X.shape[0])], torch.as_tensor(Y, device=device),
                             train, test, device=device, alpha=alpha, form="auto",
                             return_coef=True, standardize=standardize, std_out=stds)
            W = torch.as_tensor(cv.coef[:, 0])
            parts.append(_raw(W, torch.as_tensor(cv.intercept[:, 0]), stds[0], None, None))
        return _stack(parts, None, dtype)
    classes, Yh = encode(y, device)
    check_inputs(X, len(Yh), site_labels)
    train, _ = _all_rows(len(Yh), device)
    obj = objective(Yh, train, C, classes)
    parts = []
    for Xb in site_batches(X, site_batch, 1, obj.rows):
        solved = solve(Xb, obj, train, device=device, form="auto", tol=tol, max_iter=max_iter,
                       standardize=standardize)
        W, b = standardised_weights(solved)
        parts.append(_raw(W[:, :, 0], b[:, :, 0], solved.std, solved.n_iter[:, 0],
                          solved.converged[:, 0]))
    return _stack(parts, classes, dtype)


def _all_rows(n: int, device) -> tuple[Tensor, Tensor]:
    if n < 1:
        raise ProbeError("need at least 1 row to fit a probe, got none")
    return (torch.ones(1, n, dtype=torch.bool, device=device),
            torch.zeros(1, n, dtype=torch.bool, device=device))


def _raw(W: Tensor, b: Tensor, std: Standardised, n_iter, converged) -> dict:
    """Standardised-feature weights ``[S, K, d]`` to raw space, in float64."""
    mean, scale = std.mean[:, 0], std.scale[:, 0]  # [S, d]
    coef = W.double().cpu() / scale.cpu()[:, None]
    intercept = b.double().cpu() - (coef * mean.cpu()[:, None]).sum(-1)
    S = len(coef)
    return {"coef": coef, "intercept": intercept, "mean": mean.cpu(), "scale": scale.cpu(),
            "n_iter": torch.zeros(S, dtype=torch.long) if n_iter is None else n_iter.cpu(),
            "converged": torch.ones(S, dtype=torch.bool) if converged is None else converged.cpu()}


def _stack(parts: list[dict], classes, dtype) -> ProbeFit:
    cat = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    return ProbeFit(coef=cat["coef"].astype(dtype), intercept=cat["intercept"].astype(dtype),
                    classes=classes, mean=cat["mean"].astype(dtype),
                    scale=cat["scale"].astype(dtype), n_iter=cat["n_iter"],
                    converged=cat["converged"])
