"""What ``probe sweep`` runs: check the target, cache what is missing, probe, write, summarise.

Everything that can be checked without the model (target, task, classes, folds, the held-out
side's labels) is checked first, so a bad request fails in a second with nothing written.
:func:`probe.sweep.probe_store` does the probing; this module is the command around it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from probe.evaluate import EvalConfig
from probe.heldout import check_label_sets, split_rows
from probe.io import command_line, run_folder
from probe.lazy import parse_memory, require_dask
from probe.objectstore import check as check_url
from probe.objectstore import normalize
from probe.sites import parse_sites
from probe.stats import ProbeError, group_stratified_folds
from probe.store import open_store
from probe.sweep import probe_store
from probe.targets import TargetTask, resolve_task


def sweep_from_args(args, *, load_data, load_model, cache_config) -> int:
    """``probe sweep``: cache what is missing, probe, write results and figures, summarise."""
    from probe.cache import cache_activations, check_lengths_early, default_store_path

    t0 = time.time()
    if args.split_eval and (args.eval_dataset or args.eval_store):
        raise ProbeError("--split-eval holds out rows of the same dataset; it cannot be combined "
                         "with --eval-dataset / --eval-store")
    if args.eval_dataset and args.eval_store:
        raise ProbeError("give either --eval-dataset (cached for you) or --eval-store, not both")
    for url in (args.store, args.eval_store):
        check_url(url)  # a missing backend fails before the model loads
    if getattr(args, "memory", None) is not None:
        parse_memory(args.memory)  # a bad size, or Dask missing: before the model loads
        require_dask()
    dataset = load_data(args)
    target = args.target or dataset.default_target
    tt = check_target(dataset, target, task=args.task, n_folds=args.folds,
                      fold_fallback=args.fold_fallback, split_eval=args.split_eval)
    eval_dataset = None
    if args.eval_dataset:
        eval_dataset = load_data(argparse.Namespace(**{**vars(args), "dataset": args.eval_dataset,
                                                       "split": args.eval_split,
                                                       "limit": args.eval_limit}))
        check_heldout_target(eval_dataset, tt)
    print(tt.describe())
    if getattr(args, "probe", None):
        from probe.probe_kinds import probe_kind

        probe_kind(args.probe, tt.task)  # an unknown kind, or one for the other task: before caching
    config = cache_config(args)
    for data in (dataset, eval_dataset):  # too-long texts: from the tokenizer, before the model
        if data is not None:
            check_lengths_early(args.model, data, config, chat_template=args.chat_template,
                                allow_download=args.allow_download)
    lm = load_model(args)
    root = Path(args.cache_dir) if args.cache_dir else None
    store = (normalize(args.store) if args.store
             else default_store_path(lm, dataset, config, root).absolute())
    cache_activations(lm, dataset, config=config, out=store, progress=not args.quiet)
    eval_store = normalize(args.eval_store) if args.eval_store else None
    if eval_dataset is not None:
        eval_store = default_store_path(lm, eval_dataset, config, root).absolute()
        cache_activations(lm, eval_dataset, config=config, out=eval_store, progress=not args.quiet)
    eval_config = EvalConfig(**{k: v for k, v in dict(
        n_folds=args.folds, C=args.C, alpha=args.alpha, n_bootstrap=args.bootstrap, seed=args.seed,
        control=args.control, lexical=args.lexical, device=str(lm.device),
        fold_fallback=args.fold_fallback, max_iter=args.max_iter,
        probe=getattr(args, "probe", None)).items() if v is not None})
    out = run_folder(args.out, lm.spec.alias, f"{dataset.name}-{target}")
    results = probe_store(store, target=target, task=tt.task,
                          sites=parse_sites(config.sites, n_layers=lm.n_layers),
                          config=eval_config, eval_store=eval_store, split_eval=args.split_eval,
                          target_words=_words(dataset), eval_target_words=_words(eval_dataset),
                          probes_dir=out if args.save_probes else None, progress=not args.quiet,
                          memory=getattr(args, "memory", None))
    # the task was resolved above from what the user passed (--task or nothing); probe_store was
    # handed the resolved task, so its own reason would read "--task ..." even when inferred
    results.attrs["task_reason"] = tt.reason
    heldout_name = _heldout_name(args, dataset, eval_dataset, eval_store)
    run = _run_record(args, results, store, eval_store, heldout_name, config, eval_config, t0)
    _write_and_report(out, results, run, title=f"{lm.spec.alias} · {dataset.name}",
                      heldout_name=heldout_name)
    print(f"store:   {store}" + (f"\nheld-out store: {eval_store}" if eval_store else ""))
    return 0


def _heldout_name(args, dataset, eval_dataset, eval_store) -> str | None:
    """What the held-out data are called in the summary and the legend."""
    if args.split_eval:
        return f"split {args.split_eval}"
    if eval_store is None:
        return None
    name = eval_dataset.name if eval_dataset is not None else \
        open_store(eval_store).attrs["emoprobe"].get("dataset")
    where = args.eval_dataset.split(":", 1)[-1] if eval_dataset is not None else str(eval_store)
    part = args.eval_split or (Path(where).name if name == dataset.name else name)
    return name if part == name else f"{name} ({part})"  # parts of one dataset: say which


def _words(dataset) -> list | None:
    if dataset is None or "target_word" not in dataset.frame:
        return None
    return dataset.frame["target_word"].tolist()


def _run_record(args, results, store, eval_store, heldout_name, config, eval_config, t0) -> dict:
    attrs = results.attrs
    run = {"command": command_line(args.argv),
           "store": str(store), "target": attrs.get("target"), "task": attrs.get("task"),
           "task_reason": attrs.get("task_reason"), "n_used": attrs.get("n_used"),
           "n_dropped_no_target": attrs.get("n_dropped"), "n_folds": attrs.get("n_folds"),
           "control_key_coverage": attrs.get("control_key_coverage"),
           "cache": asdict(config), "eval": asdict(eval_config),
           "provenance": open_store(store).attrs["emoprobe"]}
    if eval_store is not None or args.split_eval:
        run["heldout"] = {"dataset": heldout_name, "store": str(eval_store) if eval_store else None,
                          "split_eval": args.split_eval, "n": attrs.get("n_heldout"),
                          "n_dropped_no_target": attrs.get("n_heldout_dropped"),
                          "provenance": open_store(eval_store).attrs["emoprobe"]
                          if eval_store else None}
    if args.save_probes:
        run["probes"] = ("probes/<site>.safetensors (+ .json); "
                         "probe.saved.load_probe(run, site, pooling=...)")
    run["seconds"] = round(time.time() - t0, 1)
    return run


def _write_and_report(out: Path, results, run: dict, *, title: str, heldout_name) -> None:
    from probe.figures import plot_layerwise, plot_sweep_panels
    from probe.results import format_summary, write_results, write_run_record

    write_results(out, results, run, record=False)  # run.json last: after the figures
    attrs, target = results.attrs, run["target"]
    for pooling in results["pooling"].dropna().unique():
        head = f"{title}\n{target} · {pooling} pooling"
        plot_layerwise(results, pooling=pooling, title=head, out=out / f"layerwise_{pooling}",
                       heldout_label=heldout_name)
        plot_sweep_panels(results, pooling=pooling, title=head.replace("\n", " · "),
                          out=out / f"panels_{pooling}", heldout_label=heldout_name)
        counts = f"n={attrs.get('n_used')}"
        if attrs.get("split_eval"):
            counts = f"trained on {attrs['n_train']}, held out {attrs['n_heldout']} " \
                     f"(--split-eval {attrs['split_eval']})"
        elif attrs.get("n_heldout"):
            counts += f"; held out on {heldout_name}: n={attrs['n_heldout']}"
        print(f"\n{target} ({attrs.get('task')}), pooling {pooling}, {counts}:")
        print(format_summary(results, pooling=pooling))
    coverage = attrs.get("control_key_coverage") or {}
    if coverage:
        print("\ncontrol task: share of test rows whose key was seen in training (the control "
              "can only be learned for those)")
    for pooling, entry in coverage.items():
        seen = ", ".join(f"{entry[k]:.0%} {'held-out' if k == 'heldout' else 'in CV'}"
                         for k in ("cv", "heldout") if k in entry)
        fitted = ((results["estimator"] == "control") & (results["pooling"] == pooling)).any()
        print(f"  {pooling}: keyed on {entry['key']}; {seen}"
              + ("" if fitted else " (control task skipped: see the warning)"))
    if attrs.get("n_dropped"):
        print(f"\nnote: {attrs['n_dropped']} row(s) without a {target!r} value were left out")
    write_run_record(out, run)
    print(f"\nresults: {out}  (results.csv/json, run.json, layerwise_*.png/svg, panels_*.png/svg"
          + (", probes/*.safetensors+json: probe.saved.load_probe)" if run.get("probes") else ")"))


def check_target(dataset, target: str, *, task: str | None, n_folds: int, fold_fallback: str,
                 split_eval: str | None = None) -> TargetTask:
    """Fail before any model work when the target cannot be probed (task, classes, groups,
    folds or splits); returns the resolved target."""
    kind = dataset.target_kind(target)
    if kind == "multilabel":
        single = ", ".join(k for k, v in dataset.targets.items() if v != "multilabel")
        raise ProbeError(f"target {target!r} is multi-label; choose a single-label target "
                         f"({single})")
    tt = resolve_task(dataset.frame[target].to_numpy(), kind, target=target, task=task)
    distinct = len(np.unique(tt.y))
    if distinct < 2:
        what = "class(es)" if tt.task == "classification" else "distinct value(s)"
        raise ProbeError(f"target {target!r} has {distinct} {what} "
                         f"({', '.join(map(str, np.unique(tt.y)[:3])) or 'none'}) in the selected "
                         "rows; a probe needs at least two")
    groups = dataset.frame["group"].to_numpy()[tt.rows]
    if split_eval:
        train, test = split_rows(dataset.frame["split"].to_numpy()[tt.rows], split_eval)
        if tt.task == "classification":
            check_label_sets(tt.y[train], tt.y[test], target)
        return tt
    group_stratified_folds(tt.y, groups, n_folds, task=tt.task, fallback=fold_fallback)
    return tt


def check_heldout_target(dataset, tt: TargetTask) -> None:
    """The held-out dataset has the target, with the same task and the same classes."""
    if tt.target not in dataset.targets:
        raise ProbeError(f"the held-out dataset {dataset.name!r} has no target {tt.target!r}; its "
                         f"targets are {sorted(dataset.targets)}")
    held = resolve_task(dataset.frame[tt.target].to_numpy(), dataset.target_kind(tt.target),
                        target=tt.target, task=tt.task)
    if not len(held.rows):
        raise ProbeError(f"the held-out dataset {dataset.name!r} has no rows with a {tt.target!r} "
                         "value")
    if tt.task == "classification":
        check_label_sets(tt.y, held.y, tt.target)
