"""Direction methods: from labelled pooled rows to one raw direction per emotion.

The arithmetic behind :func:`probe.directions.store_directions` (rows read from an activation
store) and steering's directions (:mod:`steering.directions`, which also makes rows from the
model's own replies): :class:`Rows` and :func:`compute` (``{emotion: [layers, d]}``, not yet
normalised). The methods (named in :data:`STORE_METHODS`):

``mean-diff``          mean of ``e`` rows minus mean of all other rows
``mean-diff-neutral``  mean of ``e`` rows minus mean of the neutral rows
``context-agnostic``   Wang et al. (2025): per context average each emotion's rows and subtract
                       the context's mean over emotions; average over contexts (only contexts
                       holding every emotion); remove the mean over emotions
``pca-diff``           repeng's ``pca_diff``: first principal component of paired differences
``pca-center``         repeng's ``pca_center``: PCA of the pair members centred on their pair mean
``lda``                shrinkage LDA (Ledoit-Wolf): ``Sigma^-1 (mu_e - mean of the other means)``

A new method is one function ``fn(X, y, emotions, neutral, ctx=...) -> [emotions, layers, d]``
added to ``_METHODS`` and its name to :data:`STORE_METHODS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probe.errors import EmoprobeError
from probe.sites import LAYER_KINDS

__all__ = ["STORE_METHODS", "DirectionError", "Rows", "compute", "emotion_list", "site_kind"]

#: Methods computed from labelled rows (an activation store's), by name: a new method joins
#: only when it is named here (each has a function in ``_METHODS``).
STORE_METHODS: tuple[str, ...] = ("mean-diff", "mean-diff-neutral", "context-agnostic",
                                  "pca-diff", "pca-center", "lda")


class DirectionError(EmoprobeError, ValueError):
    """Directions cannot be computed or read as asked; the message says what to fix."""


@dataclass(frozen=True)
class Rows:
    """Pooled rows at one site kind: ``X [n, layers, d]`` with labels and contexts."""

    X: np.ndarray
    labels: np.ndarray
    contexts: np.ndarray
    layers: list[int]
    kind: str
    pooling: str
    target: str
    meta: dict

    def select(self, mask) -> Rows:
        mask = np.asarray(mask)
        return Rows(self.X[mask], self.labels[mask], self.contexts[mask], self.layers, self.kind,
                    self.pooling, self.target, self.meta)


def site_kind(site: str) -> str:
    """``"resid_post"`` / ``"hook_resid_post"`` / ``"blocks.*.hook_resid_post"`` -> kind."""
    name = site.split(".")[-1] if site.startswith("blocks.") and site.count(".") == 2 else site
    if site.startswith("blocks.") and site.count(".") == 3:
        name = ".".join(site.split(".")[2:])
    for cand in (name, f"hook_{name}"):
        if cand in LAYER_KINDS or cand == "hook_embed":
            return cand
    raise DirectionError(f"unknown site {site!r}; use a site kind such as resid_post, resid_mid, "
                         "attn_out, mlp_out (the layers go in layers=)")


def emotion_list(rows: Rows, emotions, neutral: str | None) -> list[str]:
    """The emotions to compute: ``emotions`` checked against the labels, or every label but
    ``neutral`` (and the empty one)."""
    classes = list(dict.fromkeys(rows.labels.tolist()))
    if emotions is None:
        emotions = [c for c in classes if c != neutral and c != ""]
    missing = [e for e in emotions if e not in classes]
    if missing:
        raise DirectionError(f"unknown emotion(s) {missing}; the store's {rows.target} labels are "
                            f"{sorted(set(classes) - {''})}")
    if not emotions:
        raise DirectionError("no emotions to compute directions for")
    return list(emotions)


def _mean_diff(X, y, emotions, neutral, **_) -> np.ndarray:
    out = []
    for e in emotions:
        rest = (y != e) & (y != "")
        out.append(X[y == e].mean(0) - X[rest].mean(0))
    return np.stack(out)


def _mean_diff_neutral(X, y, emotions, neutral, **_) -> np.ndarray:
    if neutral is None or not (y == neutral).any():
        raise DirectionError(f"mean-diff-neutral needs rows labelled {neutral!r}; this store has "
                            f"{sorted(set(y.tolist()))} (pass neutral=... or use mean-diff)")
    base = X[y == neutral].mean(0)
    return np.stack([X[y == e].mean(0) - base for e in emotions])


def _context_means(X, y, ctx, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``[contexts, len(labels), L, d]`` means for contexts holding every label, and their ids."""
    keep, means = [], []
    for c in dict.fromkeys(ctx.tolist()):
        inside = ctx == c
        if all((inside & (y == e)).any() for e in labels):
            keep.append(c)
            means.append(np.stack([X[inside & (y == e)].mean(0) for e in labels]))
    if not keep:
        raise DirectionError(f"no context (scenario) holds rows of every emotion {list(labels)}, "
                            "which context-agnostic directions need: use the whole dataset (not "
                            "a --limit subset), fewer emotions, other context coordinates "
                            "(context=[...]), or --method mean-diff")
    return np.stack(means), keep


