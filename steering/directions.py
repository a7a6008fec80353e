"""Emotion directions from an activation store: one :class:`SteeringVector` per emotion.

>>> vecs = directions("cache/smollm2-135m/emotion-scenarios-....zarr",
...                   method="context-agnostic", site="resid_post", layers=range(10, 20))  # doctest: +SKIP
>>> vecs["happiness"]  # doctest: +SKIP
SteeringVector('happiness', method='context-agnostic', sites=blocks.10-19.hook_resid_post, ...)

Methods (``X`` = the store's pooled rows at one site and layer, ``e`` an emotion):

``mean-diff``          mean of ``e`` rows minus mean of all other rows
``mean-diff-neutral``  mean of ``e`` rows minus mean of the neutral rows
``context-agnostic``   Wang et al. (2025): per context (scenario, or scenario x event valence
                       where valence varies within an emotion) average each emotion's rows and
                       subtract the context's mean over emotions; average over contexts
                       (only contexts holding every emotion); remove the mean over emotions
``pca-diff``           repeng's ``pca_diff``: first principal component of paired differences
                       (``e`` minus the neutral rows of the same context, or minus the other
                       emotions' mean there), fitted by scikit-learn PCA, which centres them
``pca-center``         repeng's ``pca_center``: PCA of the pair members centred on their pair mean
``lda``                shrinkage LDA (Ledoit-Wolf) on every label: ``Sigma^-1 (mu_e - mean of the
                       other classes' means)``, ``Sigma`` the pooled within-class covariance
``probe``              the weight vector of a probe a sweep saved (raw activation space)
``prompted``           context-agnostic directions from the model's own prompted replies
                       (:mod:`steering.prompted`)

Every direction points so that +1 means "more of the emotion" (PCA signs are fixed as repeng
does: the sign under which most pairs project higher on their emotional member), is
L2-normalised per site (``normalize=False`` keeps raw norms; they are in ``meta["norms"]``
either way), and carries the site's typical RMS over the rows it was computed from
(``meta["rms"]``, the size of ``unit="rms"``). :func:`heldout_auroc` checks that a
direction separates its emotion on rows it was not computed from.

The store methods and the reading of rows are the core's (:mod:`probe.direction_methods`,
:mod:`probe.directions`; ``circuits`` uses them too); this module adds ``probe`` and ``prompted``
and makes steering vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from probe.directions import load_rows as core_load_rows
from probe.directions import store_directions
from steering.methods import (  # noqa: F401 (re-exported: the methods' public names)
    METHODS,
    STORE_METHODS,
    Method,
    Rows,
    _emotion_list,
    as_vectors,
    compute,
    site_kind,
    steering_errors,
    to_vectors,
)
from steering.vector import SteeringError, VectorSet

#: Pooled rows from a store (:func:`probe.directions.load_rows`), raising SteeringError.
load_rows = steering_errors(core_load_rows)


# ------------------------------------------------------------------------------ methods
# ------------------------------------------------------------------------------ entry point
def directions(source, *, method: Method, site: str = "resid_post",
               layers: Iterable[int] | None = None, pooling: str = "last",
               target: str | None = None, neutral: str | None = "neutral",
               emotions: Sequence[str] | None = None, context: Sequence[str] | None = None,
               rows=None, normalize: bool = True, dataset: str = "emotion-scenarios",
               **method_kwargs) -> VectorSet:
    """One steering vector per emotion (see the module docstring for the methods).

    Args:
        source: A store path or opened store; a :class:`probe.models.LoadedModel` (the store is
            cached on the fly from ``dataset``, or for ``"prompted"`` the model generates);
            a sweep run folder for ``"probe"``.
        method: One of :data:`METHODS`.
        site: Site kind (``resid_post``, ``resid_mid``, ``attn_out``, ``mlp_out``, ...).
        layers: Layers (default: all the store holds).
        pooling: Store pooling to read (``last``: the last prompt token, where steering starts).
        target: Label coordinate (default: the store's default target, e.g. ``emotion``).
        neutral: Label of neutral rows (excluded from the emotions; the reference for
            ``mean-diff-neutral`` and PCA pairs); None if there is none.
        emotions: Which emotions (default: every label but ``neutral``).
        context: Coordinates defining a context (see :func:`load_rows`).
        rows: Boolean mask or indices of the store's rows to use (e.g. a training split).
        normalize: L2-normalise each site's vector (raw norms stay in ``meta["norms"]``).
        dataset: What to cache when ``source`` is a model.
        **method_kwargs: For ``"prompted"``: see :func:`steering.prompted.prompted_directions`.

    Returns:
        A :class:`~steering.vector.VectorSet` ``{emotion: SteeringVector}``.
    """
    if method not in METHODS:
        raise SteeringError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "prompted":
        from steering.prompted import prompted_directions

        return prompted_directions(source, site=site, layers=layers, emotions=emotions,
                                   normalize=normalize, **method_kwargs)
    if method_kwargs:
        raise SteeringError(f"unexpected options for {method}: {sorted(method_kwargs)}")
    if method == "probe":
        return probe_directions(source, site=site, layers=layers, pooling=pooling,
                                emotions=emotions, neutral=neutral, normalize=normalize)
    if hasattr(source, "model") and hasattr(source, "tokenizer"):
        source = cache_on_the_fly(source, dataset=dataset, site=site, pooling=pooling)
    return as_vectors(steering_errors(store_directions)(
        source, method=method, site=site, layers=layers, pooling=pooling, target=target,
        neutral=neutral, emotions=emotions, context=context, rows=rows, normalize=normalize))


def cache_on_the_fly(lm, *, dataset: str = "emotion-scenarios", site: str = "resid_post",
                     pooling: str = "last") -> Path:
    """Cache ``dataset`` at every layer of ``site`` into the default store (reused if there)."""
    from probe.cache import CacheConfig, cache_activations
    from probe.capture import DEFAULT_POOLINGS
    from probe.data import load_dataset

    kind = site_kind(site)
    poolings = DEFAULT_POOLINGS if pooling in DEFAULT_POOLINGS else (pooling,)
    config = CacheConfig(sites=kind if kind == "hook_embed" else f"blocks.*.{kind}",
                         poolings=poolings)
    return cache_activations(lm, load_dataset(dataset), config=config, progress=False)


def probe_directions(run_dir, *, site: str = "resid_post", layers: Iterable[int] | None = None,
                     pooling: str | None = "last", emotions: Sequence[str] | None = None,
                     neutral: str | None = "neutral", normalize: bool = True) -> VectorSet:
    """Directions from the probes a sweep saved in ``run_dir`` (class weight vectors).

    The typical RMS of each site comes from the probe's own standardisation statistics
    (``sqrt(mean(mean_i**2 + scale_i**2))`` over dimensions i: the RMS of its training rows).
    """
    try:
        from probe.saved import load_probe
    except ImportError:  # pragma: no cover - before the stats branch is merged
        raise SteeringError("this emoprobe has no saved probes (probe.saved); update it") from None
    import json

    kind = site_kind(site)
    sidecar = Path(run_dir) / "probes" / f"{kind}.json"
    if not sidecar.is_file():
        raise SteeringError(f"no saved probes for {kind} in {Path(run_dir) / 'probes'}; run "
                            "`probe sweep` (it saves one probe per site and layer)")
    saved = json.loads(sidecar.read_text())
    layers = saved["layers"] if layers is None else [int(x) for x in layers]
    if pooling not in saved["poolings"]:
        raise SteeringError(f"pooling {pooling!r} was not saved; the sweep saved {saved['poolings']}")
    missing = [x for x in layers if x not in saved["layers"]]
    if missing:
        raise SteeringError(f"layers {missing} have no saved probe; saved: {saved['layers']}")
    if saved.get("task") != "classification":
        raise SteeringError("probe directions need a classification sweep (emotion labels)")
    probes = [load_probe(run_dir, kind, layer, pooling=pooling) for layer in layers]
    classes = list(probes[0].classes)
    emotions = list(emotions) if emotions is not None else [c for c in classes if c != neutral]
    unknown = [e for e in emotions if e not in classes]
    if unknown:
        raise SteeringError(f"unknown emotion(s) {unknown}; the probes' classes are {classes}")
    raw = {e: np.stack([p.coef[classes.index(e)] for p in probes]) for e in emotions}
    rms = np.array([np.sqrt(np.mean(p.mean.astype(np.float64) ** 2 + p.scale.astype(np.float64) ** 2))
                    for p in probes])
    meta = {k: saved[k] for k in ("model", "model_id", "weight_fingerprint", "chat_template", "dataset",
                                  "dataset_hash", "store") if k in saved}
    rows = Rows(X=np.zeros((0, len(layers), probes[0].coef.shape[1]), np.float32),
                labels=np.array([], dtype=str), contexts=np.array([], dtype=str), layers=layers,
                kind=kind, pooling=pooling, target=saved.get("target", "emotion"), meta=meta)
    out = to_vectors(raw, rows, "probe", normalize=normalize, rms=rms,
                     extra={"run_dir": str(run_dir), "n_rows": saved.get("n_train")})
    return out


# ------------------------------------------------------------------------------ checks
def heldout_auroc(store, *, method: str, site: str = "resid_post",
                  layers: Iterable[int] | None = None, pooling: str = "last",
                  target: str | None = None, neutral: str | None = "neutral",
                  emotions: Sequence[str] | None = None, context: Sequence[str] | None = None,
                  folds: int = 5, seed: int = 0):
    """Out-of-fold AUROC of each direction's projection, emotion vs the rest, per layer.

    Folds hold out whole groups (scenarios): each row is scored by a direction computed
    without its group. Returns a tidy ``pandas.DataFrame`` (emotion, layer, auroc, n).
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    data = load_rows(store, site=site, layers=layers, pooling=pooling, target=target,
                     context=context)
    groups = np.array([c.split("|")[0] for c in data.contexts])
    if len(set(groups)) < folds:
        raise SteeringError(f"{len(set(groups))} groups cannot make {folds} folds")
    ems = _emotion_list(data, emotions, neutral)
    scores = np.zeros((len(ems), len(data.labels), len(data.layers)))
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(data.X, data.labels, groups):
        raw = compute(data.select(train), method, emotions=ems, neutral=neutral)
        for i, e in enumerate(ems):
            d = raw[e] / np.linalg.norm(raw[e], axis=-1, keepdims=True)
            scores[i, test] = np.einsum("nld,ld->nl", data.X[test].astype(np.float64), d)
    rows = []
    for i, e in enumerate(ems):
        y = data.labels == e
        for j, layer in enumerate(data.layers):
            rows.append({"emotion": e, "layer": layer, "method": method, "pooling": pooling,
                         "auroc": float(roc_auc_score(y, scores[i, :, j])), "n": int(len(y)),
                         "n_positive": int(y.sum())})
    return pd.DataFrame(rows)
