"""``probe circuits`` as one function: attribute, validate, assemble, measure, write.

For each emotion of the metric (``direction:happiness,sadness@L24``):

1. scenario groups are split into training and held-out halves; directions and attributions
   use training scenarios only;
2. every component of the requested types is attributed (AtP, AtP* or IG) against the chosen
   baseline (mean ablation, aligned pairs, or zero);
3. with ``validate``, the estimator that ranks the circuit (or, without one, the run's) is
   checked against activation patching of every component (or its top N plus N random) on a
   few prompts, with bootstrap CIs over prompts, a random ranking's recall and split-half
   agreement;
4. a circuit of heads + neurons is chosen on training prompts by closeness to the model
   (normalised error, :mod:`circuits.closeness`) and judged on held-out prompts next to random
   circuits of the same composition, under three ablations, on what the model says, with its
   split-half stability (bootstrap CIs over scenarios);
5. tables, the circuit file, scores and figures are written to ``out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from circuits import figures, report
from circuits.ablations import ResampleBaseline
from circuits.assemble import CircuitConfig, find_circuit, overlap
from circuits.verdict import describe, verdict
from circuits.attribution import Attribution, attribute, component_layers
from circuits.baselines import MeanBaseline, ZeroBaseline, take
from circuits.components import groups as make_groups, parse_types
from circuits.edge_run import run_edges
from circuits.metrics import (
    MetricError,
    direction,
    EMOTION_WORDS,
    direction_tensor,
    emotion_directions,
    label_logprob,
    logit_diff,
    parse_metric_spec,
    says,
)
from circuits.pairs import make_pairs, rows_of, split_groups
from circuits.patching import patch, sublayer_influence
from circuits.stability import split_half
from circuits.validate import compare, compare_ci, select, summary, verdicts
from probe.artifacts import save_safetensors


@dataclass(frozen=True, kw_only=True)
class CircuitsConfig:
    """Everything ``probe circuits`` does, with its defaults (saved in run.json)."""

    metric: str = "direction:happiness@L24"
    components: tuple[str, ...] = ("heads", "neurons", "sublayers")
    estimator: Literal["atp", "atp*", "ig"] = "atp"
    baseline: Literal["mean", "pairs", "zero"] = "mean"
    align: Literal["length", "suffix"] = "length"
    label: str | None = None
    target: str | None = None
    prompts: int = 32
    validate: int | None = None  # components per type; -1: all
    validate_prompts: int = 8
    circuit: bool = True
    circuit_types: tuple[str, ...] = ("heads", "neurons")
    circuit_estimator: Literal["atp", "atp*", "ig"] = "ig"
    circuit_prompts: int = 16
    max_error: float = 0.2
    max_fraction: float = 0.05
    random_circuits: int = 20
    ablations: bool = True
    behaviour: bool = True
    influence_prompts: int = 8
    test_fraction: float = 0.5
    seed: int = 0
    batch_size: int = 16
    rows_per_forward: int = 64
    ig_steps: int = 8
    resid_positions: int = 8
    edges: int = 0  # EAP on every edge + edge patching of the top N and N random ones
    edge_estimator: str = "hybrid"  # circuits.edges.ESTIMATORS
    exact_nodes: int = 2  # hybrid: upstream nodes whose edges are patched, not estimated
    search_rounds: int = 20  # closeness search when the ranking's top 5% is not close (0: off)
    search_halvings: int = 3
    search_splits: int = 1
    search_stable: bool = True


def _metrics(lm, dataset, cfg: CircuitsConfig, train, out: Path):
    kind, args, layer = parse_metric_spec(cfg.metric)
    target = cfg.target or dataset.default_target
    classes = list(dataset.classes(target))
    if kind == "direction":
        dirs = emotion_directions(lm, dataset, layer=layer, groups=train, target=target)
        labels = list(dirs) if args == ["all"] else args
        bad = [a for a in labels if a not in dirs]
        if bad:
            raise MetricError(f"no direction for {bad[0]!r}: {target} has directions for "
                              f"{sorted(dirs)} (the neutral class has none)")
        dirs.save(out / "directions")
        return ({lab: direction(dirs[lab], layer=layer, lm=lm, name=f"direction:{lab}@L{layer}")
                 for lab in labels}, {lab: direction_tensor(dirs[lab], layer) for lab in labels})
    if kind == "says":
        bad = [a for a in args if a not in classes]
        if bad:
            raise MetricError(f"says:{bad[0]}: {target} has no class {bad[0]!r} (classes {classes})")
        return {lab: says(lm, lab) for lab in args}, None
    if cfg.label is None or cfg.label not in classes:
        raise MetricError(f"{kind} metrics need --label: whose prompts to explain (one of {classes})")
    m = logit_diff(lm, *args) if kind == "logit-diff" else label_logprob(lm, args[0])
    return {cfg.label: m}, None


def prompts_of(dataset, label, groups, n, target) -> tuple[list[str], list[str]]:
    """``n`` rows of ``label``, spread over the scenario groups: each group's first row, then
    each group's second, ... (a set with several rows per scenario, e.g. SEV replies, gives ``n``
    scenarios, not ``n / 3``, so CIs over scenarios have as many as there can be)."""
    rows = rows_of(dataset, label, target=target, groups=groups).sort_values("group", kind="stable")
    rows = rows.assign(_k=rows.groupby("group").cumcount()).sort_values(["_k", "group"], kind="stable")
    rows = rows.head(n).sort_values(["group", "_k"], kind="stable")
    return list(rows["text"]), list(rows["group"])


def run_circuits(lm, dataset, cfg: CircuitsConfig, out: str | Path, *,
                 log: Callable[[str], None] = print) -> dict:
    """Run the whole analysis (module docstring); returns the run summary written to run.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    types = parse_types(cfg.components)
    ctypes = parse_types(cfg.circuit_types) if cfg.circuit else ()
    target = cfg.target or dataset.default_target
    train, test = split_groups(dataset, test_fraction=cfg.test_fraction, seed=cfg.seed)
    log(f"scenario groups: {len(train)} for finding, {len(test)} held out")
    metrics, dirs = _metrics(lm, dataset, cfg, train, out)
    any_metric = next(iter(metrics.values()))
    layers, notes = component_layers(lm, any_metric)
    all_types = tuple(dict.fromkeys(types + ctypes + (("heads", "neurons") if cfg.edges else ())))
    means = None
    if cfg.baseline == "mean" or ctypes or cfg.edges:
        ref = dataset.frame[dataset.frame["group"].isin(train)].sort_values("group")
        sites = [g.site for g in make_groups(lm, all_types, layers, positions=cfg.resid_positions)]
        t = time.perf_counter()
        means = MeanBaseline.fit(lm, list(ref["text"]), sites, batch_size=cfg.batch_size)
        log(f"mean baseline over {len(ref)} training prompts ({time.perf_counter() - t:.0f} s)")
    resample = None
    if ctypes and cfg.ablations:  # resample ablation: up to 64 training prompts, seeded
        ref = dataset.frame[dataset.frame["group"].isin(train)]
        ref = ref.sample(n=min(64, len(ref)), random_state=cfg.seed).sort_values("group")
        sites = [g.site for g in make_groups(lm, ctypes, layers)]
        resample = ResampleBaseline.fit(lm, list(ref["text"]), sites, batch_size=cfg.batch_size,
                                        seed=cfg.seed)
        log(f"resample ablation: values of {len(ref)} training prompts")
    rows, summaries, circuits, curves_all, tensors = [], {}, [], [], {}
    for label, metric in metrics.items():
        log(f"\n== {label}: {metric.name}")
        res = _one(lm, dataset, cfg, label, metric, types, ctypes, train, test, target, means,
                   dirs, out, log, rows, tensors, resample)
        summaries[label] = res
        if "circuit" in res:
            circuits.append(res.pop("_circuit"))
            curves_all.append(res.pop("_curves").assign(name=label))
    if curves_all:
        curves = pd.concat(curves_all, ignore_index=True)
        figures.plot_faithfulness(curves, max_error=cfg.max_error,
                                  budget=int(cfg.max_fraction * circuits[0].n_candidates),
                                  chosen={c.name: (c.size, c.faithfulness["error"])
                                          for c in circuits},
                                  random={c.name: (c.faithfulness["random"]["median"],
                                                   c.faithfulness["random"]["p05"])
                                          for c in circuits if "random" in c.faithfulness},
                                  out=out / "faithfulness")
        if len(circuits) > 1:
            ov = overlap(circuits)
            ov.to_csv(out / "overlap.csv")
            log(f"\ncircuit overlap (Jaccard):\n{ov.round(3).to_string()}")
    if tensors:
        save_safetensors(tensors, out / "scores.safetensors")
    run = report.clean_json({"command": "circuits", "config": asdict(cfg), "model": lm.provenance(),
                             "dataset": {"name": dataset.name, "hash": dataset.content_hash(),
                                         "train_groups": train, "test_groups": test},
                             "notes": notes, "emotions": summaries,
                             "seconds": round(time.perf_counter() - t0, 1)})
    report.write(out, rows, run)
    made = "circuit_<emotion>.json, " if circuits else ""
    log(f"\nwrote {out}: results.csv/json, run.json, scores.safetensors, {made}figures (png+svg)")
    return run


