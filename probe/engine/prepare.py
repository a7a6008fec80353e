"""Inputs of a batched probe solve: tensors, fold masks, and the standardisation of each fold.

Every fold is standardised on its TRAIN rows only, as ``StandardScaler`` in a pipeline does.
Features are first standardised once over all rows (a per-feature affine map, which changes
nothing that the per-fold standardisation produces) so that float32 arithmetic is well scaled
even with "massive activation" features; fold means and scales are then kept in those units.

One zero-variance rule serves the engine and the scikit-learn estimators of
:mod:`probe.probes`: :func:`feature_scale`, scikit-learn's own (a feature whose variance is
within float64 rounding of zero gets scale 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probe.stats import ProbeError

FoldList = Sequence[tuple[np.ndarray, np.ndarray]]

#: Rows per block when moments are accumulated (bounds temporaries for big n x d).
_ROW_BLOCK = 8192
#: Torch threads of a CPU solve (None: leave torch's setting). See :func:`solver_threads`.
CPU_THREADS: int | None = 1


def copy_tensor(X, device: str | torch.device, dtype: torch.dtype = torch.float32
               ) -> Float[Tensor, "S n d"]:
    """A float32 (or ``dtype``) copy of X on ``device`` (solves standardise it in place)."""
    fresh = False
    if not isinstance(X, Tensor):
        X = np.asarray(X)
        fresh = not X.flags.writeable  # torch cannot wrap read-only memory: copy it here
        X = torch.from_numpy(np.array(X) if fresh else X)
    if X.ndim != 3:
        raise ProbeError(f"X must have shape [sites, samples, features], got {tuple(X.shape)}")
    return X.to(device=device, dtype=dtype, copy=not fresh)


def fold_masks(folds: FoldList, n: int, device) -> tuple[Bool[Tensor, "F n"], Bool[Tensor, "F n"]]:
    """Boolean train and test masks; a row may not be in both parts of one fold."""
    train = torch.zeros(len(folds), n, dtype=torch.bool)
    test = torch.zeros_like(train)
    for f, (tr, te) in enumerate(folds):
        train[f, torch.as_tensor(np.asarray(tr), dtype=torch.long)] = True
        test[f, torch.as_tensor(np.asarray(te), dtype=torch.long)] = True
    if not len(folds):
        raise ProbeError("no folds given")
    if (train & test).any():
        raise ProbeError("a row is in both the train and the test part of a fold")
    if (test.sum(0) > 1).any():
        raise ProbeError("a row is in the test part of more than one fold")
    if not train.any(1).all():
        raise ProbeError(f"fold {int((~train.any(1)).nonzero()[0])} has no training rows")
    return train.to(device), test.to(device)


def feature_scale(mean: Tensor, var: Tensor, n: Tensor | int) -> Tensor:
    """``StandardScaler``'s scale: the standard deviation, or 1 for a feature whose variance
    is within float64 rounding of zero (scikit-learn's ``_is_constant_feature`` rule).

    Args:
        mean, var: Per-feature mean and (population) variance, float64.
        n: Rows the moments were computed on.
    """
    eps = torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = var.clamp_min(0).sqrt()
    return torch.where(constant | (scale < 10 * eps), torch.ones_like(scale), scale)


@dataclass(frozen=True)
class Standardised:
    """Globally standardised features and each fold's standardisation in those units.

    ``raw = center + spread * Xg``; fold f's standardised features are ``(Xg - mu_f) / sd_f``.

    Attributes:
        Xg: ``[S, n, d]`` float32, zero mean and unit variance over all rows.
        center, spread: ``[S, d]`` float64, the global mean and scale in raw units.
        mu, sd: ``[S, F, d]`` float32, each fold's train mean and scale in ``Xg`` units.
        mean, scale: ``[S, F, d]`` float64, the same in raw units (``StandardScaler``'s
            ``mean_`` and ``scale_``; 0 and 1 without standardisation).
    """

    Xg: Tensor
    center: Tensor
    spread: Tensor
    mu: Tensor
    sd: Tensor
    mean: Tensor
    scale: Tensor

    def select(self, sites: Tensor) -> Standardised:
        return Standardised(*(t[sites] for t in (self.Xg, self.center, self.spread, self.mu,
                                                 self.sd, self.mean, self.scale)))


def standardise(X: Float[Tensor, "S n d"], train: Bool[Tensor, "F n"], *,
                standardize: bool = True) -> Standardised:
    """Standardise X (float32 or float64; in place: X becomes ``Xg``) and compute every
    fold's train moments.

    With ``standardize=False`` the folds' "standardisation" is the identity on raw features
    (mean 0, scale 1), expressed in ``Xg`` units, so one solver serves both.
    """
    S, n, d = X.shape
    ones = torch.ones(1, n, dtype=torch.bool, device=X.device)
    center, var = _moments(X, ones, rel=1e-5, tiny=0.0)
    center, var = center[:, 0].double(), var[:, 0].double()
    if not (torch.isfinite(center).all(-1) & torch.isfinite(var).all(-1)).all():
        bad = (~(torch.isfinite(center).all(-1) & torch.isfinite(var).all(-1))).nonzero()
        raise ProbeError(f"X holds NaN or inf at sites {bad.squeeze(1).tolist()} of this batch; "
                         "probe.evaluate.check_finite names the rows")
    spread = feature_scale(center, var, n)
    X.sub_(center.to(X.dtype)[:, None]).div_(spread.to(X.dtype)[:, None])
    if not standardize:
        shape = (S, len(train), d)
        mean, scale = center.new_zeros(shape), center.new_ones(shape)
        mean_g = (-center / spread)[:, None].expand(shape)
    else:
        mean_g, var_g = _moments(X, train, rel=1e-4, tiny=1e-4)
        mean = center[:, None] + spread[:, None] * mean_g
        scale = feature_scale(mean, var_g * spread[:, None] ** 2,
                              train.sum(1).double()[None, :, None])
    sd = (scale / spread[:, None]).to(X.dtype)
    return Standardised(X, center, spread, mean_g.to(X.dtype).contiguous(), sd, mean, scale)


def _moments(X: Tensor, masks: Tensor, *, rel: float, tiny: float) -> tuple[Tensor, Tensor]:
    """Mean and population variance ``[S, M, d]`` (float64) over the rows of each mask.

    Sums are float32 matrix products over blocks of rows, accumulated in float64. Where the
    variance is small next to the mean (``var < rel * mean^2 + tiny``: nearly constant on a
    mask, where ``E[x^2] - E[x]^2`` cancels), both are recomputed exactly in float64 with a
    second pass, so that a constant feature has variance exactly 0, as in ``StandardScaler``.
    """
    S, n, d = X.shape
    w = masks.to(X.dtype)
    count = masks.sum(1).double()[None, :, None]
    s1 = X.new_zeros(S, len(masks), d, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    for start in range(0, n, _ROW_BLOCK):
        block = X[:, start:start + _ROW_BLOCK]
        wb = w[:, start:start + _ROW_BLOCK]
        s1 += torch.matmul(wb, block).double()
        s2 += torch.matmul(wb, block.square()).double()
    mean = s1 / count
    var = (s2 / count - mean.square()).clamp_min(0)
    suspect = (var < rel * mean.square() + tiny).any(1)  # [S, d]
    for s in suspect.any(1).nonzero().flatten().tolist():
        cols = suspect[s].nonzero().flatten()
        x = X[s][:, cols].double()
        for m, mask in enumerate(masks):
            mean[s, m, cols] = x[mask].mean(0)
            var[s, m, cols] = (x[mask] - mean[s, m, cols]).square().mean(0)
    return mean, var


@contextmanager
def solver_threads(device) -> Iterator[None]:
    """Run a CPU solve on ``CPU_THREADS`` torch threads (1 by default), restoring the setting.

    The solve is a few hundred small tensor operations per iteration; when other processes
    share the CPU, two threads make each one wait for the other. Measured on a 2-core machine
    under load: a reduction over a 30 x 7 x 5 x 577 tensor took 45 ms on 2 threads and 0.07 ms
    on 1, a 30 x 35 x 576 by 576 x 300 batched product 24 ms and 9 ms; the default sweep's
    probes took 138 s on torch's default 2 threads and 5 s on 1. On an idle many-core machine
    with large problems, set ``probe.engine.prepare.CPU_THREADS = None`` to use torch's setting.
    """
    if CPU_THREADS is None or torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def lapack_threads(device: torch.device) -> Iterator[None]:
    """Run LAPACK factorisations on one CPU thread.

    On a small shared CPU, MKL's threaded Cholesky/inverse of a batch of 576 x 576 matrices
    ran 7x slower on 2 threads than on 1 (0.35 s vs 0.05 s), and a threaded batched
    ``linalg.inv`` failed outright (``SLASWP`` parameter errors). Torch parallelises over the
    batch anyway where it helps. No effect on CUDA.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
