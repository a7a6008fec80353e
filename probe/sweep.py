"""Probe sweeps: a probe at every cached layer x site x pooling of a store, with baselines.

:func:`probe_store` is the notebook entry point (a store in, a tidy results table out): group
k-fold CV at every site, layer and pooling, held-out scores on another store or a test split,
and the probes fitted on all training rows (saved for steering). ``probe sweep`` wraps it
(:mod:`probe.sweep_cli`).

>>> results = probe_store("cache/smollm2-135m/emotion-scenarios-1a2b3c4d5e.zarr")  # doctest: +SKIP
>>> plot_layerwise(results, pooling="last")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from probe.baselines import control_keys, key_coverage
from probe.evaluate import EvalConfig, evaluate, make_folds, text_baselines
from probe.heldout import check_label_sets, check_pair, split_rows, warn_overlap
from probe.lazy import is_chunked, open_lazy, parse_memory, read_sites, sites_per_read
from probe.probe_kinds import probe_kind
from probe.results import validate_results
from probe.sites import Site, parse_sites
from probe.stats import ProbeError, ProbeWarning, Task
from probe.store import StoreError, cached_layers, open_store
from probe.targets import TargetTask, resolve_task

#: Features read at once (float32 bytes): bounds memory whatever the model size.
READ_BUDGET = 1 << 30


def probe_targets(ds: xr.Dataset, target: str | None, task: Task | None = None) -> TargetTask:
    """The usable rows of a store for a target, and the task (see :mod:`probe.targets`).

    Rows without a value (``""`` labels, NaN scores) are left out and counted by the caller.

    Raises:
        ProbeError: An unknown or multi-label target, or whole numbers without ``task``.
    """
    prov = ds.attrs["emoprobe"]
    targets = prov.get("targets", {})
    target = target or prov.get("default_target") or next(
        (k for k, v in targets.items() if v != "multilabel"), None)
    if target not in targets:
        raise ProbeError(f"target {target!r} is not in this store; it has {sorted(targets)} "
                         "(choose one with --target)")
    values = ds[target].values
    kind = targets[target]
    return resolve_task(values if kind == "continuous" else values.astype(str), kind,
                        target=target, task=task)


def _site_groups(ds: xr.Dataset, sites: Sequence[Site] | None) -> list[tuple[str, list[int] | None]]:
    """(array name, layers) to probe: what was asked for, all of it fully cached, else an error.

    Only committed rows count: a site another run left unfinished does not block the others.
    """
    n = int(ds.attrs["emoprobe"]["n_samples"])
    progress = ds.attrs.get("progress", {})
    have: dict[str, list[int] | None] = {}
    for name in ds.data_vars:
        if "layer" in ds[name].dims:
            have[name] = cached_layers(ds, name)
        elif progress.get(name) == n:
            have[name] = None
    if sites is None:
        found = [(k, v) for k, v in have.items() if v is None or v]
        if not found:
            raise StoreError(f"store {ds.encoding.get('source', '')} is incomplete: no site is fully "
                             "cached yet; rerun the `probe cache` command that made it to resume")
        return found
    wanted: dict[str, list[int] | None] = {}
    for s in sites:
        if s.kind not in have or (s.layer is not None and s.layer not in (have[s.kind] or [])):
            held = ", ".join(f"{k} layers {_compact(v)}" if v is not None else k
                             for k, v in have.items()) or "nothing complete"
            raise ProbeError(
                f"the store has no cached {s} (fully cached: {held}); run `probe cache` with "
                "these --sites first, or let `probe sweep` cache them")
        if s.layer is None:
            wanted[s.kind] = None
        else:
            wanted.setdefault(s.kind, []).append(s.layer)
    return list(wanted.items())


def _compact(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if layers and layers == list(range(layers[0], layers[-1] + 1)) \
        else str(layers)


def _read(var: xr.DataArray, pooling: str, layers: list[int] | None, rows: np.ndarray) -> np.ndarray:
    if is_chunked(var):  # out of core: chunk by chunk (probe.lazy)
        return read_sites(var, pooling, layers, rows)
    return _read_eager(var, pooling, layers, rows)


def _read_eager(var: xr.DataArray, pooling: str, layers: list[int] | None,
                rows: np.ndarray) -> np.ndarray:
    """``[sites, n, features]`` float32 for the chosen pooling, layers and rows."""
    sel = var.sel(pooling=pooling)
    if layers is not None:
        sel = sel.sel(layer=layers)
    x = np.asarray(sel.values, dtype=np.float32)[rows]
    if layers is None:
        x = x[:, None]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return np.ascontiguousarray(x.transpose(1, 0, 2))


@dataclass(frozen=True)
class _Side:
    """The usable rows of one store: features are read from ``ds`` at ``rows``."""

    ds: xr.Dataset
    rows: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    texts: list[str]
    words: Sequence | None  # target words, for the control key under `token` pooling

    def keys(self, pooling: str) -> tuple[np.ndarray, str]:
        if pooling == "token" and self.words is None:
            warnings.warn("the store has no target words, so the control task under 'token' "
                          "pooling is keyed on the content's last word instead (pass "
                          "target_words= to key it on the pooled word)", ProbeWarning, stacklevel=4)
            pooling = "content-last"
        return control_keys(self.texts, pooling, self.words)


def probe_store(
    store: str | Path | xr.Dataset,
    *,
    target: str | None = None,
    task: Task | None = None,
    sites: str | Sequence[Site] | None = None,
    poolings: Sequence[str] | None = None,
    config: EvalConfig = EvalConfig(),
    eval_store: str | Path | xr.Dataset | None = None,
    split_eval: str | tuple | None = None,
    target_words: Sequence[str] | None = None,
    eval_target_words: Sequence[str] | None = None,
    probes_dir: str | Path | None = None,
    progress: bool = True,
    memory: int | str | None = None,
) -> pd.DataFrame:
    """Fit and evaluate a probe at every cached (or chosen) site of a store.

    Args:
        store: a store path or an opened store.
        target: a target coordinate of the store (default: the dataset's default target).
        task: ``"classification"`` or ``"regression"``; default: inferred when unambiguous
            (text labels, non-integer numbers); whole numbers need it (:mod:`probe.targets`).
        sites: site patterns or :class:`Site` list (default: everything cached).
        poolings: poolings to probe (default: all in the store).
        config: cross-validation, regularisation, bootstrap, control and lexical settings.
        eval_store: a store of another dataset (same model, template and poolings): the probe
            is also fitted on all of ``store`` and scored on it (``evaluation == "heldout"``
            rows next to the cross-validated ``"cv"`` ones).
        split_eval: ``"train:test"`` (or ``"train"``: test on every other split): fit on the
            rows whose ``split`` is ``train``, score the others; no cross-validation.
        target_words: the pooled word of each row of ``store`` under ``token`` pooling (the
            dataset's ``target_word`` column; read from the store when it has one), which keys
            the control task there. ``eval_target_words``: the same for ``eval_store``.
        probes_dir: also fit each probe on all training rows and save it under
            ``probes_dir/probes/`` (weights and directions in raw activation space; see
            :mod:`probe.saved`).
        progress: show a progress bar.
        memory: a memory budget (bytes or ``"8GiB"``): read the stores out of core with Dask,
            in jobs sized so that what is read plus the probe's working set stays under it
            (:mod:`probe.lazy`), for stores larger than RAM. Default: jobs of at most
            :data:`READ_BUDGET` bytes of features.

    Returns:
        A tidy results table (see :mod:`probe.results`), with a ``pooling`` column; ``attrs``
        hold the target, task and why, row counts, folds and the control keys' coverage.
    """
    if eval_store is not None and split_eval is not None:
        raise ProbeError("pass either eval_store (another dataset) or split_eval (a split "
                         "column), not both")
    budget = parse_memory(memory)
    ds = _open(store, budget)
    if isinstance(sites, str):
        sites = parse_sites(sites, n_layers=int(ds.attrs["emoprobe"]["n_layers"]))
    tt = probe_targets(ds, target, task)
    probe_kind(config.probe, tt.task)  # an unknown kind, or one for the other task, fails here
    poolings = _poolings(ds, poolings)
    train = _side(ds, tt, target_words)
    held, split = None, None
    if eval_store is not None:
        eds = _open(eval_store, budget)
        check_pair(ds, eds, poolings)
        held = _side(eds, probe_targets(eds, tt.target, tt.task), eval_target_words)
        if tt.task == "classification":
            check_label_sets(train.y, held.y, tt.target)
        warn_overlap(ds["text_hash"].values[train.rows], eds["text_hash"].values[held.rows])
    elif split_eval is not None:
        tr, te = split_rows(ds["split"].values[train.rows], split_eval)
        train = _subset(train, np.concatenate([tr, te]))
        split = (np.arange(len(tr)), np.arange(len(tr), len(tr) + len(te)))
        if tt.task == "classification":
            check_label_sets(train.y[split[0]], train.y[split[1]], tt.target)
    keys = {p: _control_keys(p, train, held) for p in poolings} if config.control else {}
    jobs = _jobs(ds, sites, poolings, len(train.rows) + (len(held.rows) if held else 0),
                 held.ds if held else None, budget=budget, task=tt.task, n_folds=config.n_folds,
                 n_classes=len(np.unique(train.y)) if tt.task == "classification" else 1)
    parts = []
    fitted = _Fitted(train, split, tt, config) if probes_dir is not None else None
    relay = _Relay()
    for pooling, name, chunk in tqdm(jobs, desc="probing", unit="chunk", disable=not progress,
                                     dynamic_ncols=True):
        X = _read(train.ds[name], pooling, chunk, train.rows)
        parts += _probe_chunk(X, train, held, split, tt.task, pooling, name, chunk, config,
                              keys.get(pooling), relay)
        if fitted is not None:
            with relay(pooling):
                fitted.fit(X, pooling, name, chunk)
    if fitted is not None:
        fitted.save(probes_dir)
    parts += _baselines(train, held, split, tt.task, config)
    out = validate_results(pd.concat(parts, ignore_index=True))
    out.attrs.update(_attrs(ds, tt, train, held, split, keys, config, split_eval))
    return out


def _control_keys(pooling: str, train: _Side, held: _Side | None) -> tuple[np.ndarray, str]:
    """The control keys of every row (training rows, then held-out rows) and what they are."""
    keys, what = train.keys(pooling)
    return (keys if held is None else np.concatenate([keys, held.keys(pooling)[0]])), what


def _open(store, budget: int | None = None) -> xr.Dataset:
    ds = store if isinstance(store, xr.Dataset) else open_store(store, require_complete=False)
    return ds if budget is None else open_lazy(ds)


def _poolings(ds: xr.Dataset, poolings: Sequence[str] | None) -> list[str]:
    have = [str(p) for p in ds["pooling"].values]
    poolings = list(poolings or have)
    missing = [p for p in poolings if p not in have]
    if missing:
        raise ProbeError(f"pooling {missing[0]!r} is not in this store (it has {have})")
    return poolings


def _side(ds: xr.Dataset, tt: TargetTask, words: Sequence[str] | None) -> _Side:
    if words is None and "target_word" in ds.coords:
        words = ds["target_word"].values.astype(str)
    if words is not None:
        words = np.asarray(words, dtype=object)
        if len(words) != ds.sizes["sample"]:
            raise ProbeError(f"{len(words)} target words for a store of {ds.sizes['sample']} rows")
        words = words[tt.rows]
    return _Side(ds, tt.rows, tt.y, ds["group"].values.astype(str)[tt.rows],
                 ds["text"].values.astype(str)[tt.rows].tolist(), words)


def _subset(side: _Side, keep: np.ndarray) -> _Side:
    return _Side(side.ds, side.rows[keep], side.y[keep], side.groups[keep],
                 [side.texts[i] for i in keep], None if side.words is None else side.words[keep])


def _jobs(ds, sites, poolings, n_rows: int, heldout: xr.Dataset | None, *,
          budget: int | None = None, task: str = "classification", n_folds: int = 5,
          n_classes: int = 2) -> list[tuple[str, str, list[int] | None]]:
    """(pooling, array, layers) chunks, each read at most :data:`READ_BUDGET` bytes (or, with
    a memory ``budget``, holding read data and the probe's working set within it); the
    held-out store must hold every one of them."""
    jobs = []
    for name, layers in _site_groups(ds, sites):
        if heldout is not None:
            try:
                _site_groups(heldout, [Site(name, layer) for layer in (layers or [None])])
            except ProbeError as err:
                raise ProbeError(f"held-out store: {err}") from None
        width = int(np.prod([ds.sizes[d] for d in ds[name].dims[2 if layers is None else 3:]]))
        per = max(1, READ_BUDGET // max(1, 4 * n_rows * width)) if budget is None else \
            sites_per_read(budget, n=n_rows, width=width, task=task, n_classes=n_classes,
                           n_folds=n_folds)
        chunks = [None] if layers is None else [layers[i:i + per]
                                                for i in range(0, len(layers), per)]
        jobs += [(p, name, chunk) for p in poolings for chunk in chunks]
    return jobs


def _probe_chunk(X, train: _Side, held: _Side | None, split, task, pooling, name, chunk,
                 config, keys, relay: _Relay) -> list[pd.DataFrame]:
    """Cross-validated and/or held-out rows of one chunk of layers under one pooling."""
    n = len(train.rows)
    keys = None if keys is None else keys[0]
    common = {"site_keys": [(name, layer) for layer in (chunk or [None])], "task": task,
              "config": config, "include_text_baselines": False}
    labels = [f"{_name(name, layer)} ({pooling}" for layer in (chunk or [None])]
    parts = []
    if split is None:
        with relay(pooling):
            parts.append(evaluate(X, y=train.y, groups=train.groups, texts=train.texts,
                                  control_keys=None if keys is None else keys[:n],
                                  site_labels=[f"{label})" for label in labels], **common))
    held_labels = [f"{label}, held-out fit)" for label in labels]
    with relay(pooling, heldout=True):
        if held is not None:
            Xh = np.concatenate([X, _read(held.ds[name], pooling, chunk, held.rows)], axis=1)
            parts.append(evaluate(Xh, **_joined(train, held), control_keys=keys,
                                  split=(np.arange(n), np.arange(n, n + len(held.rows))),
                                  site_labels=held_labels, **common))
        elif split is not None:
            parts.append(evaluate(X, y=train.y, groups=train.groups, texts=train.texts,
                                  control_keys=keys, split=split, site_labels=held_labels,
                                  **common))
    return [df.assign(pooling=pooling) for df in parts]


def _joined(train: _Side, held: _Side) -> dict:
    """y, groups and texts of both sides; group ids are tagged so they cannot collide."""
    return {"y": np.concatenate([train.y, held.y]),
            "groups": np.concatenate([np.char.add("train:", train.groups.astype(str)),
                                      np.char.add("heldout:", held.groups.astype(str))]),
            "texts": train.texts + held.texts}


def _baselines(train: _Side, held: _Side | None, split, task, config) -> list[pd.DataFrame]:
    parts = []
    if split is None:
        parts.append(text_baselines(y=train.y, groups=train.groups, texts=train.texts,
                                    task=task, config=config))
    if held is not None:
        n = len(train.rows)
        parts.append(text_baselines(**_joined(train, held), task=task, config=config,
                                    split=(np.arange(n), np.arange(n, n + len(held.rows)))))
    elif split is not None:
        parts.append(text_baselines(y=train.y, groups=train.groups, texts=train.texts,
                                    task=task, config=config, split=split))
    return parts


def _attrs(ds, tt: TargetTask, train: _Side, held: _Side | None, split, keys: dict, config,
           split_eval) -> dict:
    """What a run records next to its table: target, task, counts, folds, control keys."""
    n = len(train.rows)
    attrs = {"target": tt.target, "task": tt.task, "task_reason": tt.reason,
             "probe": probe_kind(config.probe, tt.task).name, "n_used": n, "n_dropped": int(ds.sizes["sample"] - len(tt.rows))}
    folds = make_folds(train.y, train.groups, tt.task, config) if split is None else None
    if folds is not None:
        attrs["n_folds"] = len(folds)
    coverage = {}
    for pooling, (k, what) in keys.items():
        entry = {"key": what}
        if folds is not None:
            entry["cv"] = key_coverage(k[:n], folds)
        if held is not None:
            entry["heldout"] = key_coverage(k, [(np.arange(n), np.arange(n, len(k)))])
        elif split is not None:
            entry["heldout"] = key_coverage(k, [split])
        coverage[pooling] = entry
    attrs["control_key_coverage"] = coverage
    if held is not None:
        attrs.update({"n_heldout": len(held.rows),
                      "heldout_store": held.ds.encoding.get("source"),
                      "n_heldout_dropped": int(held.ds.sizes["sample"] - len(held.rows))})
    if split is not None:
        attrs.update({"split_eval": split_eval, "n_train": len(split[0]),
                      "n_heldout": len(split[1]), "n_used": len(split[0]) + len(split[1])})
    return attrs


class _Fitted:
    """Probes fitted on all training rows, gathered per site kind and pooling, then saved."""

    def __init__(self, train: _Side, split, tt: TargetTask, config: EvalConfig):
        self.rows = np.arange(len(train.rows)) if split is None else split[0]
        self.train, self.tt, self.config = train, tt, config
        self.parts: dict[str, dict[str, list]] = {}
        self.layers: dict[str, list[int] | None] = {}
        self.status: dict[str, dict[str, dict]] = {}

    def fit(self, X, pooling: str, name: str, chunk: list[int] | None) -> None:
        labels = [f"{_name(name, layer)} ({pooling}, all training rows)"
                  for layer in (chunk or [None])]
        cfg = self.config
        fit = probe_kind(cfg.probe, self.tt.task).fit(X[:, self.rows], self.tt.y[self.rows], cfg,
                                                      labels)
        self.classes = None if fit.classes is None else [str(c) for c in fit.classes]
        chunks = self.parts.setdefault(name, {}).setdefault(pooling, [])
        chunks.append({k: np.asarray(getattr(fit, k)) for k in ("coef", "intercept", "mean",
                                                                "scale")})
        self.layers[name] = None if chunk is None else sorted(set(self.layers.get(name) or [])
                                                             | set(chunk))
        state = self.status.setdefault(name, {}).setdefault(pooling, {"converged": [],
                                                                        "n_iter": []})
        state["converged"] += np.asarray(fit.converged, dtype=bool).reshape(-1).tolist()
        state["n_iter"] += np.asarray(fit.n_iter).reshape(-1).tolist()

    def save(self, run_dir) -> None:
        from probe.saved import save_probes

        ds, cfg = self.train.ds, self.config
        prov = ds.attrs["emoprobe"]
        for name, by_pooling in self.parts.items():
            arrays = {p: {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
                      for p, chunks in by_pooling.items()}
            feature_shape = [ds.sizes[d] for d in ds[name].dims[2 if self.layers[name] is None
                                                                  else 3:]]
            meta = {"task": self.tt.task, "target": self.tt.target, "classes": self.classes,
                    "feature_shape": feature_shape, "model": prov.get("model"),
                    "model_id": prov.get("model_id"),
                    "weight_fingerprint": prov.get("weight_fingerprint"),
                    "chat_template": prov.get("chat_template"),
                    "system_prompt": prov.get("system_prompt"),
                    "store": ds.encoding.get("source"), "dataset": prov.get("dataset"),
                    "dataset_hash": prov.get("dataset_hash"), "n_train": len(self.rows),
                    "C": cfg.C, "alpha": cfg.alpha, "tol": cfg.tol, "max_iter": cfg.max_iter,
                    "fit": self.status[name]}
            save_probes(run_dir, name, self.layers[name], arrays, meta)


class _Relay:
    """Re-issues the warnings of each chunk once per sweep (chunks repeat them), ProbeWarnings
    prefixed with the pooling unless they name it already. (``catch_warnings`` resets Python's
    own once-per-location registry, so deduplication has to happen here.)"""

    def __init__(self):
        self.seen: set[str] = set()

    @contextmanager
    def __call__(self, pooling: str, heldout: bool = False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            text = str(w.message)
            if issubclass(w.category, ProbeWarning) and f"({pooling}" not in text:
                text = f"pooling {pooling}{', held-out' if heldout else ''}: {text}"
            if text in self.seen:
                continue
            self.seen.add(text)
            if issubclass(w.category, ProbeWarning):
                warnings.warn(text, w.category, stacklevel=3)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _name(kind: str, layer: int | None) -> str:
    return kind if layer is None else f"blocks.{layer}.{kind}"
