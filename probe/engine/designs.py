"""Designs: how the weights of S sites x F folds map to logits, and how to precondition them.

A design holds the data of a batch of sites and implements, for weights ``W [S, K, F, p]`` and
intercepts ``b [S, K, F]``:

* ``forward(W, b)``: logits ``[S, K, F, n]`` of every row under every fold's weights;
* ``backward(R)``: the adjoint, ``(dW [S, K, F, p], db [S, K, F])``;
* ``precondition(gW)``: an approximate inverse Hessian applied to class-centred gradients,
  ``(c * Phi' Phi + I)^-1`` with ``c = C / K``: the exact Hessian of the multinomial loss at
  zero weights (all probabilities 1/K), which the solver starts from;
* ``select(sites)`` (the design for a subset of sites), ``coef(W)`` and ``intercept(coef, b)``
  (weights and intercepts on each fold's standardised features).

:class:`Primal` (``p = d``) reads the shared standardised X once per pass for all folds and
folds each fold's standardisation into the weights. Its preconditioner is chosen by shape
(:mod:`probe.engine.precondition`). :class:`Dual` (``p = n_train``) rotates each fold onto
the row space of its own standardised train rows (exact: the L2 solution lies there), which is
far cheaper when a fold has fewer rows than features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probe.engine.precondition import Preconditioner
from probe.engine.prepare import Standardised, lapack_threads


class Primal:
    """Weights on each fold's standardised features, data shared by all folds."""

    def __init__(self, std: Standardised, pc: Preconditioner):
        self.std, self.pc = std, pc
        self.p = std.Xg.shape[-1]

    def select(self, sites: Tensor) -> Primal:
        return Primal(self.std.select(sites), self.pc.select(sites))

    def forward(self, W: Tensor, b: Tensor) -> Tensor:
        S, K, F, d = W.shape
        Wr = W / self.std.sd[:, None]
        br = b - (Wr * self.std.mu[:, None]).sum(-1)
        Z = torch.bmm(Wr.reshape(S, K * F, d), self.std.Xg.mT)
        return Z.view(S, K, F, -1).add_(br[..., None])

    def backward(self, R: Tensor) -> tuple[Tensor, Tensor]:
        S, K, F, n = R.shape
        Rs = R.sum(-1)
        G = torch.bmm(R.reshape(S, K * F, n), self.std.Xg).view(S, K, F, -1)
        return (G - self.std.mu[:, None] * Rs[..., None]) / self.std.sd[:, None], Rs

    def precondition(self, gW: Tensor) -> Tensor:
        S, K, F, d = gW.shape
        return self.pc.apply(gW.reshape(S, K * F, d)).view(S, K, F, d)

    def coef(self, W: Tensor) -> Tensor:
        return W

    def intercept(self, coef: Tensor, b: Tensor) -> Tensor:
        return b


