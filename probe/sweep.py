"""Probe sweeps: a probe at every cached layer x site x pooling of a store, with baselines.

:func:`probe_store` is the notebook entry point (a store in, a tidy results table out);
:func:`sweep_from_args` is what ``probe sweep`` runs: load, cache what is missing, probe, write
results and figures, print a summary.

>>> results = probe_store("cache/smollm2-135m/emotion-scenarios-1a2b3c4d5e.zarr")  # doctest: +SKIP
>>> plot_layerwise(results, pooling="last")  # doctest: +SKIP
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from probe.baselines import key_coverage, last_word_keys
from probe.evaluate import EvalConfig, evaluate, make_folds, text_baselines
from probe.lazy import open_lazy, parse_memory, read_sites, sites_per_read
from probe.results import validate_results
from probe.sites import Site, parse_sites
from probe.stats import ProbeError, group_stratified_folds
from probe.store import StoreError, cached_layers, open_store

#: Features read at once (float32 bytes): bounds memory whatever the model size.
READ_BUDGET = 1 << 30


def probe_targets(ds: xr.Dataset, target: str | None) -> tuple[str, str, np.ndarray, np.ndarray]:
    """``(target, task, y, rows)``: the usable rows of a store for a target.

    Rows without a value (``""`` labels, NaN scores) are left out and counted by the caller.
    """
    prov = ds.attrs["emoprobe"]
    targets = prov.get("targets", {})
    target = target or prov.get("default_target") or next(
        (k for k, v in targets.items() if v != "multilabel"), None)
    if target not in targets:
        raise ProbeError(f"target {target!r} is not in this store; it has {sorted(targets)} "
                         "(choose one with --target)")
    kind = targets[target]
    values = ds[target].values
    if kind == "multilabel":
        raise ProbeError(
            f"target {target!r} is multi-label. Probe a single-label view instead: for GoEmotions "
            "--target ekman (Ekman groups; rows whose labels disagree are left out) or --target "
            "label (rows with exactly one label)")
    if kind == "continuous":
        values = values.astype(float)
        rows = np.flatnonzero(np.isfinite(values))
        return target, "regression", values[rows], rows
    values = values.astype(str)
    rows = np.flatnonzero(values != "")
    return target, "classification", values[rows], rows


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
    """``[sites, n, features]`` float32 for the chosen pooling, layers and rows."""
    sel = var.sel(pooling=pooling)
    if layers is not None:
        sel = sel.sel(layer=layers)
    x = np.asarray(sel.values, dtype=np.float32)[rows]
    if layers is None:
        x = x[:, None]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return np.ascontiguousarray(x.transpose(1, 0, 2))


def probe_store(
    store: str | Path | xr.Dataset,
    *,
    target: str | None = None,
    sites: str | Sequence[Site] | None = None,
    poolings: Sequence[str] | None = None,
    config: EvalConfig = EvalConfig(),
    progress: bool = True,
    memory: int | str | None = None,
) -> pd.DataFrame:
    """Fit and evaluate a probe at every cached (or chosen) site of a store.

    Args:
        store: a store path or an opened store.
        target: a target coordinate of the store (default: the dataset's default target).
        sites: site patterns or :class:`Site` list (default: everything cached).
        poolings: poolings to probe (default: all in the store).
        config: cross-validation, regularisation, bootstrap, control and lexical settings.
        progress: show a progress bar.
        memory: a memory budget (bytes or ``"8GiB"``): read the store out of core with Dask,
            in jobs sized so that what is read plus the probe's working set stays under it
            (:mod:`probe.lazy`). Default: jobs of at most 1 GiB of features, read directly.

    Returns:
        A tidy results table (see :mod:`probe.results`), with a ``pooling`` column.
    """
    from tqdm.auto import tqdm

    ds = store if isinstance(store, xr.Dataset) else open_store(store, require_complete=False)
    budget = parse_memory(memory)
    if budget is not None:
        ds = open_lazy(ds)
    n_layers = int(ds.attrs["emoprobe"]["n_layers"])
    if isinstance(sites, str):
        sites = parse_sites(sites, n_layers=n_layers)
    target, task, y, rows = probe_targets(ds, target)
    groups = ds["group"].values.astype(str)[rows]
    texts = ds["text"].values.astype(str)[rows].tolist()
    store_poolings = [str(p) for p in ds["pooling"].values]
    poolings = list(poolings or store_poolings)
    missing = [p for p in poolings if p not in store_poolings]
    if missing:
        raise ProbeError(f"pooling {missing[0]!r} is not in this store (it has {store_poolings})")
    jobs = []
    for name, layers in _site_groups(ds, sites):
        width = int(np.prod([ds.sizes[d] for d in ds[name].dims[2 if layers is None else 3:]]))
        per = max(1, READ_BUDGET // max(1, 4 * len(rows) * width)) if budget is None else \
            sites_per_read(budget, n=len(rows), width=width, task=task, n_folds=config.n_folds,
                           n_classes=len(np.unique(y)) if task == "classification" else 1)
        chunks = [None] if layers is None else [layers[i:i + per] for i in range(0, len(layers), per)]
        jobs += [(p, name, chunk) for p in poolings for chunk in chunks]
    parts = []
    for pooling, name, chunk in tqdm(jobs, desc="probing", unit="chunk", disable=not progress,
                                     dynamic_ncols=True):
        X = _read(ds[name], pooling, chunk, rows) if budget is None else \
            read_sites(ds[name], pooling, chunk, rows)
        keys = [(name, layer) for layer in (chunk or [None])]
        df = evaluate(X, y=y, groups=groups, texts=texts, site_keys=keys, task=task,
                      config=config, include_text_baselines=False)
        parts.append(df.assign(pooling=pooling))
    parts.append(text_baselines(y=y, groups=groups, texts=texts, task=task, config=config))
    out = pd.concat(parts, ignore_index=True)
    out = validate_results(out)
    folds = make_folds(y, groups, task, config)
    out.attrs.update({"target": target, "task": task, "n_used": len(rows),
                      "n_dropped": int(ds.sizes["sample"] - len(rows)),
                      "n_folds": len(folds),
                      "control_key_coverage": key_coverage(last_word_keys(texts), folds)})
    return out


def sweep_from_args(args, *, load_data, load_model, cache_config) -> int:
    """``probe sweep``: cache what is missing, probe, write results and figures, summarise."""
    from probe.cache import cache_activations, default_store_path
    from probe.figures import plot_layerwise, plot_sweep_panels
    from probe.results import format_summary, write_results

    t0 = time.time()
    dataset = load_data(args)
    target = args.target or dataset.default_target
    _check_target(dataset, target, n_folds=args.folds, fold_fallback=args.fold_fallback)
    lm = load_model(args)
    config = cache_config(args)
    store = Path(args.store) if args.store else default_store_path(
        lm, dataset, config, Path(args.cache_dir) if args.cache_dir else None)
    cache_activations(lm, dataset, config=config, out=store, progress=not args.quiet)
    eval_config = EvalConfig(**{k: v for k, v in dict(
        n_folds=args.folds, C=args.C, alpha=args.alpha, n_bootstrap=args.bootstrap, seed=args.seed,
        control=args.control, lexical=args.lexical, device=str(lm.device),
        fold_fallback=args.fold_fallback).items() if v is not None})
    results = probe_store(store, target=target, sites=parse_sites(config.sites, n_layers=lm.n_layers),
                          config=eval_config, progress=not args.quiet,
                          memory=getattr(args, "memory", None))
    out = Path(args.out) if args.out else (
        Path("runs") / lm.spec.alias / f"{dataset.name}-{target}-{time.strftime('%Y%m%d-%H%M%S')}")
    run = {"command": "probe " + " ".join(shlex.quote(a) for a in args.argv),
           "store": str(store), "target": target, "task": results.attrs.get("task"),
           "n_used": results.attrs.get("n_used"), "n_dropped_no_target": results.attrs.get("n_dropped"),
           "n_folds": results.attrs.get("n_folds"),
           "control_key_coverage": results.attrs.get("control_key_coverage"),
           "cache": asdict(config), "eval": asdict(eval_config),
           "provenance": open_store(store).attrs["emoprobe"], "seconds": round(time.time() - t0, 1)}
    write_results(out, results, run)
    poolings = [p for p in results["pooling"].dropna().unique()]
    for pooling in poolings:
        title = f"{lm.spec.alias} · {dataset.name}\n{target} · {pooling} pooling"
        plot_layerwise(results, pooling=pooling, title=title, out=out / f"layerwise_{pooling}")
        plot_sweep_panels(results, pooling=pooling, title=title.replace("\n", " · "),
                          out=out / f"panels_{pooling}")
        print(f"\n{target} ({results.attrs.get('task')}), pooling {pooling}, "
              f"n={results.attrs.get('n_used')}:")
        print(format_summary(results, pooling=pooling))
    if args.control:
        print(f"\ncontrol task: labels keyed on each text's last word; "
              f"{results.attrs['control_key_coverage']:.0%} of test rows have a key seen in "
              "training (the control can only be learned for those)")
    if results.attrs.get("n_dropped"):
        print(f"\nnote: {results.attrs['n_dropped']} row(s) without a {target!r} value were left out")
    print(f"\nresults: {out}  (results.csv/json, run.json, layerwise_*.png/svg, panels_*.png/svg)")
    print(f"store:   {store}")
    return 0


def _check_target(dataset, target: str, *, n_folds: int, fold_fallback: str) -> None:
    """Fail before any model work when the target cannot be probed (classes, groups, folds)."""
    kind = dataset.target_kind(target)
    if kind == "multilabel":
        raise ProbeError(f"target {target!r} is multi-label; choose a single-label target "
                         f"({', '.join(k for k, v in dataset.targets.items() if v != 'multilabel')})")
    col = dataset.frame[target]
    if kind == "continuous":
        vals = pd.to_numeric(col, errors="coerce")
        if vals.notna().sum() < 2 or vals.nunique() < 2:
            raise ProbeError(f"target {target!r} has fewer than two distinct values")
        rows = vals.notna().to_numpy()
        group_stratified_folds(vals[rows].to_numpy(), dataset.frame["group"][rows].to_numpy(),
                               n_folds, task="regression", fallback=fold_fallback)
        return
    rows = (col.notna() & (col.astype(str) != "")).to_numpy()
    counts = col[rows].value_counts()
    if len(counts) < 2:
        raise ProbeError(f"target {target!r} has {len(counts)} class(es) "
                         f"({', '.join(map(str, counts.index)) or 'none'}) in the selected rows; "
                         "a probe needs at least two")
    group_stratified_folds(col[rows].astype(str).to_numpy(), dataset.frame["group"][rows].to_numpy(),
                           n_folds, task="classification", fallback=fold_fallback)
