"""Preconditioners of the primal form: ``(c * X'X + I)^-1`` for each site, built by shape.

``X`` is a site's standardised features and ``c = C/K`` times the train rows' share of n, so
the matrix is the multinomial Hessian at zero weights. Three constructions, chosen by cost
(:func:`choose`):

* ``gram``: the d x d Gram matrix, one Cholesky factorisation and its inverse (float32: a
  bfloat16 Gram, 5x faster on CPUs with AVX512-BF16, cost 40% more iterations at n=10,000).
  Best when d is small next to n.
* ``kernel``: the n x n kernel ``X X'`` and its eigendecomposition give the exact row space of
  X (``X = U sqrt(lam) V'``), and ``V diag(1/(c lam + 1)) V' + (I - V V')`` exactly. Best when n
  is small next to d.
* ``sketch``: a randomised range finder (one power iteration) gives the top ``r`` eigenpairs
  of ``X'X``; the rest of the spectrum is treated as one eigenvalue, the largest one left out.
  For n and d both large, where neither of the others is affordable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from probe.engine.prepare import lapack_threads

Kind = Literal["gram", "kernel", "sketch"]
SKETCH_RANK = 256


class Preconditioner(Protocol):
    def apply(self, g: Tensor) -> Tensor: ...  # [S, M, d] -> [S, M, d]

    def select(self, sites: Tensor) -> Preconditioner: ...


@dataclass(frozen=True)
class Dense:
    """An explicit inverse ``[S, d, d]``."""

    P_inv: Tensor

    def apply(self, g: Tensor) -> Tensor:
        return torch.bmm(g, self.P_inv)

    def select(self, sites: Tensor) -> Dense:
        return Dense(self.P_inv[sites])


@dataclass(frozen=True)
class LowRank:
    """``tail * I + V diag(shrink) V'``, V ``[S, d, r]`` orthonormal columns (or zeros)."""

    V: Tensor
    shrink: Tensor  # [S, r]: 1 / (c lam + 1) - tail
    tail: Tensor  # [S]

    def apply(self, g: Tensor) -> Tensor:
        low = torch.bmm(torch.bmm(g, self.V) * self.shrink[:, None], self.V.mT)
        return low.add_(g * self.tail[:, None, None])

    def select(self, sites: Tensor) -> LowRank:
        return LowRank(self.V[sites], self.shrink[sites], self.tail[sites])


def build(kind: Kind, X: Tensor, c: float) -> Preconditioner:
    """The preconditioner ``(c X'X + I)^-1`` of every site of ``X [S, n, d]``."""
    return {"gram": gram, "kernel": kernel, "sketch": sketch}[kind](X, c)


def gram(X: Tensor, c: float) -> Dense:
    G = torch.stack([Xs.T @ Xs for Xs in X]).mul_(c)  # one site at a time: no n x d temporaries
    G.diagonal(dim1=1, dim2=2).add_(1.0)
    with lapack_threads(X.device):
        return Dense(torch.cholesky_inverse(torch.linalg.cholesky(G)))


def kernel(X: Tensor, c: float, rtol: float = 1e-6) -> LowRank:
    S, n, d = X.shape
    with lapack_threads(X.device):
        lam, U = torch.linalg.eigh(torch.bmm(X, X.mT))
    keep = lam > rtol * lam[:, -1:].clamp_min(1e-30)
    lam = torch.where(keep, lam, torch.ones_like(lam))
    V = torch.bmm(X.mT, U) / lam.sqrt()[:, None] * keep[:, None]
    shrink = torch.where(keep, 1 / (c * lam + 1) - 1, torch.zeros_like(lam))
    return LowRank(V, shrink, torch.ones(S, dtype=X.dtype, device=X.device))


def sketch(X: Tensor, c: float, rank: int = SKETCH_RANK, oversample: int = 16) -> LowRank:
    S, n, d = X.shape
    k = min(rank + oversample, n, d)
    gen = torch.Generator(device=X.device).manual_seed(0)
    Q = torch.randn(S, d, k, generator=gen, device=X.device, dtype=X.dtype)
    for _ in range(2):  # range finder + one power iteration
        with lapack_threads(X.device):
            Q = torch.linalg.qr(torch.bmm(X.mT, torch.bmm(X, Q))).Q
    B = torch.bmm(X, Q)  # [S, n, k]
    with lapack_threads(X.device):
        lam, U = torch.linalg.eigh(torch.bmm(B.mT, B))  # ascending
    lam, U = lam.flip(-1).clamp_min(0), U.flip(-1)
    r = min(rank, k - 1)
    tail = 1 / (c * lam[:, r] + 1)
    V = torch.bmm(Q, U[..., :r])
    return LowRank(V, 1 / (c * lam[:, :r] + 1) - tail[:, None], tail)


def choose(n: int, d: int, n_train: int, F: int, K: int, *,
           primal_only: bool = False) -> tuple[str, Kind | None]:
    """``("dual", None)`` or ``("primal", kind)``, whichever is estimated cheapest per site.

    The estimate counts flops: iterations taken as 30 (45 from 9 classes up); factorisations at
    the flops of their matrix products (eigendecompositions 8 n^3); the dual's float64 setup
    twice and its small per-fold products (K rows each) three times as slow as the primal's
    wide ones. Calibrated on a 2-core AMD EPYC (``benchmarks/bench_probes.py``); a wrong
    choice costs time, never accuracy.
    """
    its = 30 if K <= 8 else 45
    KF = K * F
    passes = 4 * n * d * KF  # forward and backward, all folds
    costs = {
        ("primal", "gram"): n * d * d + 1.5 * d**3 + its * (passes + 2 * d * d * KF),
        ("primal", "kernel"): 3 * n * n * d + 8 * n**3 + its * (passes + 4 * n * d * KF),
        ("dual", None): F * (4 * n * d + 4 * n * n_train * d + 3 * n_train**3)
        + 3 * its * (4 * n * n_train * KF + 2 * n_train**2 * KF),
    }
    r = SKETCH_RANK + 16
    if 2 * r <= min(n, d):  # else the kernel or the Gram is as cheap and exact
        costs[("primal", "sketch")] = 8 * n * d * r + its * (passes + 4 * r * d * KF)
    if primal_only:
        del costs[("dual", None)]
    return min(costs, key=costs.get)
