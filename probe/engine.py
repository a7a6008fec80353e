"""Batched cross-validated linear probes: every site x fold is one problem of one torch solve.

A probe sweep fits the same linear probe at S sites (layers x activation kinds) on F folds.
Looping scikit-learn over the S*F problems re-reads the data hundreds of times per fit; here all
of them are one batched problem with the objective of
``StandardScaler() + LogisticRegression(C)`` (multinomial, L2, unpenalised intercept) or of
``StandardScaler() + Ridge(alpha)``, with each fold standardised on its TRAIN rows only.

How the logistic solve is fast (2,000 x 31 layers x 576, 4 classes, 5 folds; see
``benchmarks/bench_probes.py``):

* Preconditioned L-BFGS. The preconditioner is Böhning's bound on the multinomial Hessian,
  ``C/2 (I - 11'/K) (x) X'X + I``, inverted once per site (folds share the full-data Gram,
  computed in bfloat16 on CPU: a preconditioner needs ~3 digits), so the solver sees a
  well-conditioned problem whatever the spectrum of the activations: ~20-50 iterations.
* One read of X per forward and one per backward pass: logits are kept and updated
  (``Z += t * X d``), so the line search (a few safeguarded Newton steps on the step length)
  never touches X. Folds share X: their per-fold standardisation is folded into the weights.
* Per-problem convergence masks; converged problems stop moving. The stopping rule is
  sklearn's (max |gradient| of the per-sample objective <= tol), by default 10x tighter.
* ``form="dual"`` (automatic when cheaper: d well above n): the L2 solution lies in the
  row space of each fold's standardised train rows, so each problem is rotated exactly into
  ``r <= n_train`` dimensions where the Böhning preconditioner is diagonal.

Peak working memory on top of the caller's X is :func:`memory_estimate` (about 390 MiB for
31 x 2,000 x 576, 4 classes, 5 folds; ~300 MiB measured); pass a few sites at a time
(``site_batch``) to bound it. Devices: CPU and CUDA (the ridge and dual paths use float64).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 40)
>>> X = rng.normal(size=(2, 120, 8)).astype("float32") + y[None, :, None]
>>> folds = [(np.setdiff1d(np.arange(120), t), t) for t in np.array_split(np.arange(120), 4)]
>>> fit = fit_logistic_cv(X, y, folds, C=0.05)
>>> fit.predictions.shape, bool(fit.converged.all())
((2, 120, 3), True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probe.stats import ProbeError, ProbeWarning

FoldList = Sequence[tuple[np.ndarray, np.ndarray]]
Form = Literal["auto", "primal", "dual"]


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
        form: ``"primal"`` or ``"dual"``.
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


# ----------------------------------------------------------------------------- data layout


def _as_tensor(X, device: str | torch.device) -> Float[Tensor, "S n d"]:
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X)
    if X.ndim != 3:
        raise ProbeError(f"X must have shape [sites, samples, features], got {tuple(X.shape)}")
    return X.to(device=device, dtype=torch.float32)


def _fold_masks(folds: FoldList, n: int, device) -> tuple[Tensor, Tensor]:
    """Boolean ``[F, n]`` train and test masks; a row may not be in both of one fold."""
    train = torch.zeros(len(folds), n, dtype=torch.bool)
    test = torch.zeros_like(train)
    for f, (tr, te) in enumerate(folds):
        train[f, torch.as_tensor(np.asarray(tr), dtype=torch.long)] = True
        test[f, torch.as_tensor(np.asarray(te), dtype=torch.long)] = True
    if (train & test).any():
        raise ProbeError("a row is in both the train and the test part of a fold")
    if (test.sum(0) > 1).any():
        raise ProbeError("a row is in the test part of more than one fold")
    return train.to(device), test.to(device)


def _standardise(X: Tensor, train: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Globally standardised float32 copy of X, and each fold's train mean and scale in
    those units (``[S, F, d]``, from float64 moments as in ``StandardScaler``).

    A per-feature affine map does not change what per-fold standardisation produces, so the
    global step only improves float32 conditioning (huge "massive activation" features).
    Zero-variance features get scale 1, as in ``StandardScaler``.
    """
    S, n, d = X.shape
    weights = torch.cat([train.new_ones(1, n), train]).double()
    weights /= weights.sum(1, keepdim=True)  # row 0: all rows; rows 1..F: each fold's train
    m1 = X.new_empty(S, len(weights), d, dtype=torch.float64)
    m2, buf = torch.empty_like(m1), X.new_empty(n, d, dtype=torch.float64)
    for s in range(S):  # one reused float64 buffer: no per-site temporaries
        torch.matmul(weights, buf.copy_(X[s]), out=m1[s])
        torch.matmul(weights, buf.square_(), out=m2[s])
    var = (m2 - m1.square()).clamp_min(0)  # [S, F + 1, d]
    bad = ~torch.isfinite(var[:, 0]).all(-1)
    if bad.any():
        raise ProbeError(f"X holds NaN or inf at sites {bad.nonzero().squeeze(1).tolist()} of "
                         "this batch; probe.evaluate.check_finite names the rows")
    std = var[:, :1].sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    Xg = X - m1[:, :1].to(X.dtype)
    Xg /= std.to(X.dtype)
    mu = (m1[:, 1:] - m1[:, :1]) / std
    sd = var[:, 1:].sqrt() / std
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # constant within a fold's train rows
    return Xg, mu.to(X.dtype), sd.to(X.dtype)