def _one(lm, dataset, cfg, label, metric, types, ctypes, train, test, target, means, dirs, out,
         log, rows, tensors, resample=None) -> dict:
    res: dict = {}
    if cfg.baseline == "pairs":
        pairs = make_pairs(lm, dataset, label=label, target=target, groups=train, align=cfg.align,
                           seed=cfg.seed)
        found = len(pairs)
        pairs = pairs.select(range(min(cfg.prompts, found)))
        batch, base = pairs.noising()
        groups = list(pairs.groups)
        res["pairs"] = {"found": found, "used": len(pairs), "dropped_groups": len(pairs.dropped),
                        "align": cfg.align}
        log(f"{found} aligned pairs ({cfg.align}), using {len(pairs)}"
            + (f"; {len(pairs.dropped)} scenario(s) had no partner of equal length"
               if cfg.align == "length" else ""))
    else:
        texts, groups = prompts_of(dataset, label, train, cfg.prompts, target)
        batch = lm.batch(texts)
        base = means if cfg.baseline == "mean" else ZeroBaseline()
    shared = (cfg.baseline == "mean" and cfg.circuit_estimator == cfg.estimator
              and (cfg.estimator != "ig" or set(types) == set(ctypes)))  # IG's path: its sites
    all_types = tuple(dict.fromkeys(types + (ctypes if shared else ())))
    attr = attribute(lm, batch, metric, base, types=all_types, estimator=cfg.estimator,
                     batch_size=cfg.batch_size, steps=cfg.ig_steps,
                     resid_positions=cfg.resid_positions, row_groups=groups)
    c = attr.compute
    log(f"{cfg.estimator} on {len(batch)} prompts, {sum(g.n_units for g in attr.groups)} "
        f"components: {c.seconds:.1f} s ({c.forward_passes} forward, {c.backward_passes} backward)")
    res["attribution"] = {"prompts": len(batch), "compute": c.as_dict(), "notes": attr.notes,
                          "metric_mean": float(attr.metric_rows.mean())}
    table = attr.table(top_neurons=200)
    rows.append(report.tidy(table, emotion=label, split="train"))
    for g in attr.groups:
        tensors[f"{label}/{cfg.estimator}/{g.site}"] = attr.scores(g).float().contiguous()
    n_layers = metric.layer + 1 if metric.layer is not None else lm.n_layers
    n_heads = lm.arch.head_shape(lm.model)[0]
    shown, truth_table, k, vest = table, None, len(batch), cfg.estimator
    if cfg.validate is not None:
        shown, truth_table, vest = _validate(lm, cfg, label, metric, types, ctypes, batch, base,
                                             means, groups, out, log, rows, res,
                                             pairs if cfg.baseline == "pairs" else None)
        k = res["validation"]["prompts"]
    if cfg.edges:
        k_e = min(cfg.validate_prompts, len(batch))
        res["edges"] = run_edges(lm, take(batch, range(k_e)), metric,
                                 means if means is not None else base, groups[:k_e], n=cfg.edges,
                                 label=label, out=out, log=log, seed=cfg.seed,
                                 rows_per_forward=cfg.rows_per_forward,
                                 estimator=cfg.edge_estimator, exact_nodes=cfg.exact_nodes)
    if "heads" in types:
        figures.plot_head_heatmaps(shown, truth_table, n_layers=n_layers, n_heads=n_heads,
                                   labels=(f"{vest} ({k} prompts)",
                                           "activation patching (same prompts)"),
                                   title=f"{metric.name}: effect of patching each head",
                                   out=out / f"heads_{label}")
    if "neurons" in all_types:
        figures.plot_top_neurons(table, title=f"{metric.name}: top neurons ({cfg.estimator})",
                                 out=out / f"neurons_{label}")
    if cfg.influence_prompts and dirs is not None:
        sub = take(batch, range(min(cfg.influence_prompts, len(batch))))
        infl = sublayer_influence(lm, sub, metric, dirs[label], range(metric.layer + 1),
                                  rows_per_forward=cfg.rows_per_forward)
        rows.append(report.tidy(infl.rename(columns={"influence": "value", "site": "component"}),
                                emotion=label, measure="influence", type="sublayers",
                                n=len(sub), split="train"))
        figures.plot_sublayer_influence(infl, title=f"{metric.name}: sublayer influence",
                                        out=out / f"influence_{label}")
    if ctypes:
        _circuit(lm, dataset, cfg, label, metric, ctypes, attr, means, train, test, target, out,
                 log, rows, res, resample)
    return res


