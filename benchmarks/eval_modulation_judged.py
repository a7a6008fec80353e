"""Circuit modulation judged with steering's protocol (issue 18, item 5).

For each emotion with a circuit file (``circuit_<emotion>.json`` from ``probe circuits``), the
arms of ``benchmarks/eval_trained_steering.py``'s protocol (:mod:`steering.eval.trained`):

* ``unsteered``; ``prompt-user`` (" Respond in a very {adjective} way."); ``prompt-designed``;
* ``steering``: the shipped operating point (what ``probe steer --emotion E`` does by default:
  :func:`steering.operating_points.operating_point`, directions from the emotion-scenarios store);
* ``circuit``: :func:`circuits.modulate.modulation_hooks` (``add`` each component's emotion
  offset x strength at the last prompt token and every generated token), an
  :class:`~steering.eval.grid.Arm` carrying the hooks; its strength selected on **tune** prompts;
* ``random-circuit``: a random circuit of the same size and composition (same count of heads
  and neurons per band of 5 layers, :func:`circuits.closeness.matched_random`, drawn from the
  circuit's candidates), its own offsets, at the circuit's selected strength.

Roles (:class:`steering.eval.composite.JudgeRoles`, checked before anything is generated): the
**selection** judge (TF-IDF on dair-ai + SEV replies, ``--select-judge``) picks the strength by
the AxBench composite on the tune prompts among strengths with no collapse and median
perplexity ratio <= 2; the **reporting** judges (shipped GoEmotions classifier, NRC lexicon)
score the **test** prompts only: gated expression and composite with 95% bootstrap CIs over
prompts, perplexity and relevance ratios, collapse, wrong-way share, and paired differences
(circuit - steering, circuit - random circuit, circuit - user prompt, circuit - unsteered).

    python benchmarks/eval_modulation_judged.py runs/circuits-hs --emotions happiness,sadness \\
        --out runs/modjudge
    python benchmarks/eval_modulation_judged.py --tables --out runs/modjudge   # the docs' tables
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from circuits.assemble import Circuit
from circuits.closeness import composition, matched_random
from circuits.components import groups as component_groups
from circuits.modulate import component_offsets, modulation_hooks
from circuits.pairs import split_groups
from probe.cache import CacheConfig, cache_activations
from probe.capture import DEFAULT_POOLINGS
from probe.data import load_dataset
from probe.io import atomic_write
from probe.models import load_model
from steering.directions import directions
from steering.eval.composite import JudgeRoles, judge_sources
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import load_prompts
from steering.eval.protocol import spread
from steering.eval.scorer import Scorer
from steering.eval.trained import (
    add_composites,
    baseline_arms,
    paired,
    report_rows,
    score_arms,
    select_scale,
)
from steering.inject import Setting
from steering.judges.emotion import ClassifierJudge, LexiconJudge
from steering.operating_points import operating_point, point_vector

COMPARISONS = (("circuit", "steering"), ("circuit", "random-circuit"), ("circuit", "prompt-user"),
               ("circuit", "unsteered"), ("steering", "prompt-user"))


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def dump(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=float))


def steering_setting(lm, emotion: str) -> tuple[Setting, dict]:
    """The shipped operating point as ``probe steer --emotion E`` applies it (its vector file, or
    directions from the emotion-scenarios store)."""
    point = operating_point(lm.spec.alias, emotion)
    if point.vector is not None:
        vec = point_vector(point, lm)
    else:
        config = CacheConfig(sites=f"blocks.{','.join(map(str, point.layers))}.hook_{point.site}",
                             poolings=DEFAULT_POOLINGS if point.pooling in DEFAULT_POOLINGS
                             else (point.pooling,))
        store = cache_activations(lm, load_dataset("emotion-scenarios"), config=config, progress=False)
        vec = directions(store, method=point.method, site=point.site, layers=list(point.layers),
                         pooling=point.pooling)[emotion]
    setting = Setting(vector=vec, strength=point.strength, unit=point.unit, factor=point.factor,
                      mode=point.mode, positions=point.positions, label=f"{emotion} operating point")
    return setting, {"describe": point.describe(), "origin": point.origin}


def circuit_inputs(lm, run: Path, emotion: str, seed: int):
    """The circuit, a matched random circuit and both sets of offsets (emotion - reference)."""
    circuit = Circuit.load(run / f"circuit_{emotion}.json")
    last = int(re.search(r"@L(\d+)", circuit.metric).group(1))
    types = tuple(dict.fromkeys(c.type for c in circuit.components))
    candidates = [c for g in component_groups(lm, types, range(last + 1)) for c in g.components()]
    if len(candidates) != circuit.n_candidates:
        log(f"note: {len(candidates)} candidates rebuilt, the circuit file says {circuit.n_candidates}")
    rand = matched_random(circuit.components, candidates, n=1, seed=seed)[0]
    ds = load_dataset("emotion-scenarios")
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    # the scenarios `probe circuits` found the circuit on (its run.json), else its default split
    train = info.get("dataset", {}).get("train_groups") or split_groups(ds, seed=0)[0]
    f = ds.frame[ds.frame.group.isin(train)].sort_values("group")
    emo = lm.batch(list(f[f.emotion == emotion].text)[:16])
    ref = lm.batch(list(f.text)[::7])
    return (circuit, component_offsets(lm, circuit, emo, ref),
            rand, component_offsets(lm, rand, emo, ref))


def circuit_arm(lm, label: str, emotion: str, comps, offsets, strength: float) -> Arm:
    return Arm(condition=label, emotion=emotion,
               hooks=modulation_hooks(lm, comps, strength=strength, offsets=offsets))


def run_emotion(lm, emotion, args, tune, test, sel_scorer, rep_scorer, select, report, refs,
                unsteered, out):
    t0 = time.perf_counter()
    circuit, offs, rand, roffs = circuit_inputs(lm, Path(args.run), emotion, args.seed)
    steer, steer_info = steering_setting(lm, emotion)
    log(f"{emotion}: circuit of {circuit.size} ({composition(circuit.components)}), "
        f"steering: {steer_info['describe']}")
    strengths = [float(s) for s in args.strengths.split(",")]
    arms = [circuit_arm(lm, f"circuit@{s:g}", emotion, circuit.components, offs, s) for s in strengths]
    ft = score_arms(sel_scorer, tune, arms, concept_judges={"select": select},
                    ref_perplexity=refs["tune"][0], ref_relevance=refs["tune"][1])
    ft.drop(columns=["signals"]).to_csv(out / f"{emotion}-tune-replies.csv", index=False)
    best, table = select_scale(ft, judge="select", ref_perplexity=refs["tune"][0])
    table.to_csv(out / f"{emotion}-tune.csv", index=False)
    log(f"{emotion}: tune\n{table.round(3).to_string(index=False)}")
    eligible = best is not None
    s = float(best.split("@")[1]) if eligible else min(strengths)
    log(f"{emotion}: selected strength {s:g}" + ("" if eligible else " (none passed the gates: "
                                                 "the weakest is reported, marked not eligible)"))
    test_arms = [*baseline_arms(emotion), Arm(condition="steering", emotion=emotion, setting=steer),
                 circuit_arm(lm, "circuit", emotion, circuit.components, offs, s),
                 circuit_arm(lm, "random-circuit", emotion, rand, roffs, s)]
    fr = score_arms(rep_scorer, test, test_arms, concept_judges=report, ref_perplexity=refs["test"][0],
                    ref_relevance=refs["test"][1], targets=[emotion])
    plain = unsteered[unsteered["target"] == emotion]     # judged once, in main
    plain = add_composites(plain.copy(), concept_judges=report, ref_perplexity=refs["test"][0],
                           ref_relevance=refs["test"][1])
    fr = pd.concat([plain, fr], ignore_index=True)
    fr.drop(columns=["signals"]).to_csv(out / f"{emotion}-test-replies.csv", index=False)
    rows = report_rows(fr, judges=list(report), unsteered=fr[fr["condition"] == "unsteered"],
                       ref_perplexity=refs["test"][0], ref_relevance=refs["test"][1])
    pairs = [paired(fr, a, b, judge=j, metric=m) for j in report for a, b in COMPARISONS
             for m in ("expression", "composite")]
    res = {"emotion": emotion, "circuit": {"file": f"circuit_{emotion}.json", "size": circuit.size,
                                           "composition": composition(circuit.components),
                                           "random_composition": composition(rand)},
           "strength": s, "eligible": eligible, "steering": steer_info, "rows": rows,
           "paired": pairs, "seconds": round(time.perf_counter() - t0, 1)}
    dump(out / f"{emotion}-results.json", res)
    pd.DataFrame(rows).to_csv(out / f"{emotion}-results.csv", index=False)
    show(emotion, rows, pairs)
    return res


def show(emotion, rows, pairs) -> None:
    by = {}
    for r in rows:
        by.setdefault(r["condition"], {})[r["judge"]] = r
    for cond, js in by.items():
        parts = [f"{j} {r['expression']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                 f"comp {r['composite']:.2f}" for j, r in js.items()]
        r = next(iter(js.values()))
        log(f"[test] {emotion} {cond}: " + "; ".join(parts) + f"; ppl {r['ppl_ratio']:.2f} "
            f"rel {r['relevance_ratio']:.2f} gate {r['gate_pass']:.2f} collapsed {r['collapsed']}")
    for p in pairs:
        log(f"[paired] {emotion} {p['a']} - {p['b']} ({p['judge']}, {p['metric']}): "
            f"{p['diff']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]")


def tables(out: Path, emotions) -> str:
    """The docs' markdown tables from the ``<emotion>-results.json`` files in ``out``."""
    lines = [("| emotion | condition | expression, classifier | expression, lexicon | composite, "
              "classifier | composite, lexicon | ppl ratio | relevance ratio | wrong way (clf / lex) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    diffs = ["| difference | classifier | lexicon | composite, classifier | composite, lexicon |",
             "|---|---|---|---|---|"]
    fmt = "{:.2f} [{:.2f}, {:.2f}]".format
    sgn = "{:+.2f} [{:+.2f}, {:+.2f}]".format
    for e in emotions:
        res = json.loads((out / f"{e}-results.json").read_text())
        by = {}
        for r in res["rows"]:
            by.setdefault(r["condition"], {})[r["judge"]] = r
        for cond, js in by.items():
            c, x = js["classifier"], js["lexicon"]
            name = f"circuit x{res['strength']:g}" if cond == "circuit" else cond
            ww = "" if cond == "unsteered" else f"{c['wrong_way']:.2f} / {x['wrong_way']:.2f}"
            lines.append(f"| {e} | {name} | {fmt(c['expression'], c['ci_low'], c['ci_high'])} | "
                         f"{fmt(x['expression'], x['ci_low'], x['ci_high'])} | "
                         f"{fmt(c['composite'], c['composite_low'], c['composite_high'])} | "
                         f"{fmt(x['composite'], x['composite_low'], x['composite_high'])} | "
                         f"{c['ppl_ratio']:.2f} | {c['relevance_ratio']:.2f} | {ww} |")
        pp = {(p["a"], p["b"], p["judge"], p["metric"]): p for p in res["paired"]}
        for a, b in COMPARISONS:
            cells = [sgn(q["diff"], q["ci_low"], q["ci_high"]) for m in ("expression", "composite")
                     for j in ("classifier", "lexicon") for q in [pp[(a, b, j, m)]]]
            diffs.append(f"| {e}: {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + diffs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", help="a probe circuits output folder (circuit_<emotion>.json)")
    ap.add_argument("--emotions", default="happiness,sadness")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--select-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"))
    ap.add_argument("--strengths", default="1,2,4,8", help="circuit strengths tried on tune prompts")
    ap.add_argument("--tune-prompts", type=int, default=12)
    ap.add_argument("--test-prompts", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1, help="the random circuit's draw")
    ap.add_argument("--tables", action="store_true", help="print the markdown tables of --out")
    args = ap.parse_args(argv)
    if args.tables:
        print(tables(Path(args.out), args.emotions.split(",")))
        return
    if not args.run:
        ap.error("give the probe circuits folder that holds circuit_<emotion>.json")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emotions = args.emotions.split(",")
    select = ClassifierJudge.load(args.select_judge)
    report = {"classifier": ClassifierJudge.load(),
              "lexicon": LexiconJudge.load(Path(args.data) / "lexicons")}
    JudgeRoles(selection=("select", select), report=report,
               fitted_on={n: judge_sources(j) for n, j in report.items()},
               trained_on={"emotion-scenarios"})
    lm = load_model("smollm2-135m")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    tune = spread(load_prompts("tune"), args.tune_prompts)
    test = spread(load_prompts("test"), args.test_prompts)
    sel_scorer = Scorer(lm, {"select": select}, decoding=decoding, batch_size=64, log=log)
    rep_scorer = Scorer(lm, report, decoding=decoding, batch_size=64, log=log)
    refs, frames = {}, {}
    for name, scorer, prompts in (("tune", sel_scorer, tune), ("test", rep_scorer, test)):
        f = scorer.frame(prompts, [Arm(condition="unsteered", emotion=None)], relevance=True,
                         targets=emotions)
        refs[name] = (float(np.nanmedian(f["perplexity"])), float(np.nanmedian(f["relevance"])))
        frames[name] = f
        log(f"{name}: {len(prompts)} prompts, unsteered median perplexity {refs[name][0]:.2f}, "
            f"relevance {refs[name][1]:.3f}")
    dump(out / "refs.json", refs)
    t0 = time.perf_counter()
    results = {e: run_emotion(lm, e, args, tune, test, sel_scorer, rep_scorer, select, report, refs,
                              frames["test"], out)
               for e in emotions}
    dump(out / f"summary-{'-'.join(emotions)}.json",
         {"config": vars(args), "refs": refs, "emotions": results,
          "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
