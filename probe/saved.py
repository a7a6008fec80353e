"""The probes a sweep saves: weights and unit directions in raw activation space.

A sweep fits one more probe per site, layer and pooling on all of its training rows (the
same ``StandardScaler + LogisticRegression(C)`` / ``Ridge(alpha)`` objective as the
cross-validated ones) and saves it, so steering can use "probe" directions:

``<run>/probes/<site kind>.safetensors``
    per pooling ``p``: ``p.coef`` ``[L, K, d]`` (raw activation space: logits
    ``= x @ coef.T + intercept``), ``p.intercept`` ``[L, K]``, ``p.mean`` and ``p.scale``
    ``[L, d]`` (the standardisation folded into ``coef``), float32; ``L`` is 1 for
    ``hook_embed``. Regression probes have ``K = 1``.
``<run>/probes/<site kind>.json``
    layers, poolings, classes, task, target, feature shape, model id and weight
    fingerprint, store, dataset and its hash, C / alpha, rows fitted, convergence.

Nothing is pickled. :func:`load_probe` gives back one probe as a :class:`SavedProbe`, a small
estimator-like object with ``predict``/``predict_proba`` and per-class unit directions.

>>> probe = load_probe("runs/smollm2-135m/sev-valence-...", "blocks.14.hook_resid_post",
...                    pooling="last")  # doctest: +SKIP
>>> probe.direction("positive").shape  # doctest: +SKIP
(576,)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probe.io import atomic_write
from probe.artifacts import save_safetensors
from probe.sites import Site

FORMAT = 1
FOLDER = "probes"


@dataclass(frozen=True, kw_only=True)
class SavedProbe:
    """One saved probe at one site and pooling.

    Attributes:
        site: The site, e.g. ``Site("hook_resid_post", 14)``.
        pooling: The pooling its features came from.
        task: ``"classification"`` or ``"regression"``.
        classes: Class labels in logit order (None for regression).
        coef: ``[K, d]`` weights on raw (unstandardised) activations.
        intercept: ``[K]``.
        mean, scale: ``[d]`` standardisation of the training rows (already folded into coef).
        meta: The JSON sidecar (model, data, regularisation, convergence, ...).
    """

    site: Site
    pooling: str
    task: str
    classes: tuple[str, ...] | None
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    meta: dict = field(default_factory=dict, repr=False)

    def decision_function(self, X) -> np.ndarray:
        """Logits ``[n, K]`` (regression: predictions ``[n]``) of raw activations ``[n, d]``."""
        X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        if X.shape[1] != self.coef.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features; this probe reads {self.coef.shape[1]} "
                             f"({self.site}, pooling {self.pooling})")
        out = X @ self.coef.T.astype(np.float64) + self.intercept
        return out[:, 0] if self.task == "regression" else out

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[n, K]`` in :attr:`classes` order."""
        if self.task != "classification":
            raise ValueError("predict_proba needs a classification probe")
        z = self.decision_function(X)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Most probable class (classification) or the predicted value (regression)."""
        if self.task == "regression":
            return self.decision_function(X)
        return np.asarray(self.classes)[self.decision_function(X).argmax(1)]

    @property
    def directions(self) -> np.ndarray:
        """``[K, d]`` unit vectors in raw activation space: row k raises class k's logit
        relative to the mean of the others (the rows of ``coef`` sum to zero over classes);
        for regression the one direction along which the prediction grows."""
        norms = np.linalg.norm(self.coef, axis=1, keepdims=True)
        return np.divide(self.coef, norms, out=np.zeros_like(self.coef), where=norms > 0)

    def direction(self, label: str | None = None) -> np.ndarray:
        """The unit direction of one class (any label for regression: pass None)."""
        if self.task == "regression":
            return self.directions[0]
        if label not in (self.classes or ()):
            raise ValueError(f"{label!r} is not one of the classes {list(self.classes)}")
        return self.directions[self.classes.index(label)]


def save_probes(run_dir: str | os.PathLike, kind: str, layers: list[int] | None,
                arrays: dict[str, dict[str, np.ndarray]], meta: dict[str, Any]) -> Path:
    """Write one site kind's probes: ``arrays[pooling]`` holds ``coef [L, K, d]``,
    ``intercept [L, K]``, ``mean`` and ``scale [L, d]``; ``meta`` goes to the JSON sidecar
    (with ``site``, ``layers``, ``poolings`` and ``format`` added). Returns the tensor file."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{pooling}.{name}": np.ascontiguousarray(value, dtype=np.float32)
               for pooling, part in arrays.items() for name, value in part.items()}
    path = folder / f"{kind}.safetensors"
    save_safetensors(tensors, path)
    side = {**meta, "format": FORMAT, "site": kind, "layers": layers, "poolings": list(arrays)}
    atomic_write(path.with_suffix(".json"),
                 json.dumps(side, indent=1, allow_nan=False, default=_plain) + "\n")
    return path


def load_probe(run_dir: str | os.PathLike, site: str | Site, layer: int | None = None,
               pooling: str | None = None) -> SavedProbe:
    """Load one probe a sweep saved.

    Args:
        run_dir: The sweep's output folder (the one holding ``probes/``).
        site: A site (``"blocks.14.hook_resid_post"``, ``Site(...)``) or a site kind with
            ``layer`` (``"hook_resid_post", 14``); ``"hook_embed"`` has no layer.
        layer: The layer, when ``site`` is a kind.
        pooling: The pooling (may be omitted when the run saved one).

    Raises:
        FileNotFoundError: No probes saved for this site kind (says what was saved).
        ValueError: A layer or pooling that was not saved (says which were).
    """
    site = _site(site, layer)
    folder = Path(run_dir) / FOLDER
    sidecar = folder / f"{site.kind}.json"
    if not sidecar.is_file():
        saved = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        raise FileNotFoundError(f"no saved probes for {site.kind} in {folder} (saved: "
                                f"{saved or 'none'}); rerun the sweep with these sites")
    meta = json.loads(sidecar.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{sidecar} has probe format {meta.get('format')}, expected {FORMAT}")
    pooling = pooling or (meta["poolings"][0] if len(meta["poolings"]) == 1 else None)
    if pooling not in meta["poolings"]:
        raise ValueError(f"pooling {pooling!r} was not saved; choose one of {meta['poolings']}")
    layers = meta["layers"]
    if (layers is None) != (site.layer is None) or site.layer not in (layers or [None]):
        raise ValueError(f"{site} was not saved; {site.kind} has layers {layers}")
    i = 0 if layers is None else layers.index(site.layer)
    from safetensors import safe_open

    with safe_open(str(sidecar.with_suffix(".safetensors")), framework="numpy") as f:
        part = {name: f.get_slice(f"{pooling}.{name}")[i]
                for name in ("coef", "intercept", "mean", "scale")}
    classes = tuple(meta["classes"]) if meta.get("classes") is not None else None
    return SavedProbe(site=site, pooling=pooling, task=meta["task"], classes=classes,
                      meta=meta, **{k: np.asarray(v) for k, v in part.items()})


def _site(site: str | Site, layer: int | None) -> Site:
    if isinstance(site, Site):
        return site
    if site.startswith("blocks.") or site == "hook_embed":
        parsed = Site.parse(site)
        if layer is not None and parsed.layer != layer:
            raise ValueError(f"site {site!r} and layer={layer} disagree")
        return parsed
    return Site(site, layer)


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
