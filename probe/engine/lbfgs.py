"""Preconditioned L-BFGS over a batch of multinomial problems (sites x folds) at once.

``theta [S, K, F, p + 1]`` holds the weights and (last column) the intercept of every
problem; per-problem reductions sum over classes and features, giving ``[S, F]``. Each
iteration reads the data twice (the search direction's logits, and the gradient at the new
point): logits are cached and updated (``Z += t * X d``), so the line search (safeguarded
Newton steps on the step length) never touches the data. A problem stops when it meets
scikit-learn's criterion (``max |gradient| / (C n_train) <= tol``); a site whose folds have all
stopped leaves the batch, so converged problems cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

HISTORY = 10  # correction pairs from n = 5,000 rows: 10 or more saved 20% of iterations over
#            4-8 at n = 10,000. Below, 3 to 20 gave the same counts (the preconditioner captures
#            the curvature) and each pair costs ~15 small tensor operations per iteration, so 4.
SHORT_HISTORY, LONG_ROWS = 4, 5000


@dataclass(frozen=True)
class Softmax:
    """Per-problem objective ``C * sum_train CE + |W|^2 / 2`` over logits ``[S, K, F, n]``.

    Two classes are solved as scikit-learn does, with ONE row of weights (the logit of the
    second class; the first class's is 0): half the work of a two-row softmax.

    Attributes:
        Y: ``[1, K, 1, n]`` one-hot labels.
        mask: ``[1, 1, F, n]`` train rows of each fold.
        C: Loss weight (scikit-learn's C).
        n_train: ``[1, F]`` train rows per fold.
    """

    Y: Tensor
    mask: Tensor
    C: float
    n_train: Tensor

    @property
    def binary(self) -> bool:
        return self.Y.shape[1] == 2

    @property
    def rows(self) -> int:
        """Rows of weights per problem: K, or 1 for two classes."""
        return 1 if self.binary else self.Y.shape[1]

    @property
    def curvature(self) -> float:
        """Hessian scale of the loss at zero weights per unit of ``x x'``: ``C/K``, or
        ``C/4`` for two classes (``p (1 - p)`` at ``p = 1/2``)."""
        return self.C / 4 if self.binary else self.C / self.Y.shape[1]

    def logits(self, Z: Tensor) -> Tensor:
        """All K logits from the solved rows (a zero row first for two classes)."""
        return torch.cat([torch.zeros_like(Z), Z], 1) if self.binary else Z

    def residual(self, Z: Tensor) -> Tensor:
        R = self.C * (torch.softmax(self.logits(Z), 1) - self.Y) * self.mask
        return R[:, 1:] if self.binary else R

    def step_length(self, Z, Zd, W, dW, slope0, steps: int = 2) -> Tensor:
        """Safeguarded Newton steps on the step length from t = 1, from cached logits only."""
        t = torch.ones_like(slope0)
        lo, hi = torch.zeros_like(t), torch.full_like(t, float("inf"))
        Z, Zd = self.logits(Z), self.logits(Zd)
        yz, Zd2, m = (self.Y * Zd).sum(1), Zd * Zd, self.mask[:, 0]
        wd, dd = _dot(W, dW), _dot(dW, dW)
        for _ in range(steps):
            p = torch.softmax(Z + t[:, None, :, None] * Zd, 1)
            pz = (p * Zd).sum(1)
            slope = self.C * ((pz - yz) * m).sum(-1) + wd + t * dd
            curv = self.C * (((p * Zd2).sum(1) - pz * pz) * m).sum(-1) + dd
            lo, hi = torch.where(slope < 0, t, lo), torch.where(slope < 0, hi, t)
            t_new = t - slope / curv.clamp_min(1e-30)
            bad = ~torch.isfinite(t_new) | (t_new <= lo) | (t_new >= hi)
            t = torch.where(bad, torch.where(torch.isinf(hi), 2 * t, 0.5 * (lo + hi)), t_new)
        return torch.where(slope0 < 0, t, torch.zeros_like(t))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum((1, 3))


def _split(theta: Tensor) -> tuple[Tensor, Tensor]:
    return theta[..., :-1], theta[..., -1]


def _gradient(design, obj: Softmax, Z: Tensor, theta: Tensor) -> Tensor:
    gW, gb = design.backward(obj.residual(Z))
    return torch.cat([gW + _split(theta)[0], gb[..., None]], -1)


def _precondition(design, obj: Softmax, g: Tensor) -> Tensor:
    """The inverse Hessian at zero weights; the identity on the class-mean direction (where
    only the penalty acts)."""
    gW, gb = _split(g)
    if obj.binary:
        zW = design.precondition(gW)
    else:
        mean = gW.mean(1, keepdim=True)
        zW = design.precondition(gW - mean) + mean
    zb = gb / (obj.curvature * obj.n_train[:, None])
    return torch.cat([zW, zb[..., None]], -1)


def _criterion(g: Tensor, obj: Softmax) -> Tensor:
    return g.abs().amax((1, 3)) / (obj.C * obj.n_train)


@dataclass
class Result:
    theta: Tensor  # [S, K, F, p + 1]
    n_iter: Tensor  # [S, F]
    converged: Tensor  # [S, F]


def minimise(design, obj: Softmax, S: int, *, tol: float, max_iter: int) -> Result:
    """Minimise every problem of ``design`` (S sites) from zero weights; ``theta`` has
    ``obj.rows`` rows of weights."""
    K, F, p = obj.rows, obj.mask.shape[2], design.p
    history = HISTORY if obj.mask.shape[-1] >= LONG_ROWS else SHORT_HISTORY
    out = Result(obj.Y.new_zeros(S, K, F, p + 1),
                 torch.zeros(S, F, dtype=torch.long, device=obj.Y.device),
                 torch.zeros(S, F, dtype=torch.bool, device=obj.Y.device))
    live = torch.arange(S, device=obj.Y.device)  # original indices of the batch's sites
    theta = out.theta.clone()
    Z = design.forward(*_split(theta))
    g = _gradient(design, obj, Z, theta)
    Pg = _precondition(design, obj, g)
    gamma, hist = torch.ones(S, F, device=g.device), []
    active = _criterion(g, obj) > tol
    for it in range(1, max_iter + 1):
        done = ~active.any(1)
        if done.any():  # retire finished sites; shrink the batch when it pays
            out.theta[live[done]] = theta[done]
            out.converged[live[done]] = _criterion(g[done], obj) <= tol
            if done.all():
                break
            if done.sum() * 4 >= len(live):
                keep = (~done).nonzero().squeeze(1)
                design, live = design.select(keep), live[keep]
                theta, Z, g, Pg, gamma, active = (t[keep] for t in (theta, Z, g, Pg, gamma, active))
                hist = [tuple(t[keep] for t in h) for h in hist]
        direction = -_two_loop(g, Pg, hist, gamma) * active[:, None, :, None]
        Zd = design.forward(*_split(direction))
        if it % 25 == 0:  # refresh the cached logits against float32 drift
            Z = design.forward(*_split(theta))
        t = obj.step_length(Z, Zd, _split(theta)[0], _split(direction)[0], _dot(g, direction))
        step = t[:, None, :, None] * direction
        theta, Z = theta + step, Z.add_(t[:, None, :, None] * Zd)
        g_new = _gradient(design, obj, Z, theta)
        Pg_new = _precondition(design, obj, g_new)
        y, Py = g_new - g, Pg_new - Pg
        g, Pg = g_new, Pg_new
        sy, yPy = _dot(step, y), _dot(y, Py)
        ok = (sy > 1e-10 * _dot(step, step).sqrt() * _dot(y, y).sqrt()) & (yPy > 0) & active
        gamma = torch.where(ok, sy / yPy.clamp_min(1e-30), gamma)
        keep = ok[:, None, :, None]
        hist = [*hist[1 - history:], (step * keep, y * keep, Py * keep,
                                      torch.where(ok, 1 / sy.clamp_min(1e-30), 0 * sy))]
        out.n_iter[live] += active.long()
        active &= (_criterion(g, obj) > tol) & (t > 0)
    out.theta[live] = theta
    out.converged[live] = _criterion(g, obj) <= tol
    return out


def _two_loop(g: Tensor, Pg: Tensor, hist, gamma: Tensor) -> Tensor:
    """``H g`` for the L-BFGS inverse Hessian with initial matrix ``gamma * P^-1``."""
    q, Pq, alphas = g.clone(), Pg.clone(), []
    for s, y, Py, rho in reversed(hist):
        a = (rho * _dot(s, q))[:, None, :, None]
        q -= a * y
        Pq -= a * Py
        alphas.append(a)
    z = Pq * gamma[:, None, :, None]
    for (s, y, _, rho), a in zip(hist, reversed(alphas)):
        z += (a - (rho * _dot(y, z))[:, None, :, None]) * s
    return z