def _jobs(cfg, types, ctypes, base, means):
    """``(estimator, baseline, types validated, types attributed together)`` per validation.

    When a circuit is built, the circuit's ranker (``circuit_estimator`` against the mean, over
    the circuit's types together: IG's path depends on which sites move) is what is validated
    for the circuit's types; other types are validated with the run's own estimator.
    """
    if cfg.circuit and means is not None and ctypes:
        inside = tuple(t for t in types if t in ctypes)
        outside = tuple(t for t in types if t not in ctypes)
        jobs = [(cfg.circuit_estimator, means, inside, tuple(ctypes), True)] if inside else []
        if outside:
            jobs.append((cfg.estimator, base, outside, outside, False))
        return jobs
    return [(cfg.estimator, base, tuple(types), tuple(types), False)]


def _validate(lm, cfg, label, metric, types, ctypes, batch, base, means, groups, out, log, rows,
              res, pairs):
    k = min(cfg.validate_prompts, len(batch))
    vgroups = groups[:k]
    texts, tables, shown, truths, parts = [], [], [], [], []
    for estimator, vbase, vtypes, atypes, ranks in _jobs(cfg, types, ctypes, base, means):
        if vbase is base and pairs is not None:
            vbatch, vbase = pairs.select(range(k)).noising()
        else:
            vbatch = take(batch, range(k))
        attr = attribute(lm, vbatch, metric, vbase, types=atypes, estimator=estimator,
                         batch_size=cfg.batch_size, steps=cfg.ig_steps,
                         resid_positions=cfg.resid_positions, row_groups=vgroups)
        comps, est, ctype, top, sampled, n_all = _choose(cfg, attr, vtypes, log)
        truth = patch(lm, vbatch, metric, vbase, comps, rows_per_forward=cfg.rows_per_forward,
                      resid_positions=cfg.resid_positions, row_groups=vgroups)
        at, tt = attr.table(types=vtypes), truth.table()
        truth_rows = truth.per_row.double().numpy().T
        table = compare(at, tt, signed=attr.signed)
        cis = compare_ci(est, truth_rows, ctype, vgroups, top=top)
        table = table.merge(cis, on="type").assign(sampled=lambda d: d["type"].map(sampled))
        stab = {t: split_half(truth_rows[:, np.asarray(ctype) == t], vgroups, k=20, order="abs")
                for t in vtypes}
        text = summary(table, estimator, attr.compute, truth.compute,
                       n_truth_components=len(comps), n_all_components=n_all)
        text += "".join(
            f"\n- split-half agreement of the patched top 20 {t}: Jaccard {s['jaccard']:.2f} "
            f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}] over {s['n_splits']} splits of "
            f"{s['groups']} scenarios" + ("" if s["stable"] else " (not stable: below 0.6)")
            for t, s in stab.items() if s["n_splits"])
        if ranks:
            text = f"(the estimator that ranks the circuit, against the {vbase.name} baseline)\n" + text
        log(text)
        texts.append(text)
        tables.append(table.assign(estimator=estimator))
        same = at[at["component"].isin(set(tt["component"]))]
        shown.append(same)
        truths.append(tt)
        rows.append(report.tidy(same, emotion=label, split="validation"))
        rows.append(report.tidy(tt, emotion=label, split="validation"))
        rows.append(report.validation_rows(table.drop(columns=["sampled"]), emotion=label,
                                           estimator=estimator))
        parts.append({"estimator": estimator, "baseline": vbase.name, "ranks_the_circuit": ranks,
                      "types": list(vtypes), "components": len(comps), "sampled": sampled,
                      "compute": {"attribution": attr.compute.as_dict(),
                                  "patching": truth.compute.as_dict()},
                      "truth_split_half": stab, "verdicts": verdicts(table, estimator),
                      "notes": truth.notes})
        figures.plot_scatter(at, tt, estimator=estimator,
                             title=f"{metric.name}: {estimator} vs activation patching\n"
                                   f"({k} prompts, {vbase.name} baseline)",
                             out=out / (f"scatter_{label}" + ("" if len(parts) == 1 else
                                                              f"_{'_'.join(vtypes)}")))
    table = pd.concat(tables, ignore_index=True)
    (out / f"validation_{label}.txt").write_text("\n\n".join(texts) + "\n")
    table.to_csv(out / f"validation_{label}.csv", index=False)
    res["validation"] = {"prompts": k, "components": sum(p["components"] for p in parts),
                         "table": table.to_dict("records"), "runs": parts,
                         **{key: parts[0][key] for key in ("estimator", "baseline",
                                                           "ranks_the_circuit", "sampled")}}
    return (pd.concat(shown, ignore_index=True), pd.concat(truths, ignore_index=True),
            "/".join(p["estimator"] for p in parts))


