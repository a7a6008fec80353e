"""``probe circuits`` as one function: attribute, validate, assemble, measure, write.

For each emotion of the metric (``direction:happiness,sadness@L24``):

1. scenario groups are split into training and held-out halves; directions and attributions
   use training scenarios only;
2. every component of the requested types is attributed (AtP, AtP* or IG) against the chosen
   baseline (mean ablation, aligned pairs, or zero);
3. with ``validate``, a sample (or all) of the components is activation-patched on a few
   prompts and compared with the attribution on the same prompts, compute included;
4. a circuit of heads + neurons is chosen on training prompts and its faithfulness and
   completeness are measured on held-out prompts (bootstrap CIs over scenarios);
5. tables, the circuit file, scores and figures are written to ``out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from circuits import figures, report
from circuits.assemble import CircuitConfig, find_circuit, overlap
from circuits.attribution import Attribution, attribute, component_layers
from circuits.baselines import MeanBaseline, ZeroBaseline, take
from circuits.components import groups as make_groups, parse_types
from circuits.metrics import (
    MetricError,
    direction,
    direction_tensor,
    emotion_directions,
    label_logprob,
    logit_diff,
    parse_metric_spec,
)
from circuits.pairs import make_pairs, rows_of, split_groups
from circuits.patching import patch, sublayer_influence
from circuits.validate import compare, summary, verdicts
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
    faithfulness_target: float = 0.8
    max_fraction: float = 0.10
    influence_prompts: int = 8
    test_fraction: float = 0.5
    seed: int = 0
    batch_size: int = 16
    rows_per_forward: int = 64
    ig_steps: int = 8
    resid_positions: int = 8


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
    if cfg.label is None or cfg.label not in classes:
        raise MetricError(f"{kind} metrics need --label: whose prompts to explain (one of {classes})")
    m = logit_diff(lm, *args) if kind == "logit-diff" else label_logprob(lm, args[0])
    return {cfg.label: m}, None


def _prompts(dataset, label, groups, n, target) -> tuple[list[str], list[str]]:
    rows = rows_of(dataset, label, target=target, groups=groups).sort_values("group").head(n)
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
    all_types = tuple(dict.fromkeys(types + ctypes))
    means = None
    if cfg.baseline == "mean" or ctypes:
        ref = dataset.frame[dataset.frame["group"].isin(train)].sort_values("group")
        sites = [g.site for g in make_groups(lm, all_types, layers, positions=cfg.resid_positions)]
        t = time.perf_counter()
        means = MeanBaseline.fit(lm, list(ref["text"]), sites, batch_size=cfg.batch_size)
        log(f"mean baseline over {len(ref)} training prompts ({time.perf_counter() - t:.0f} s)")
    rows, summaries, circuits, curves_all, tensors = [], {}, [], [], {}
    for label, metric in metrics.items():
        log(f"\n== {label}: {metric.name}")
        res = _one(lm, dataset, cfg, label, metric, types, ctypes, train, test, target, means,
                   dirs, out, log, rows, tensors)
        summaries[label] = res
        if "circuit" in res:
            circuits.append(res.pop("_circuit"))
            curves_all.append(res.pop("_curves").assign(name=label))
    if curves_all:
        import pandas as pd

        curves = pd.concat(curves_all, ignore_index=True)
        figures.plot_faithfulness(curves, target=cfg.faithfulness_target,
                                  budget=int(cfg.max_fraction * circuits[0].n_candidates),
                                  chosen={c.name: c.size for c in circuits},
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
         log, rows, tensors) -> dict:
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
        texts, groups = _prompts(dataset, label, train, cfg.prompts, target)
        batch = lm.batch(texts)
        base = means if cfg.baseline == "mean" else ZeroBaseline()
    shared = cfg.baseline == "mean" and cfg.circuit_estimator == cfg.estimator
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
    shown, truth_table, k = table, None, len(batch)
    if cfg.validate is not None:
        shown, truth_table = _validate(lm, cfg, label, metric, types, batch, base, groups, out,
                                       log, rows, res, pairs if cfg.baseline == "pairs" else None)
        k = res["validation"]["prompts"]
    if "heads" in types:
        figures.plot_head_heatmaps(shown, truth_table, n_layers=n_layers, n_heads=n_heads,
                                   labels=(f"{cfg.estimator} ({k} prompts)",
                                           f"patching ({base.name}, same prompts)"),
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
                 log, rows, res)
    return res


def _validate(lm, cfg, label, metric, types, batch, base, groups, out, log, rows, res, pairs):
    k = min(cfg.validate_prompts, len(batch))
    if pairs is not None:
        vbatch, vbase = pairs.select(range(k)).noising()
    else:
        vbatch, vbase = take(batch, range(k)), base
    vgroups = groups[:k]
    attr = attribute(lm, vbatch, metric, vbase, types=types, estimator=cfg.estimator,
                     batch_size=cfg.batch_size, steps=cfg.ig_steps,
                     resid_positions=cfg.resid_positions, row_groups=vgroups)
    rng = np.random.default_rng(cfg.seed)
    comps, n_all = [], 0
    for t in types:
        cs = [c for g in attr.groups if g.type == t for c in g.components()]
        n_all += len(cs)
        if cfg.validate != -1 and len(cs) > cfg.validate:
            cs = [cs[i] for i in sorted(rng.choice(len(cs), cfg.validate, replace=False))]
        comps += cs
    truth = patch(lm, vbatch, metric, vbase, comps, rows_per_forward=cfg.rows_per_forward,
                  resid_positions=cfg.resid_positions, row_groups=vgroups)
    at, tt = attr.table(), truth.table()
    table = compare(at, tt, signed=attr.signed)
    text = summary(table, cfg.estimator, attr.compute, truth.compute,
                   n_truth_components=len(comps), n_all_components=n_all)
    log(text)
    (out / f"validation_{label}.txt").write_text(text + "\n")
    table.to_csv(out / f"validation_{label}.csv", index=False)
    same = at[at["component"].isin(set(tt["component"]))]
    rows.append(report.tidy(same, emotion=label, split="validation"))
    rows.append(report.tidy(tt, emotion=label, split="validation"))
    rows.append(report.validation_rows(table, emotion=label, estimator=cfg.estimator))
    res["validation"] = {"prompts": k, "components": len(comps), "table": table.to_dict("records"),
                         "compute": {"attribution": attr.compute.as_dict(),
                                     "patching": truth.compute.as_dict()},
                         "verdicts": verdicts(table, cfg.estimator), "notes": truth.notes}
    figures.plot_scatter(at, tt, estimator=cfg.estimator,
                         title=f"{metric.name}: {cfg.estimator} vs activation patching "
                               f"({k} prompts, {vbase.name} baseline)",
                         out=out / f"scatter_{label}")
    return same, tt


def _circuit(lm, dataset, cfg, label, metric, ctypes, attr: Attribution, means, train, test,
             target, out, log, rows, res):
    n = cfg.circuit_prompts
    tr_texts, tr_groups = _prompts(dataset, label, train, n, target)
    te_texts, te_groups = _prompts(dataset, label, test, n, target)
    if cfg.baseline != "mean" or cfg.circuit_estimator != cfg.estimator:
        tr_all = tr_texts
        attr = attribute(lm, lm.batch(tr_all), metric, means, types=ctypes,
                         estimator=cfg.circuit_estimator, batch_size=cfg.batch_size,
                         steps=cfg.ig_steps)
        log(f"circuit ranked by {cfg.circuit_estimator} against the mean baseline on "
            f"{len(tr_all)} training prompts ({attr.compute.seconds:.0f} s)")
    config = CircuitConfig(types=ctypes, target=cfg.faithfulness_target,
                           max_fraction=cfg.max_fraction, rows_per_forward=cfg.rows_per_forward)
    circuit, curves = find_circuit(lm, attr, metric, lm.batch(tr_texts), lm.batch(te_texts), means,
                                   name=label, config=config, train_groups=tr_groups,
                                   test_groups=te_groups)
    circuit.info["model"] = lm.provenance()
    circuit.save(out / f"circuit_{label}.json")
    f, c = circuit.faithfulness, circuit.completeness
    log(f"circuit: {circuit.size} of {circuit.n_candidates} {'+'.join(ctypes)} "
        f"({100 * circuit.fraction:.2f}%); faithfulness on {f['n_test']} held-out prompts "
        f"{f['test']:.2f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}] (train {f['train']:.2f}); "
        f"completeness {c['test']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]; "
        f"ablating every candidate moves the metric by {-f['ablation_effect']:+.2f} "
        f"[{-f['ablation_effect_ci'][1]:+.2f}, {-f['ablation_effect_ci'][0]:+.2f}]"
        + ("" if circuit.info["reached_target_on_train"] else
           f"; the target {cfg.faithfulness_target} was not reached on training prompts")
        + ("" if circuit.info.get("within_budget", True) else
           f"; larger than the budget of {100 * cfg.max_fraction:.0f}% of the candidates")
        + (f"; faithfulness above {2 - cfg.faithfulness_target:.1f}: the circuit over-drives the "
           "metric (components outside it pull it down)"
           if f["test"] > 2 - cfg.faithfulness_target else "")
        + ("; ablating every candidate does not move the metric reliably (its CI spans 0), so "
           "these ratios are unstable" if _spans_zero(f["ablation_effect_ci"]) else ""))
    rows.append(report.curve_rows(curves, emotion=label))
    figures.plot_circuit(circuit, n_layers=metric.layer + 1 if metric.layer is not None else lm.n_layers,
                         n_heads=lm.arch.head_shape(lm.model)[0],
                         out=out / f"circuit_{label}")
    res["circuit"] = {"size": circuit.size, "n_candidates": circuit.n_candidates,
                      "fraction": circuit.fraction, "faithfulness": f, "completeness": c,
                      "info": {k: v for k, v in circuit.info.items() if k != "model"}}
    res["_circuit"], res["_curves"] = circuit, curves


def _spans_zero(ci) -> bool:
    lo, hi = ci
    return bool(lo <= 0 <= hi)
