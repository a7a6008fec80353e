"""What ``probe behave`` runs: load, cache what is missing, ask, compare, write, summarise.

Each experiment is one function taking the loaded pieces (:class:`Context`) and its options
(:mod:`probe.behaviour.options`, plain values) and filling the context's tables, items and
figures, so later experiments (persistence, steering flips, ``probe report``) can call the same
pieces. Nothing here reads the command line: :mod:`probe.behaviour.cli` turns flags into options.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from probe.behaviour.compare import CompareConfig, compare
from probe.behaviour.experiments import check_experiments
from probe.behaviour.figures import plot_emotionprompt, plot_personas, plot_probe_vs_behaviour
from probe.behaviour.options import (
    BehaveOptions,
    EmotionPromptOptions,
    PersistenceOptions,
    PersonaOptions,
    RecognitionOptions,
)
from probe.behaviour.recognition import RecognitionConfig, recognise, summarise
from probe.behaviour.runfiles import tidy, write_run
from probe.behaviour.templates import TemplateError, select_templates, task_kind
from probe.evaluate import EvalConfig
from probe.io import run_folder


@dataclass
class Context:
    """Everything an experiment needs, loaded once.

    ``cache_config`` also gives the batch size, system prompt and store dtype; ``eval`` the
    folds, bootstrap resamples and seed; ``cache_dir`` is the root of the stores an experiment
    adds (None: the default).
    """

    lm: object
    dataset: object
    full: object
    target: str
    kind: str
    cache_config: object
    store: Path
    eval: EvalConfig
    out: Path
    cache_dir: Path | None = None
    progress: bool = True
    tables: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)

    def ensure_store(self) -> Path:
        from probe.cache import cache_activations

        return cache_activations(self.lm, self.dataset, config=self.cache_config, out=self.store,
                                 progress=self.progress)


def behave(options: BehaveOptions, *, full, cache_config, load_model: Callable[[], object]) -> int:
    """Run ``options.experiments`` on ``full`` (the whole dataset, cut to ``options.limit``
    here) and write the run folder; see :mod:`probe.behaviour.cli`.

    Args:
        options: What to run, the probing protocol and where files go.
        full: The dataset, not yet cut to ``options.limit`` (dialogue context reads all rows).
        cache_config: The :class:`probe.cache.CacheConfig` of the default store.
        load_model: Loads the model; called after the cheap checks, so a mistake in the
            options fails in seconds.
    """
    from probe.cache import default_store_path

    t0 = time.time()
    experiments = check_experiments(options.experiments)
    dataset = full.limit(options.limit)
    target = options.target or dataset.default_target
    kind = task_kind(target, dataset.target_kind(target))
    select_templates(kind, options.recognition.templates)  # fail before loading the model
    _check_options(options, experiments, kind)
    if "persistence" in experiments and kind == "rating":
        raise TemplateError("--experiments persistence needs a classification target (it reads "
                            "P(true class)); pick one with --target")
    if {"recognition", "personas", "persistence"} & set(experiments):
        _check_folds(dataset, target, kind, options.folds, options.fold_fallback)
    lm = load_model()
    cache_dir = Path(options.cache_dir) if options.cache_dir else None
    store = Path(options.store) if options.store else default_store_path(
        lm, dataset, cache_config, cache_dir)
    out = run_folder(options.out, lm.spec.alias, f"behave-{dataset.name}-{target}")
    ctx = Context(lm=lm, dataset=dataset, full=full, target=target, kind=kind,
                  cache_config=cache_config, store=store, out=out, cache_dir=cache_dir,
                  progress=not options.quiet, eval=EvalConfig(
                      n_folds=options.folds, C=options.C, alpha=options.alpha,
                      n_bootstrap=options.bootstrap, seed=options.seed, control=False,
                      lexical=False, device=str(lm.device), fold_fallback=options.fold_fallback))
    for name in experiments:
        RUNNERS[name](ctx, options)
    ctx.run.update(command=options.command, experiments=list(experiments),
                   dataset=dataset.name, n_rows=len(dataset), limit=options.limit, target=target,
                   task=kind, store=str(store), cache=asdict(cache_config), eval=asdict(ctx.eval),
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


def _check_options(options: BehaveOptions, experiments, kind) -> None:
    from probe.behaviour.emotionprompt import conditions
    from probe.behaviour.sysprompt import PERSONAS

    if "personas" in experiments:
        if kind == "rating":
            raise TemplateError("--experiments personas needs a classification target (its "
                                "directions are class directions); pick one with --target")
        bad = [p for p in options.personas.personas or () if p not in PERSONAS or p == "none"]
        if bad:
            raise TemplateError(f"unknown persona {bad[0]!r}; choose from "
                                f"{', '.join(p for p in PERSONAS if p != 'none')}")
        select_templates(kind, options.personas.templates)
    if "emotionprompt" in experiments:
        conditions(options.emotionprompt.stimuli)


# ----------------------------------------------------------------------------- recognition


def run_recognition(ctx: Context, options: RecognitionOptions | None = None) -> None:
    """Zero-shot answers, their summary, and the probe comparison on the same store."""
    options = options or RecognitionOptions()
    ctx.ensure_store()
    templates = tuple(t.name for t in select_templates(ctx.kind, options.templates))
    rc = _recognition_config(ctx, options, templates, ctx.cache_config.system_prompt)
    items = recognise(ctx.lm, ctx.dataset, target=ctx.target, config=rc, full=ctx.full,
                      progress=ctx.progress)
    summary = summarise(items, n_boot=ctx.eval.n_bootstrap, seed=ctx.eval.seed)
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


def _recognition_config(ctx: Context, options: RecognitionOptions, templates,
                        system_prompt: str | None) -> RecognitionConfig:
    """How to ask: ``templates`` by name (not "default"), the store's batch size."""
    return RecognitionConfig(templates=tuple(templates), batch_size=ctx.cache_config.batch_size,
                             max_new_tokens=options.max_new_tokens, system_prompt=system_prompt,
                             context=options.context, n_context=options.n_context)


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


