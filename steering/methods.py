"""Direction methods: from pooled rows of labelled activations to one direction per emotion.

The arithmetic behind :func:`steering.directions.directions` (which reads the rows from an
activation store) and :func:`steering.prompted.prompted_directions` (which makes them from the
model's replies): :class:`Rows`, :func:`compute` (``{emotion: [layers, d]}``) and
:func:`to_vectors` (steering vectors with provenance). The methods are described in
:mod:`steering.directions`; a new store method is one function ``fn(X, y, emotions, neutral,
ctx=...) -> [emotions, layers, d]`` added to ``_METHODS``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from probe.sites import LAYER_KINDS, Site
from steering.errors import SteeringError

Method = Literal["mean-diff", "mean-diff-neutral", "context-agnostic", "pca-diff", "pca-center",
                 "lda", "probe", "prompted"]
METHODS: tuple[str, ...] = get_args(Method)
#: Methods computed from an activation store's rows, by name (``probe`` reads a sweep's saved
#: probes, ``prompted`` the model's replies); each has a function in ``_METHODS``.
STORE_METHODS: tuple[str, ...] = ("mean-diff", "mean-diff-neutral", "context-agnostic",
                                  "pca-diff", "pca-center", "lda")


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
    raise SteeringError(f"unknown site {site!r}; use a site kind such as resid_post, resid_mid, "
                        "attn_out, mlp_out (the layers go in layers=)")


def _emotion_list(rows: Rows, emotions, neutral: str | None) -> list[str]:
    classes = list(dict.fromkeys(rows.labels.tolist()))
    if emotions is None:
        emotions = [c for c in classes if c != neutral and c != ""]
    missing = [e for e in emotions if e not in classes]
    if missing:
        raise SteeringError(f"unknown emotion(s) {missing}; the store's {rows.target} labels are "
                            f"{sorted(set(classes) - {''})}")
    if not emotions:
        raise SteeringError("no emotions to compute directions for")
    return list(emotions)


def _mean_diff(X, y, emotions, neutral, **_) -> np.ndarray:
    out = []
    for e in emotions:
        rest = (y != e) & (y != "")
        out.append(X[y == e].mean(0) - X[rest].mean(0))
    return np.stack(out)


def _mean_diff_neutral(X, y, emotions, neutral, **_) -> np.ndarray:
    if neutral is None or not (y == neutral).any():
        raise SteeringError(f"mean-diff-neutral needs rows labelled {neutral!r}; this store has "
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
        raise SteeringError(f"no context (scenario) holds rows of every emotion {list(labels)}, "
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
        raise SteeringError(f"PCA directions need >= 2 contexts holding {e!r} and a reference; "
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
    """``{emotion: [layers, d]}`` raw (unnormalised) directions from ``rows``."""
    if method not in _METHODS:
        raise SteeringError(f"unknown method {method!r}; store methods are {', '.join(_METHODS)}")
    emotions = _emotion_list(rows, emotions, neutral)
    X = rows.X.astype(np.float64)
    out = _METHODS[method](X, rows.labels, emotions, neutral, ctx=rows.contexts)
    return dict(zip(emotions, out))


def to_vectors(raw: dict[str, np.ndarray], rows: Rows, method: str, *, normalize: bool = True,
               extra: dict | None = None, rms: np.ndarray | None = None) -> VectorSet:
    """Wrap ``{emotion: [layers, d]}`` as steering vectors with provenance and typical RMS
    (``rms`` per layer; default: the RMS of ``rows``)."""
    import torch

    import probe
    from steering.vector import SteeringVector, VectorSet

    sites = [Site(rows.kind, layer) if layer is not None else Site(rows.kind) for layer in rows.layers]
    if rms is None:
        rms = np.sqrt((rows.X.astype(np.float64) ** 2).mean(axis=(0, 2)))
    out = VectorSet()
    for e, arr in raw.items():
        norms = np.linalg.norm(arr, axis=-1)
        if normalize and (norms == 0).any():
            raise SteeringError(f"the {e} direction is zero at {sites[int(np.argmin(norms))]}")
        vecs = arr / norms[:, None] if normalize else arr
        meta = {**rows.meta, "method": method, "emotion": e, "site": rows.kind,
                "pooling": rows.pooling, "target": rows.target,
                "layers": [x for x in rows.layers if x is not None], "normalized": normalize,
                "rms": {str(s): float(r) for s, r in zip(sites, rms)},
                "norms": {str(s): float(n) for s, n in zip(sites, norms)},
                "n_rows": int(len(rows.labels)), "n_rows_emotion": int((rows.labels == e).sum()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "toolkit_version": probe.__version__, **(extra or {})}
        out[e] = SteeringVector({s: torch.from_numpy(v.astype(np.float32)) for s, v in zip(sites, vecs)},
                                meta)
    return out
