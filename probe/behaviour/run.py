"""What ``probe behave`` runs: load, cache what is missing, ask, compare, write, summarise.

Each experiment is one function taking the loaded pieces (:class:`Context`) and returning its
tables, items and figures, so later experiments (persistence, steering flips, ``probe
report``) can call the same pieces.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from probe.behaviour.compare import CompareConfig, compare
from probe.behaviour.experiments import parse_experiments
from probe.behaviour.figures import plot_emotionprompt, plot_personas, plot_probe_vs_behaviour
from probe.behaviour.recognition import RecognitionConfig, recognise, summarise
from probe.behaviour.runfiles import tidy, write_run
from probe.behaviour.templates import TemplateError, select_templates, task_kind
from probe.evaluate import EvalConfig
from probe.io import command_line as typed_command
from probe.io import run_folder


@dataclass
class Context:
    """Everything an experiment needs, loaded once."""

    args: argparse.Namespace
    lm: object
    dataset: object
    full: object
    target: str
    kind: str
    cache_config: object
    store: Path
    eval: EvalConfig
    out: Path
    tables: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)

    @property
    def progress(self) -> bool:
        return not self.args.quiet

    def ensure_store(self) -> Path:
        from probe.cache import cache_activations

        return cache_activations(self.lm, self.dataset, config=self.cache_config, out=self.store,
                                 progress=self.progress)


def command_line(args) -> str:
    """The command as typed (``args.argv`` is set by ``probe.cli.main``)."""
    return typed_command(getattr(args, "argv", []))


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def behave(args, *, load_data, load_model, cache_config) -> int:
    """``probe behave``: see :mod:`probe.behaviour.cli`."""
    from probe.cache import default_store_path

    t0 = time.time()
    experiments = parse_experiments(args.experiments)
    full = load_data(argparse.Namespace(**{**vars(args), "limit": None}))
    dataset = full.limit(args.limit)
    target = args.target or dataset.default_target
    kind = task_kind(target, dataset.target_kind(target))
    select_templates(kind, _names(args.templates))  # fail before loading the model
    _check_options(args, experiments, kind)
    if "persistence" in experiments and kind == "rating":
        raise TemplateError("--experiments persistence needs a classification target (it reads "
                            "P(true class)); pick one with --target")
    if {"recognition", "personas", "persistence"} & set(experiments):
        _check_folds(dataset, target, kind, args.folds, getattr(args, "fold_fallback", "error"))
    lm = load_model(args)
    config = cache_config(args)
    store = Path(args.store) if args.store else default_store_path(
        lm, dataset, config, Path(args.cache_dir) if args.cache_dir else None)
    out = run_folder(args.out, lm.spec.alias, f"behave-{dataset.name}-{target}")
    ctx = Context(args=args, lm=lm, dataset=dataset, full=full, target=target, kind=kind,
                  cache_config=config, store=store, out=out, eval=EvalConfig(
                      n_folds=args.folds, C=args.C, alpha=args.alpha, n_bootstrap=args.bootstrap,
                      seed=args.seed, control=False, lexical=False, device=str(lm.device),
                      fold_fallback=getattr(args, "fold_fallback", "error")))
    for name in experiments:
        {"recognition": run_recognition, "personas": run_personas,
         "emotionprompt": run_emotionprompt, "persistence": run_persistence}[name](ctx)
    ctx.run.update(command=command_line(args), experiments=list(experiments),
                   dataset=dataset.name, n_rows=len(dataset), limit=args.limit, target=target,
                   task=kind, store=str(store), cache=asdict(config), eval=asdict(ctx.eval),
                   provenance=lm.provenance(), seconds=round(time.time() - t0, 1))
    write_run(out, tidy(ctx.tables), ctx.items, ctx.run)
    print(f"\nresults: {out}  (results.csv/json, items_*.csv, run.json, *.png/svg)")
    return 0


def _check_folds(dataset, target: str, kind: str, n_folds: int, fallback: str = "error") -> None:
    """The probes need ``n_folds`` group-aware folds of the usable rows: check before any
    model work (raises ProbeError with the fix)."""
    from probe.behaviour.recognition import usable_rows
    from probe.stats import group_stratified_folds

    rows = usable_rows(dataset, target)
    y = dataset.frame[target].to_numpy()[rows]
    task = "regression" if kind == "rating" else "classification"
    group_stratified_folds(y.astype(float) if task == "regression" else y.astype(str),
                           dataset.frame["group"].to_numpy()[rows], n_folds, task=task,
                           fallback=fallback)


def _check_options(args, experiments, kind) -> None:
    from probe.behaviour.emotionprompt import conditions
    from probe.behaviour.sysprompt import PERSONAS

    if "personas" in experiments:
        if kind == "rating":
            raise TemplateError("--experiments personas needs a classification target (its "
                                "directions are class directions); pick one with --target")
        bad = [p for p in _names(args.personas) or () if p not in PERSONAS or p == "none"]
        if bad:
            raise TemplateError(f"unknown persona {bad[0]!r}; choose from "
                                f"{', '.join(p for p in PERSONAS if p != 'none')}")
        select_templates(kind, _names(args.persona_templates))
    if "emotionprompt" in experiments:
        conditions(_names(args.stimuli))


# ----------------------------------------------------------------------------- recognition


def run_recognition(ctx: Context) -> None:
    """Zero-shot answers, their summary, and the probe comparison on the same store."""
    args = ctx.args
    ctx.ensure_store()
    templates = tuple(t.name for t in select_templates(ctx.kind, _names(args.templates)))
    rc = RecognitionConfig(templates=templates, batch_size=args.batch_size,  # names, not "default"
                           max_new_tokens=args.max_new_tokens, system_prompt=args.system_prompt,
                           context=args.context, n_context=args.n_context)
    items = recognise(ctx.lm, ctx.dataset, target=ctx.target, config=rc, full=ctx.full,
                      progress=ctx.progress)
    summary = summarise(items, n_boot=args.bootstrap, seed=args.seed)
    table = compare(ctx.store, items, target=ctx.target, config=CompareConfig(eval=ctx.eval))
    ctx.tables["recognition"] = summary.assign(estimator="zero-shot")
    ctx.tables["compare"] = table[table["estimator"] != "zero-shot"]
    ctx.items["recognition"] = items
    ctx.run["recognition"] = {"config": asdict(rc), "context_shown": items.attrs["context"],
                              "n_items": int(items["id"].nunique()),
                              "n_compared": table.attrs["n"], "n_folds": table.attrs["n_folds"]}
    for pooling in table["pooling"].dropna().unique():
        plot_probe_vs_behaviour(table, pooling=pooling,
                                out=ctx.out / f"probe_vs_behaviour_{pooling}",
                                title=f"{ctx.lm.spec.alias} · {ctx.dataset.name} · {ctx.target} · "
                                      f"{pooling} pooling · n={table.attrs['n']}")
    print(format_recognition(summary, table))


def _at(df: pd.DataFrame, **kw) -> pd.DataFrame:
    mask = np.ones(len(df), bool)
    for k, v in kw.items():
        mask &= (df[k] == v).fillna(False).to_numpy(bool)
    return df[mask]


def _ci(r, sign: str = "") -> str:
    return f"{r['value']:{sign}.3f} [{r['ci_low']:{sign}.3f}, {r['ci_high']:{sign}.3f}]"


def format_recognition(summary: pd.DataFrame, table: pd.DataFrame) -> str:
    """The terminal summary: probe peaks, then one line per template and variant."""
    metric = "pearson_r" if "pearson_r" in set(table["metric"]) else "accuracy"
    lines = []
    peaks = {}
    for pooling in table["pooling"].dropna().unique():
        probe = _at(table, estimator="probe", metric=metric, pooling=pooling)
        best = probe.loc[probe["value"].idxmax()]
        peaks[pooling] = int(best["layer"])
        lines.append(f"probe ({pooling}): peak L{peaks[pooling]} {metric} {_ci(best)}")
    pooling = next(iter(peaks))
    lines.append(f"\nzero-shot vs probe at L{peaks[pooling]} ({pooling} pooling); n="
                 f"{table.attrs['n']}:")
    head = f"{'template':18s} {'variant':9s} {'zero-shot ' + metric:28s} {'gap (probe-zs)':27s} " \
           f"{'agree':>6s} {'AUROC conf':>10s} {'coverage':>8s} answer@"
    lines.append(head)
    for (template, variant), zs in summary.groupby(["template", "variant"], sort=False):
        zrow = _at(zs, metric=metric)
        if zrow.empty:
            continue
        at = _at(table, template=template, variant=variant, pooling=pooling, layer=peaks[pooling])
        gap = _at(at, metric="gap")
        agree = _at(at, metric="agreement")
        conf = _at(at, metric="auroc_confidence")
        first = _at(table, template=template, variant=variant, pooling=pooling,
                    metric="first_layer")
        cov = _at(zs, metric="coverage")["value"].iloc[0]
        lines.append(
            f"{template:18s} {variant:9s} {_ci(zrow.iloc[0]):28s} "
            f"{(_ci(gap.iloc[0], '+') if len(gap) else '—'):27s} "
            f"{(f'{agree.iloc[0].value:.2f}' if len(agree) else '—'):>6s} "
            f"{(f'{conf.iloc[0].value:.2f}' if len(conf) else '—'):>10s} {cov:8.2f} "
            f"{(_layer(first.iloc[0].value) if len(first) else '—')}")
    return "\n".join(lines)


def _layer(v) -> str:
    return "never" if pd.isna(v) else f"L{int(v)}"


# ----------------------------------------------------------------------------- personas


def run_personas(ctx: Context) -> None:
    """Persona stores, the representation shift, and the zero-shot answer shift."""
    from probe.behaviour.sysprompt import PERSONAS, ShiftConfig, answer_shift, representation_shift
    from probe.cache import cache_activations, default_store_path
    from probe.models import ModelError

    args, lm = ctx.args, ctx.lm
    if not lm.chat_template:
        raise ModelError(f"{lm.spec.alias} is used without a chat template, so it has no system "
                         "prompt to set; personas need an instruct model with one")
    names = ["none", *(_names(args.personas) or ())]
    prompts = {p: (PERSONAS[p] if p != "none" else args.system_prompt) for p in names}
    root = Path(args.cache_dir) if args.cache_dir else None
    stores = {}
    for p, prompt in prompts.items():
        cfg = replace(ctx.cache_config, system_prompt=prompt)
        path = ctx.store if p == "none" else default_store_path(lm, ctx.dataset, cfg, root)
        stores[p] = cache_activations(lm, ctx.dataset, config=cfg, out=path, progress=ctx.progress)
    shift = representation_shift(stores, target=ctx.target, config=ShiftConfig(eval=ctx.eval))
    templates = [t.name for t in select_templates(ctx.kind, _names(args.persona_templates))]
    items = {}
    for p, prompt in prompts.items():
        done = ctx.items.get("recognition")
        if p == "none" and done is not None and set(templates) <= set(done["template"]):
            items[p] = done[done["template"].isin(templates)].reset_index(drop=True)
            items[p].attrs = done.attrs  # asked already, with the same system prompt
            continue
        rc = RecognitionConfig(templates=tuple(templates), batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, system_prompt=prompt,
                               context=args.context, n_context=args.n_context)
        items[p] = recognise(lm, ctx.dataset, target=ctx.target, config=rc, full=ctx.full,
                             progress=ctx.progress)
    answers = answer_shift(items, n_boot=args.bootstrap, seed=args.seed)
    ctx.tables["personas"] = shift
    ctx.tables["persona-answers"] = answers
    ctx.items["personas"] = pd.concat([df.assign(persona=p) for p, df in items.items()],
                                      ignore_index=True)
    ctx.run["personas"] = {"system_prompts": prompts,
                           "stores": {k: str(v) for k, v in stores.items()},
                           "contrast": shift.attrs["contrast"]}
    for pooling in shift["pooling"].unique():
        plot_personas(shift, answers, pooling=pooling, out=ctx.out / f"personas_{pooling}",
                      title=f"{lm.spec.alias} · {ctx.dataset.name} · system prompts · "
                            f"{pooling} pooling · n={shift.attrs['n']}")
    print(format_personas(shift, answers, lm.n_layers))


def format_personas(shift: pd.DataFrame, answers: pd.DataFrame, n_layers: int) -> str:
    contrast = shift.attrs.get("contrast")
    if not contrast:
        return "\npersonas: the classes have no positive/negative pair; see results.csv"
    name = f"{contrast[0]}-{contrast[1]}"
    mid = n_layers // 2
    lines = [f"\nsystem prompts: shift of the {name} contrast vs none (L{mid} and L{n_layers - 1})"]
    for pooling in shift["pooling"].unique():
        for persona in shift["persona"].unique():
            parts = []
            for direction in ("probe-logit", "mean-difference"):
                for layer in (mid, n_layers - 1):
                    r = _at(shift, persona=persona, direction=direction, pooling=pooling,
                            layer=layer)
                    r = r[r["class"] == name]
                    if len(r):
                        parts.append(f"{direction} L{layer} {r.iloc[0]['value']:+.2f} "
                                     f"[{r.iloc[0]['ci_low']:+.2f}, {r.iloc[0]['ci_high']:+.2f}]")
            acc = _at(answers, persona=persona, metric="accuracy_shift")
            acc = acc[acc["variant"] != "mean"]
            accs = "; ".join(f"{r.template}/{r.variant} {r.value:+.3f} [{r.ci_low:+.3f}, "
                             f"{r.ci_high:+.3f}]" for r in acc.itertuples())
            lines.append(f"  {persona} ({pooling}): " + "; ".join(parts))
            if accs:
                lines.append(f"      zero-shot accuracy change: {accs}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- emotionprompt


def run_emotionprompt(ctx: Context) -> None:
    """Task accuracy with each stimulus and the answer-position representation shift."""
    from probe.behaviour import emotionprompt as ep
    from probe.cache import CacheConfig, cache_activations, default_store_path
    from probe.data import load_dataset

    args, lm = ctx.args, ctx.lm
    tasks = ep.load_tasks()
    conds = ep.conditions(_names(args.stimuli))
    items = ep.task_accuracy(lm, tasks, conds, batch_size=args.batch_size, progress=ctx.progress)
    accuracy = ep.accuracy_table(items, n_boot=args.bootstrap, seed=args.seed)
    root = Path(args.cache_dir) if args.cache_dir else None
    prompts = ep.prompt_dataset(tasks, conds, raw=not lm.chat_template)
    cfg = CacheConfig(sites="blocks.*.hook_resid_post", poolings=("last",),
                      batch_size=args.batch_size, store_dtype=args.store_dtype)
    prompt_store = cache_activations(lm, prompts, config=cfg, progress=ctx.progress,
                                     out=default_store_path(lm, prompts, cfg, root))
    scen = load_dataset("emotion-scenarios")
    dcfg = replace(ctx.cache_config, system_prompt=None, poolings=tuple(dict.fromkeys(
        ("last", *ctx.cache_config.poolings))))
    direction_store = cache_activations(lm, scen, config=dcfg, progress=ctx.progress,
                                        out=default_store_path(lm, scen, dcfg, root))
    shift = ep.representation_shift(prompt_store, direction_store, n_boot=args.bootstrap,
                                     seed=args.seed)
    ctx.tables["emotionprompt"] = accuracy
    ctx.tables["emotionprompt-shift"] = shift
    ctx.items["emotionprompt"] = items
    ctx.run["emotionprompt"] = {"stimuli": conds, "tasks": str(ep.tasks_path()),
                                "prompt_store": str(prompt_store),
                                "direction_store": str(direction_store)}
    plot_emotionprompt(accuracy, shift, out=ctx.out / "emotionprompt",
                       title=f"{lm.spec.alias} · EmotionPrompt / NegativePrompt · "
                             f"{len(tasks)} task items")
    print(format_emotionprompt(accuracy, shift, lm.n_layers))


def format_emotionprompt(accuracy: pd.DataFrame, shift: pd.DataFrame, n_layers: int) -> str:
    mid = n_layers // 2
    lines = [f"\nEmotionPrompt / NegativePrompt ({int(accuracy['n'].max())} items): accuracy, "
             f"change vs none (paired), valence shift at L{mid}"]
    for cond in accuracy["condition"].unique():
        acc = _at(accuracy, condition=cond, task="(all)", metric="accuracy").iloc[0]
        d = _at(accuracy, condition=cond, task="(all)", metric="accuracy_shift")
        s = _at(shift, condition=cond, layer=mid)
        lines.append(f"  {cond:8s} {_ci(acc)}"
                     + (f"  change {d.iloc[0]['value']:+.3f} [{d.iloc[0]['ci_low']:+.3f}, "
                        f"{d.iloc[0]['ci_high']:+.3f}]" if len(d) else "")
                     + (f"  valence {s.iloc[0]['value']:+.2f} SD [{s.iloc[0]['ci_low']:+.2f}, "
                        f"{s.iloc[0]['ci_high']:+.2f}]" if len(s) else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- persistence


def run_persistence(ctx: Context) -> None:
    """Fold probes on the store's ``last`` pooling read along a continuation of each stimulus."""
    from probe.behaviour import persistence as ps
    from probe.behaviour.figures import plot_persistence
    from probe.cache import cache_activations, default_store_path

    args, lm = ctx.args, ctx.lm
    store = ctx.store
    if "last" not in ctx.cache_config.poolings:  # the probe must be trained on `last` pooling
        cfg = replace(ctx.cache_config, poolings=("last", *ctx.cache_config.poolings))
        store = default_store_path(lm, ctx.dataset, cfg,
                                   Path(args.cache_dir) if args.cache_dir else None)
        cache_activations(lm, ctx.dataset, config=cfg, out=store, progress=ctx.progress)
    else:
        ctx.ensure_store()
    pc = ps.PersistenceConfig(mode=args.persistence_mode, max_distance=args.max_distance,
                              passage=args.passage, batch_size=args.batch_size, eval=ctx.eval)
    p = ps.read_persistence(lm, store, target=ctx.target, config=pc, progress=ctx.progress)
    table = ps.persistence_table(p, n_boot=args.bootstrap, seed=args.seed)
    ctx.tables["persistence"] = table.assign(site=pc.site, n_folds=args.folds)
    ctx.items["persistence"] = ps.items_table(p)
    L = len(p.layers)
    shown = sorted({p.layers[i] for i in (0, L // 4, L // 2, (3 * L) // 4, L - 1)})
    ctx.run["persistence"] = {
        "config": asdict(pc), "store": str(store), "n_items": len(p.ids),
        "layers_plotted": shown, "continuation_tokens": [int(p.n_tokens.min()),
                                                         int(p.n_tokens.max())],
        "continuation_example": p.continuations[0][:500],
        "pooling_read": "the residual at each single position = `last` pooling of the text cut "
                        "there (what the probe was trained on)"}
    plot_persistence(ps.curves(p, shown, n_boot=args.bootstrap, seed=args.seed), table,
                     out=ctx.out / "persistence",
                     title=f"{lm.spec.alias} · {ctx.dataset.name} · persistence "
                           f"({pc.mode} continuation) · n={len(p.ids)} held-out stimuli")
    print(format_persistence(table, shown))


def format_persistence(table: pd.DataFrame, layers) -> str:
    """P(true) after the stimulus and the control at a few layers and distances."""
    prior = _at(table, condition="prior")["value"].iloc[0]
    bins = list(dict.fromkeys(table["distance"].dropna()))
    keep = [b for b in bins if b in ("0", "4-7", "16-31", "64-127")] + bins[-1:]
    lines = [f"\npersistence: P(true emotion) by distance from the stimulus's end "
             f"(prior {prior:.3f}); stimulus / control / difference [95% CI]"]
    for layer in layers:
        for b in dict.fromkeys(keep):
            r = {c: _at(table, condition=c, metric="p_true", layer=layer, distance=b)
                 for c in ("stimulus", "control", "difference")}
            if any(v.empty for v in r.values()):
                continue
            s, c, d = (r[k].iloc[0] for k in ("stimulus", "control", "difference"))
            lines.append(f"  L{layer:<3d} d={b:8s} {s['value']:.3f}  {c['value']:.3f}  "
                         f"{_ci(d, '+')}")
    return "\n".join(lines)