def run_personas(ctx: Context, options: PersonaOptions | None = None,
                 *, asking: RecognitionOptions | None = None) -> None:
    """Persona stores, the representation shift, and the zero-shot answer shift (each persona
    asked as ``asking`` says, with ``options.templates``)."""
    from probe.behaviour.sysprompt import PERSONAS, ShiftConfig, answer_shift, representation_shift
    from probe.cache import cache_activations, default_store_path
    from probe.models import ModelError

    lm, options, asking = ctx.lm, options or PersonaOptions(), asking or RecognitionOptions()
    if not lm.chat_template:
        raise ModelError(f"{lm.spec.alias} is used without a chat template, so it has no system "
                         "prompt to set; personas need an instruct model with one")
    names = ["none", *(options.personas or ())]
    prompts = {p: (PERSONAS[p] if p != "none" else ctx.cache_config.system_prompt) for p in names}
    root = ctx.cache_dir
    stores = {}
    for p, prompt in prompts.items():
        cfg = replace(ctx.cache_config, system_prompt=prompt)
        path = ctx.store if p == "none" else default_store_path(lm, ctx.dataset, cfg, root)
        stores[p] = cache_activations(lm, ctx.dataset, config=cfg, out=path, progress=ctx.progress)
    shift = representation_shift(stores, target=ctx.target, config=ShiftConfig(eval=ctx.eval))
    templates = [t.name for t in select_templates(ctx.kind, options.templates)]
    items = {}
    for p, prompt in prompts.items():
        done = ctx.items.get("recognition")
        if p == "none" and done is not None and set(templates) <= set(done["template"]):
            items[p] = done[done["template"].isin(templates)].reset_index(drop=True)
            items[p].attrs = done.attrs  # asked already, with the same system prompt
            continue
        rc = _recognition_config(ctx, asking, templates, prompt)
        items[p] = recognise(lm, ctx.dataset, target=ctx.target, config=rc, full=ctx.full,
                             progress=ctx.progress)
    answers = answer_shift(items, n_boot=ctx.eval.n_bootstrap, seed=ctx.eval.seed)
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