# ------------------------------------------------------------------------------- designs
# A design maps weights W [S, K, F, p] and biases b [S, K, F] to logits [S, K, F, n], back,
# and applies the inverse Böhning bound to a weight gradient that is centred over classes.


def _bound(Xg: Tensor, dtype: torch.dtype, scale: float) -> Tensor:
    """``scale/n * X'X + I`` per site, the Gram accumulated in ``dtype`` (float32 out)."""
    n = Xg.shape[1]
    G = torch.stack([(Xs.T @ Xs).float() for Xs in Xg.to(dtype)]).mul_(scale / n)
    G.diagonal(dim1=1, dim2=2).add_(1.0)
    return G


class _Primal:
    """Shared X for all folds; fold standardisation is folded into the weights."""

    def __init__(self, Xg: Tensor, mu: Tensor, sd: Tensor, scale: float):
        self.X, self.mu, self.sd = Xg, mu[:, None], sd[:, None]  # [S, 1, F, d]
        n, d = Xg.shape[1:]
        low = torch.bfloat16 if Xg.device.type == "cpu" else Xg.dtype  # a bound needs ~3 digits
        L, info = torch.linalg.cholesky_ex(_bound(Xg, low, scale))
        if (info != 0).any():  # bfloat16 rounding broke positive-definiteness: redo in float32
            bad = (info != 0).nonzero().squeeze(1)
            L[bad] = torch.linalg.cholesky(_bound(Xg[bad], torch.float32, scale))
        self.P_inv = torch.cholesky_inverse(L)
        self.p = d

    def standardised_coef(self, W: Tensor) -> Tensor:
        return W

    def forward(self, W: Tensor, b: Tensor) -> Tensor:
        S, K, F, d = W.shape
        Wr = W / self.sd
        br = b - (Wr * self.mu).sum(-1)
        Z = torch.bmm(Wr.reshape(S, K * F, d), self.X.mT)
        return Z.view(S, K, F, -1).add_(br[..., None])

    def backward(self, R: Tensor) -> tuple[Tensor, Tensor]:
        S, K, F, n = R.shape
        Rs = R.sum(-1)
        G = torch.bmm(R.reshape(S, K * F, n), self.X).view(S, K, F, -1)
        return (G - self.mu * Rs[..., None]) / self.sd, Rs

    def precondition(self, gW: Tensor, C: float) -> Tensor:
        S, K, F, d = gW.shape
        return torch.bmm(gW.reshape(S, K * F, d), self.P_inv).view(S, K, F, d)