def _choose(cfg, attr, vtypes, log):
    """Components of each validated type to patch (:func:`circuits.validate.select`)."""
    n = None if cfg.validate == -1 else cfg.validate
    comps, est_cols, ctype, top, sampled, n_all = [], [], [], [], {}, 0
    for t in vtypes:
        gs = [g for g in attr.groups if g.type == t]
        cs = [c for g in gs for c in g.components()]
        e = np.concatenate([attr.per_row[g].double().numpy() for g in gs], axis=1)
        n_all += len(cs)
        idx, how = select([str(c) for c in cs], e.mean(0), [c.layer for c in cs], n, seed=cfg.seed)
        sampled[t] = how
        if how != "all":
            log(f"validating {t}: {how} (subsampled; --validate all patches every one)")
        comps += [cs[i] for i in idx]
        est_cols.append(e[:, idx])
        ctype += [t] * len(idx)
        top += [how == "all" or j < n for j in range(len(idx))]
    return comps, np.concatenate(est_cols, axis=1), ctype, top, sampled, n_all


def _circuit(lm, dataset, cfg, label, metric, ctypes, attr: Attribution, means, train, test,
             target, out, log, rows, res, resample=None):
    n = cfg.circuit_prompts
    tr_texts, tr_groups = prompts_of(dataset, label, train, n, target)
    te_texts, te_groups = prompts_of(dataset, label, test, n, target)
    if not (cfg.baseline == "mean" and cfg.circuit_estimator == cfg.estimator
            and (cfg.estimator != "ig" or set(attr.groups) == {g for g in attr.groups
                                                                  if g.type in ctypes})):
        attr = attribute(lm, lm.batch(tr_texts), metric, means, types=ctypes,
                         estimator=cfg.circuit_estimator, batch_size=cfg.batch_size,
                         steps=cfg.ig_steps, row_groups=tr_groups)
        log(f"circuit ranked by {cfg.circuit_estimator} against the mean baseline on "
            f"{len(tr_texts)} training prompts ({attr.compute.seconds:.0f} s)")
    config = CircuitConfig(types=ctypes, max_error=cfg.max_error, max_fraction=cfg.max_fraction,
                           rows_per_forward=cfg.rows_per_forward, n_random=cfg.random_circuits,
                           seed=cfg.seed, search_rounds=cfg.search_rounds,
                           search_halvings=cfg.search_halvings, search_splits=cfg.search_splits,
                           search_stable=cfg.search_stable)
    abl = {"mean": means, "zero": ZeroBaseline(), "resample": resample} if resample else None
    behaviour = says(lm, label) if cfg.behaviour and label in EMOTION_WORDS and \
        not metric.name.startswith("says:") else None
    circuit, curves = find_circuit(lm, attr, metric, lm.batch(tr_texts), lm.batch(te_texts), means,
                                   name=label, config=config, train_groups=tr_groups,
                                   test_groups=te_groups, ablation_baselines=abl,
                                   behaviour=behaviour, test_texts=te_texts)
    circuit.info["model"] = lm.provenance()
    circuit.save(out / f"circuit_{label}.json")
    f, c = circuit.faithfulness, circuit.completeness
    for line in describe(circuit, ctypes):
        log(line)
    if _spans_zero(f["ablation_effect_ci"]):
        log("  ablating every candidate does not move the metric reliably (its CI spans 0): the "
            "normalised errors are unstable")
    rows.append(report.curve_rows(curves, emotion=label))
    figures.plot_circuit(circuit, n_layers=metric.layer + 1 if metric.layer is not None else lm.n_layers,
                         n_heads=lm.arch.head_shape(lm.model)[0],
                         out=out / f"circuit_{label}")
    res["circuit"] = {"size": circuit.size, "n_candidates": circuit.n_candidates,
                      "fraction": circuit.fraction, "faithfulness": f, "completeness": c,
                      "info": {k: v for k, v in circuit.info.items() if k != "model"},
                      "verdict": verdict(circuit)}
    res["_circuit"], res["_curves"] = circuit, curves


def _spans_zero(ci) -> bool:
    lo, hi = ci
    return bool(lo <= 0 <= hi)