class Dual:
    """Each fold rotated onto the row space of its standardised train rows.

    With ``Z = Xg / sd_f`` fold f's scaled features (not centred: the free intercept absorbs the
    centring, and a centred kernel is singular), ``K_f = Z_t Z_t'`` the kernel of its train rows
    and ``L L'`` its Cholesky factorisation, weights ``W = Z_t' L^-T w`` give logits ``Phi w``
    with ``Phi = Z Z_t' L^-T`` and penalty ``|W|^2 = |w|^2``: an exact reparametrisation of the
    problem in ``n_train`` dimensions. Kernels are computed in float32 and factorised in float64;
    a kernel near singular (rows repeat or outnumber features) is recomputed in float64 and, if
    singular, gets a jitter of 1e-12 of its mean diagonal.
    """

    def __init__(self, std: Standardised, train: Tensor, curvature: float):
        S, n, _ = std.Xg.shape
        F, r = len(train), int(train.sum(1).max())
        self.std, self.train, self.p = std, train, r
        self.Phi = std.Xg.new_zeros(S, F, n, r)
        self.L = std.Xg.new_zeros(S, F, r, r, dtype=torch.float64)  # to recover the weights
        self.P_inv = std.Xg.new_zeros(S, F, r, r)
        for f in range(F):
            rows = train[f].nonzero().squeeze(1)
            k = len(rows)
            Kt = _fold_kernel(std, f, rows, torch.float32)  # [S, n, n_t], float64
            with lapack_threads(Kt.device):
                L, ok = _cholesky(Kt[:, rows])
                if not ok.all():  # near-singular in float32 (repeated rows, n_t > d): float64
                    bad = (~ok).nonzero().squeeze(1)
                    Kt[bad] = _fold_kernel(std.select(bad), f, rows, torch.float64)
                    L[bad] = _jittered_cholesky(Kt[bad][:, rows])
                Phi = torch.linalg.solve_triangular(L, Kt.mT, upper=False).mT  # [S, n, k]
                P = curvature * L.mT @ L
                P.diagonal(dim1=1, dim2=2).add_(1.0)
                P_inv = torch.cholesky_inverse(torch.linalg.cholesky(P))
            self.Phi[:, f, :, :k] = Phi.float()
            self.L[:, f, :k, :k] = L
            self.P_inv[:, f, :k, :k] = P_inv.float()

    def select(self, sites: Tensor) -> Dual:
        out = object.__new__(Dual)
        out.std, out.train, out.p = self.std.select(sites), self.train, self.p
        out.Phi, out.L, out.P_inv = self.Phi[sites], self.L[sites], self.P_inv[sites]
        return out

    def forward(self, W: Tensor, b: Tensor) -> Tensor:
        S, K, F, r = W.shape
        Z = torch.bmm(W.transpose(1, 2).reshape(S * F, K, r), self.Phi.view(S * F, -1, r).mT)
        return Z.view(S, F, K, -1).transpose(1, 2).add(b[..., None])

    def backward(self, R: Tensor) -> tuple[Tensor, Tensor]:
        S, K, F, n = R.shape
        G = torch.bmm(R.transpose(1, 2).reshape(S * F, K, n), self.Phi.view(S * F, n, -1))
        return G.view(S, F, K, -1).transpose(1, 2), R.sum(-1)

    def precondition(self, gW: Tensor) -> Tensor:
        S, K, F, r = gW.shape
        out = torch.bmm(gW.transpose(1, 2).reshape(S * F, K, r), self.P_inv.view(S * F, r, r))
        return out.view(S, F, K, r).transpose(1, 2)

    def intercept(self, coef: Tensor, b: Tensor) -> Tensor:
        """The intercept on standardised features: ``b + coef . mu / sd`` (centring)."""
        return b + (coef * (self.std.mu / self.std.sd)[:, None]).sum(-1)

    def coef(self, W: Tensor) -> Tensor:
        """Weights on the standardised features, ``Z_t' L^-T w`` per fold: ``[S, K, F, d]``."""
        S, K, F, _ = W.shape
        out = W.new_zeros(S, K, F, self.std.Xg.shape[-1])
        for f in range(F):
            rows = self.train[f].nonzero().squeeze(1)
            k = len(rows)
            Zt = self.std.Xg[:, rows].double() / self.std.sd[:, f, None].double()
            with lapack_threads(W.device):
                alpha = torch.linalg.solve_triangular(self.L[:, f, :k, :k].mT,
                                                      W[:, :, f, :k].mT.double(), upper=True)
            out[:, :, f] = (Zt.mT @ alpha).mT.to(W.dtype)
        return out


def _fold_kernel(std: Standardised, f: int, rows: Tensor, dtype: torch.dtype) -> Tensor:
    """``Z Z_t'`` (float64) of fold f's scaled, UNcentred features ``Z = Xg / sd``."""
    X = std.Xg.to(dtype)
    return torch.bmm(X * std.sd[:, f, None].to(dtype) ** -2, X[:, rows].mT).double()


def _cholesky(K: Tensor, rtol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Cholesky factors (float64) and whether each is well away from singular (every pivot
    above ``rtol`` of the largest diagonal entry, so float32 rounding of K cannot matter)."""
    L, info = torch.linalg.cholesky_ex(K)
    top = K.diagonal(dim1=1, dim2=2).amax(-1)
    ok = (info == 0) & (L.diagonal(dim1=1, dim2=2).square().amin(-1) > rtol * top)
    return L, ok


def _jittered_cholesky(K: Tensor, start: float = 1e-12) -> Tensor:
    """Cholesky factors of a batch of PSD kernels (float64), adding ``start`` times the mean
    diagonal to those that are singular, and 100x more until it succeeds."""
    scale = K.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    L, info = torch.linalg.cholesky_ex(K)
    jitter = start
    while (info != 0).any():
        bad = (info != 0).nonzero().squeeze(1)
        Kb = K[bad].clone()
        Kb.diagonal(dim1=1, dim2=2).add_((jitter * scale[bad])[:, None])
        L[bad], info[bad] = torch.linalg.cholesky_ex(Kb)
        jitter *= 100
    return L