class _Dual:
    """Each fold rotated exactly onto the row space of its standardised train rows."""

    def __init__(self, Xg: Tensor, mu: Tensor, sd: Tensor, train: Tensor, eps: float = 1e-10):
        S, n, _ = Xg.shape
        F = train.shape[0]
        r = int(train.sum(1).max())
        self.Xg, self.mu, self.sd, self.train = Xg, mu, sd, train
        self.Phi = Xg.new_zeros(S, F, n, r)
        self.lam = Xg.new_zeros(S, F, r)
        self.Q = Xg.new_zeros(S, F, r, r)
        for s in range(S):
            for f in range(F):  # float64: directions near the rank cut must not amplify noise
                Xs = (Xg[s].double() - mu[s, f].double()) / sd[s, f].double()
                Xc = Xs[train[f]]
                lam, U = torch.linalg.eigh(Xc @ Xc.T)
                keep = lam > eps * lam[-1].clamp_min(1e-300)
                Q = U[:, keep] / lam[keep].sqrt()  # Xc' Q is an orthonormal basis
                k = len(Q.T)
                self.Phi[s, f, :, :k] = (Xs @ Xc.T @ Q).to(Xg.dtype)
                self.lam[s, f, :k] = lam[keep].to(Xg.dtype)
                self.Q[s, f, : len(Q), :k] = Q.to(Xg.dtype)
        self.p = r

    def standardised_coef(self, W: Tensor) -> Tensor:
        """Weights on the standardised features: ``Xc' Q W`` per fold, as [S, K, F, d]."""
        S, K, F, _ = W.shape
        out = W.new_zeros(S, K, F, self.Xg.shape[-1])
        for s in range(S):
            for f in range(F):
                Xc = ((self.Xg[s] - self.mu[s, f]) / self.sd[s, f])[self.train[f]]
                out[s, :, f] = (Xc.T @ (self.Q[s, f, : len(Xc)] @ W[s, :, f].T)).T
        return out

    def forward(self, W: Tensor, b: Tensor) -> Tensor:
        S, K, F, r = W.shape
        Z = torch.bmm(W.transpose(1, 2).reshape(S * F, K, r), self.Phi.view(S * F, -1, r).mT)
        return Z.view(S, F, K, -1).transpose(1, 2).add(b[..., None])

    def backward(self, R: Tensor) -> tuple[Tensor, Tensor]:
        S, K, F, n = R.shape
        G = torch.bmm(R.transpose(1, 2).reshape(S * F, K, n), self.Phi.view(S * F, n, -1))
        return G.view(S, F, K, -1).transpose(1, 2), R.sum(-1)

    def precondition(self, gW: Tensor, C: float) -> Tensor:
        return gW / (0.5 * C * self.lam[:, None] + 1.0)


def memory_estimate(S: int, n: int, d: int, F: int, K: int, form: str = "primal") -> int:
    """Peak bytes the logistic solve holds for S sites (float32): a standardised copy of X
    (plus a bfloat16 one while the primal preconditioner is built), the d x d preconditioners
    (primal) or per-fold rotations (dual), logits and L-BFGS history."""
    r = n - n // F  # training rows per fold
    design = n * d // 2 + 3 * d * d if form == "primal" else F * (n * r + r * r)
    p = d if form == "primal" else r
    return 4 * S * (n * d + design + 8 * K * F * n + 25 * K * F * (p + 1))


def _dual_is_cheaper(n: int, d: int, n_train: int, F: int, K: int, iters: int = 30) -> bool:
    """Compare estimated flops per site: primal pays a d x d Gram, inverse and product per
    iteration; dual pays F kernels and eigendecompositions (weighted 10x: slow on any device)."""
    primal = n * d * d + d**3 + iters * K * F * (2 * n * d + d * d)
    dual = F * (n_train * n * d + 10 * n_train**3) + iters * K * F * 2 * n * n_train
    return dual < primal


# -------------------------------------------------------------------------------- solver
# theta [S, K, F, p + 1] holds weights and (last column) the intercept of every problem;
# per-problem reductions sum over classes and features, giving [S, F].


@dataclass
class _Softmax:
    """Per-problem objective ``C * sum_train CE + ||W||^2 / 2`` over logits [S, K, F, n]."""

    Y: Tensor  # [1, K, 1, n] one-hot
    mask: Tensor  # [1, 1, F, n] train rows
    C: float
    n_train: Tensor  # [1, F]

    def residual(self, Z: Tensor) -> Tensor:
        return self.C * (torch.softmax(Z, 1) - self.Y) * self.mask

    def step_length(self, Z, Zd, W, dW, slope0, steps: int = 2) -> Tensor:
        """Safeguarded Newton steps on the step length from t = 1, from cached logits only."""
        t = torch.ones_like(slope0)
        lo, hi = torch.zeros_like(t), torch.full_like(t, float("inf"))
        yz, Zd2 = (self.Y * Zd).sum(1), Zd * Zd
        wd, dd = _dot(W, dW), _dot(dW, dW)
        for _ in range(steps):
            p = torch.softmax(Z + t[:, None, :, None] * Zd, 1)
            pz = (p * Zd).sum(1)
            m = self.mask[:, 0]
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


def _gradient(design, obj: _Softmax, Z: Tensor, theta: Tensor) -> Tensor:
    gW, gb = design.backward(obj.residual(Z))
    return torch.cat([gW + _split(theta)[0], gb[..., None]], -1)


def _precondition(design, obj: _Softmax, g: Tensor) -> Tensor:
    """Inverse Böhning bound; it is the identity on the class-mean direction of the weights."""
    gW, gb = _split(g)
    mean = gW.mean(1, keepdim=True)
    zW = design.precondition(gW - mean, obj.C) + mean
    zb = gb / (0.5 * obj.C * obj.n_train[:, None])
    return torch.cat([zW, zb[..., None]], -1)