def run_emotionprompt(ctx: Context, options: EmotionPromptOptions | None = None) -> None:
    """Task accuracy with each stimulus and the answer-position representation shift."""
    from probe.behaviour import emotionprompt as ep
    from probe.cache import CacheConfig, cache_activations, default_store_path
    from probe.data import load_dataset

    lm, n_boot, seed = ctx.lm, ctx.eval.n_bootstrap, ctx.eval.seed
    options, batch_size = options or EmotionPromptOptions(), ctx.cache_config.batch_size
    tasks = ep.load_tasks()
    conds = ep.conditions(options.stimuli)
    items = ep.task_accuracy(lm, tasks, conds, batch_size=batch_size, progress=ctx.progress)
    accuracy = ep.accuracy_table(items, n_boot=n_boot, seed=seed)
    root = ctx.cache_dir
    prompts = ep.prompt_dataset(tasks, conds, raw=not lm.chat_template)
    cfg = CacheConfig(sites="blocks.*.hook_resid_post", poolings=("last",),
                      batch_size=batch_size, store_dtype=ctx.cache_config.store_dtype)
    prompt_store = cache_activations(lm, prompts, config=cfg, progress=ctx.progress,
                                     out=default_store_path(lm, prompts, cfg, root))
    scen = load_dataset("emotion-scenarios")
    dcfg = replace(ctx.cache_config, system_prompt=None, poolings=tuple(dict.fromkeys(
        ("last", *ctx.cache_config.poolings))))
    direction_store = cache_activations(lm, scen, config=dcfg, progress=ctx.progress,
                                        out=default_store_path(lm, scen, dcfg, root))
    shift = ep.representation_shift(prompt_store, direction_store, n_boot=n_boot, seed=seed)
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


def run_persistence(ctx: Context, options: PersistenceOptions | None = None) -> None:
    """Fold probes on the store's ``last`` pooling read along a continuation of each stimulus."""
    from probe.behaviour import persistence as ps
    from probe.behaviour.figures import plot_persistence
    from probe.cache import cache_activations, default_store_path

    lm, n_boot, seed = ctx.lm, ctx.eval.n_bootstrap, ctx.eval.seed
    options, store = options or PersistenceOptions(), ctx.store
    if "last" not in ctx.cache_config.poolings:  # the probe must be trained on `last` pooling
        cfg = replace(ctx.cache_config, poolings=("last", *ctx.cache_config.poolings))
        store = default_store_path(lm, ctx.dataset, cfg, ctx.cache_dir)
        cache_activations(lm, ctx.dataset, config=cfg, out=store, progress=ctx.progress)
    else:
        ctx.ensure_store()
    pc = ps.PersistenceConfig(mode=options.mode, max_distance=options.max_distance,
                              passage=options.passage, batch_size=ctx.cache_config.batch_size,
                              eval=ctx.eval)
    p = ps.read_persistence(lm, store, target=ctx.target, config=pc, progress=ctx.progress)
    table = ps.persistence_table(p, n_boot=n_boot, seed=seed)
    ctx.tables["persistence"] = table.assign(site=pc.site, n_folds=ctx.eval.n_folds)
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
    plot_persistence(ps.curves(p, shown, n_boot=n_boot, seed=seed), table,
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


#: Each experiment (:data:`probe.behaviour.experiments.EXPERIMENTS`) with its part of the
#: options; personas ask as recognition does (tokens, dialogue context).
RUNNERS: dict[str, Callable[[Context, BehaveOptions], None]] = {
    "recognition": lambda ctx, o: run_recognition(ctx, o.recognition),
    "personas": lambda ctx, o: run_personas(ctx, o.personas, asking=o.recognition),
    "emotionprompt": lambda ctx, o: run_emotionprompt(ctx, o.emotionprompt),
    "persistence": lambda ctx, o: run_persistence(ctx, o.persistence),
}