def _context_agnostic(X, y, emotions, neutral, ctx, **_) -> np.ndarray:
    means, _ = _context_means(X, y, ctx, emotions)
    centred = means - means.mean(1, keepdims=True)
    centroids = centred.mean(0)
    return centroids - centroids.mean(0, keepdims=True)


def _pairs(X, y, ctx, e, emotions, neutral) -> tuple[np.ndarray, np.ndarray]:
    """``(pos, neg)``, one pair per context: ``e``'s mean vs the neutral (or other emotions') mean."""
    pos, neg = [], []
    for c in dict.fromkeys(ctx.tolist()):
        inside = ctx == c
        if not (inside & (y == e)).any():
            continue
        ref = inside & (y == neutral) if neutral is not None else np.zeros_like(inside)
        if not ref.any():
            ref = inside & np.isin(y, [o for o in emotions if o != e])
        if ref.any():
            pos.append(X[inside & (y == e)].mean(0))
            neg.append(X[ref].mean(0))
    if len(pos) < 2:
        raise DirectionError(f"PCA directions need >= 2 contexts holding {e!r} and a reference; "
                            f"found {len(pos)}")
    return np.stack(pos), np.stack(neg)


def _pca(X, y, emotions, neutral, ctx, center: bool, **_) -> np.ndarray:
    from sklearn.decomposition import PCA

    out = np.zeros((len(emotions), X.shape[1], X.shape[2]))
    for i, e in enumerate(emotions):
        pos, neg = _pairs(X, y, ctx, e, emotions, neutral)
        for j in range(X.shape[1]):
            p, n = pos[:, j].astype(np.float64), neg[:, j].astype(np.float64)
            if center:
                mid = (p + n) / 2
                train = np.concatenate([p - mid, n - mid])
            else:
                train = p - n
            d = PCA(n_components=1).fit(train).components_[0]
            higher = np.mean(p @ d > n @ d)
            out[i, j] = d if higher >= np.mean(p @ d < n @ d) else -d
    return out


def _lda(X, y, emotions, neutral, **_) -> np.ndarray:
    """One shrinkage LDA per layer on every label (pooled within-class covariance); emotion
    ``e``'s direction is its discriminant minus the mean of the others':
    ``Sigma^-1 (mu_e - mean_k mu_k)`` over the other classes ``k``."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    keep = y != ""
    classes = sorted(set(y[keep].tolist()))
    out = np.zeros((len(emotions), X.shape[1], X.shape[2]))
    for j in range(X.shape[1]):
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        coef = lda.fit(X[keep, j], y[keep]).coef_
        if len(classes) == 2:  # sklearn keeps one row, for classes[1]
            coef = np.stack([-coef[0], coef[0]])
        for i, e in enumerate(emotions):
            k = classes.index(e)
            others = np.delete(coef, k, axis=0)
            out[i, j] = coef[k] - others.mean(0)
    return out


_METHODS = {"mean-diff": _mean_diff, "mean-diff-neutral": _mean_diff_neutral,
            "context-agnostic": _context_agnostic,
            "pca-diff": lambda *a, **k: _pca(*a, center=False, **k),
            "pca-center": lambda *a, **k: _pca(*a, center=True, **k), "lda": _lda}


def compute(rows: Rows, method: str, *, emotions: Sequence[str] | None = None,
            neutral: str | None = "neutral") -> dict[str, np.ndarray]:
    """``{emotion: [layers, d]}`` raw (unnormalised) directions from ``rows`` (a method of
    :data:`STORE_METHODS`; ``emotions`` default: every label but ``neutral``)."""
    if method not in _METHODS:
        raise DirectionError(f"unknown method {method!r}; store methods are {', '.join(_METHODS)}")
    emotions = emotion_list(rows, emotions, neutral)
    X = rows.X.astype(np.float64)
    out = _METHODS[method](X, rows.labels, emotions, neutral, ctx=rows.contexts)
    return dict(zip(emotions, out))