def _lbfgs(design, obj: _Softmax, shape, *, tol: float, max_iter: int, history: int = 5):
    """Minimise every problem at once. Returns theta, iterations [S, F], converged [S, F].

    Preconditioned L-BFGS that keeps ``P^-1 g`` and ``P^-1 y`` so that the two-loop recursion
    and the scaling ``gamma = s'y / y'P^-1 y`` need one preconditioner product per iteration.
    """
    S, K, F, p = shape
    theta = obj.Y.new_zeros(S, K, F, p + 1)
    Z = design.forward(*_split(theta))
    scale = obj.C * obj.n_train  # criterion on the per-sample objective, as in sklearn
    g = _gradient(design, obj, Z, theta)
    Pg = _precondition(design, obj, g)
    gamma, hist = torch.ones_like(scale.expand(S, F)), []
    active = g.abs().amax((1, 3)) / scale > tol
    n_iter = torch.zeros(S, F, dtype=torch.long, device=Z.device)
    for it in range(1, max_iter + 1):
        if not active.any():
            break
        direction = -_two_loop(g, Pg, hist, gamma) * active[:, None, :, None]
        Zd = design.forward(*_split(direction))
        if it % 25 == 0:  # refresh the cached logits against float32 drift
            Z = design.forward(*_split(theta))
        t = obj.step_length(Z, Zd, _split(theta)[0], _split(direction)[0], _dot(g, direction))
        step = t[:, None, :, None] * direction
        theta, Z = theta + step, Z + t[:, None, :, None] * Zd
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
        n_iter += active.long()
        active &= (g.abs().amax((1, 3)) / scale > tol) & (t > 0)
    return theta, n_iter, g.abs().amax((1, 3)) / scale <= tol


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


# ---------------------------------------------------------------------------- public API


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
) -> CVFit:
    """Cross-validated ``StandardScaler + LogisticRegression(C)`` at every site at once.

    Args:
        X: Pooled activations, one ``[n, d]`` matrix per site (numpy or torch, any float dtype).
        y: n class labels (strings or ints); every class must be in every fold's train rows.
        folds: ``(train_idx, test_idx)`` pairs, e.g. from ``probe.stats.group_stratified_folds``.
        C: Inverse L2 strength, exactly as in scikit-learn (binary problems are solved as a
            two-class softmax with ``C/2``, which is the same model as sklearn's binary fit).
        tol: Stop a problem when ``max|grad| / (C * n_train) <= tol``, sklearn's criterion.
        max_iter: Iteration cap; problems that hit it are reported in ``converged`` and warned.
        device: Torch device for the solve ("cpu", "cuda", ...).
        form: ``"primal"``, ``"dual"`` (row-space rotation, for n < d) or ``"auto"``.
        site_batch: Solve this many sites at a time to bound memory (None: all at once).
        return_coef: Also return per-fold weights and intercepts (standardised features).

    Returns:
        A :class:`CVFit` with ``[S, n, K]`` out-of-fold class probabilities.
    """
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise ProbeError(f"need at least 2 classes to fit a classifier, got {classes.tolist()}")
    train, test = _fold_masks(folds, len(codes), device)
    _check_rows(X, len(codes))
    Y = torch.nn.functional.one_hot(torch.as_tensor(codes), len(classes)).to(device)
    missing = (Y.T.float() @ train.T.float()) == 0  # [K, F]
    if missing.any():
        k, f = map(int, missing.nonzero()[0])
        raise ProbeError(f"class {classes.tolist()[k]!r} has no training rows in fold {f}; "
                         "use probe.stats.group_stratified_folds or drop the class")
    obj = _Softmax(Y=Y.T[None, :, None].float(), mask=train[None, None].float(),
                   C=C / 2 if len(classes) == 2 else C, n_train=train.sum(1)[None].float())
    parts = [_logistic_batch(Xb, obj, train, test, device, form, tol, max_iter, return_coef)
             for Xb in _batches(X, site_batch)]
    fit = _concat(parts, classes)
    if not fit.converged.all():
        bad = np.argwhere(~fit.converged)
        warnings.warn(f"{len(bad)} site x fold problems did not reach tol={tol} in {max_iter} "
                      f"iterations (first: site {bad[0][0]}, fold {bad[0][1]}); raise max_iter",
                      ProbeWarning, stacklevel=2)
    return fit


def _logistic_batch(X, obj: _Softmax, train, test, device, form, tol, max_iter, return_coef):
    Xg, mu, sd = _standardise(_as_tensor(X, device), train)
    (S, n, d), F, K = Xg.shape, train.shape[0], obj.Y.shape[1]
    n_train = int(train.sum(1).max())
    if form == "dual" or (form == "auto" and _dual_is_cheaper(n, d, n_train, F, K)):
        design, name = _Dual(Xg, mu, sd, train), "dual"
    else:
        design, name = _Primal(Xg, mu, sd, 0.5 * obj.C * float(obj.n_train.mean())), "primal"
    theta, n_iter, converged = _lbfgs(design, obj, (S, K, F, design.p), tol=tol,
                                      max_iter=max_iter)
    W, b = _split(theta)
    proba = torch.softmax(design.forward(W, b), 1)  # [S, K, F, n]
    oof = torch.einsum("skfn,fn->snk", proba, test.to(proba.dtype))
    oof[:, ~test.any(0)] = float("nan")
    coef = intercept = None
    if return_coef:
        coef = design.standardised_coef(W).permute(0, 2, 1, 3).cpu().numpy()
        intercept = (b - b.mean(1, keepdim=True)).transpose(1, 2).cpu().numpy()
    return CVFit(oof.cpu().numpy(), None, n_iter.cpu().numpy(), converged.cpu().numpy(), name,
                 coef, intercept)


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
        site_batch: Solve this many sites at a time to bound memory.
        return_coef: Also return per-fold weights ``[S, F, T, d]`` on standardised features.

    Returns:
        A :class:`CVFit` with ``[S, n, T]`` out-of-fold predictions.
    """
    Y = np.asarray(y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if not np.isfinite(Y).all():
        raise ProbeError(f"{int((~np.isfinite(Y)).any(1).sum())} targets are NaN or inf")
    train, test = _fold_masks(folds, len(Y), device)
    _check_rows(X, len(Y))
    Yt = torch.as_tensor(Y, device=device)
    parts = [_ridge_batch(Xb, Yt, train, test, device, alpha, form, return_coef)
             for Xb in _batches(X, site_batch)]
    return _concat(parts, None)


def _ridge_batch(X, Y, train, test, device, alpha, form, return_coef):
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X)
    Xg, mu, sd = _standardise(X.to(device=device, dtype=torch.float64), train)
    (S, n, d), F = Xg.shape, len(train)
    pred = Xg.new_full((S, n, Y.shape[1]), float("nan"))
    coef = Xg.new_zeros(S, F, Y.shape[1], d)
    intercept = Xg.new_zeros(S, F, Y.shape[1])
    dual = form == "dual" or (form == "auto" and int(train.sum(1).max()) < d)
    for f in range(F):
        Xc = (Xg[:, train[f]] - mu[:, f, None]) / sd[:, f, None]  # [S, n_f, d]
        y_mean = Y[train[f]].mean(0)
        yc = (Y[train[f]] - y_mean).expand(S, -1, -1)
        if dual:
            Kf = Xc @ Xc.mT
            Kf.diagonal(dim1=1, dim2=2).add_(alpha)
            w = Xc.mT @ torch.cholesky_solve(yc, torch.linalg.cholesky(Kf))
        else:
            G = Xc.mT @ Xc
            G.diagonal(dim1=1, dim2=2).add_(alpha)
            w = torch.cholesky_solve(Xc.mT @ yc, torch.linalg.cholesky(G))
        Xte = (Xg[:, test[f]] - mu[:, f, None]) / sd[:, f, None]
        pred[:, test[f]] = Xte @ w + y_mean
        coef[:, f], intercept[:, f] = w.mT, y_mean
    out = lambda t: t.cpu().numpy() if return_coef else None
    return CVFit(pred.cpu().numpy(), None, np.zeros((S, F), int), np.ones((S, F), bool),
                 "dual" if dual else "primal", out(coef), out(intercept))


def _check_rows(X, n: int) -> None:
    if len(X.shape) != 3:
        raise ProbeError(f"X must have shape [sites, samples, features], got {tuple(X.shape)}")
    if X.shape[1] != n:
        raise ProbeError(f"X has {X.shape[1]} samples per site but y has {n}")


def _batches(X, site_batch: int | None):
    step = site_batch or X.shape[0]
    return [X[i : i + step] for i in range(0, X.shape[0], step)]


def _concat(parts: list[CVFit], classes) -> CVFit:
    cat = lambda name: (None if getattr(parts[0], name) is None
                        else np.concatenate([getattr(p, name) for p in parts]))
    return CVFit(cat("predictions"), classes, cat("n_iter"), cat("converged"), parts[0].form,
                 cat("coef"), cat("intercept"))
