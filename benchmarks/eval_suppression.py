"""Suppression: steer *away* from anger on provocative prompts, judged as steering towards is.

Issue 17, item 3, with the protocol of ``benchmarks/eval_trained_steering.py``: a selection
judge (TF-IDF on dair-ai emotion + SEV replies, never shipped) picks on *tune* prompts; the
shipped GoEmotions classifier and the NRC lexicon report on *test* prompts; ``JudgeRoles``
checks the roles before anything is generated. The composite is the suppression composite
(``steering.eval.composite.suppression_scores``: concept = 1 - P(anger), harmonic mean with
relevance and fluency, 0 if either is 0); the wrong-way share counts prompts made angrier.

Prompts (tune / test disjoint): SEV negative events as a first-person complaint ("I completed
... The team expressed concerns ...", skeletons no vector was trained on, split by skeleton)
and rude user turns (``datasets/provocative_prompts``, its fixed split). Two settings:

* ``provoked``: the plain chat; conditions unsteered, a user-turn instruction ("Respond
  calmly."), a calm system prompt, steering away from anger, a random vector of the selected
  norm, and instruction + steering;
* ``induced``: anger induced by the designed anger prompt (``steering.eval.baselines.prompt_arms``);
  the same conditions on top of it.

Candidates, all at negative strength (or ablation): (i) the shipped context-agnostic anger
operating point (its layers; x0.5 / x1 / x2 of its strength, negated), (ii) the expression
direction from the model's own replies (layers 6, 9, 12, 15, as eval_trained_steering), (iii)
either direction projected out at every position (mode ``ablate``). Per setting, the best
(candidate, strength) by selection composite with no collapse and perplexity ratio <= 2.

    python benchmarks/eval_suppression.py --out runs/suppress --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.io import atomic_write
from probe.models import load_model
from steering.directions import directions
from steering.eval.baselines import prompt_arms, random_like
from steering.eval.composite import CollapseConfig, JudgeRoles, collapsed, judge_sources
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import NeutralPrompt
from steering.eval.scorer import Scorer
from steering.eval.trained import paired, report_rows, score_arms, select_scale
from steering.expression import expression_vectors, reply_activations
from steering.inject import Setting
from steering.judges.emotion import EMOTIONS, ClassifierJudge, LexiconJudge
from steering.operating_points import operating_point
from steering.train.data import sev_prompts, teacher_replies
from steering.vector import VectorSet

EMOTION = "anger"
CALM_SUFFIX = " Respond calmly."
CALM_SYSTEM = "You are a calm, patient assistant. You always reply calmly and politely, even when the user is rude."
SHIPPED_CSV = Path(__file__).resolve().parents[1] / "datasets" / "provocative_prompts" / "prompts.csv"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def dump(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=float))


def provocative_prompts(sev_dir: Path, *, n_tune: int, n_test: int) -> tuple[list, list]:
    """SEV complaints (skeletons no vector saw, split by skeleton) + the shipped rude turns."""
    used = set(sev_prompts(sev_dir, n=40)) | set(sev_prompts(sev_dir, n=8, offset=140))
    rows = [json.loads(x) for x in (sev_dir / "sev.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in sorted(rows, key=lambda r: r["skeleton_id"])
            if f"{r['scenario'].rstrip('.')}. {r['event']['neutral']}" not in used]
    picks = [rows[i] for i in np.linspace(0, len(rows) - 1, n_tune + n_test).round().astype(int)]
    tune_idx = set(np.linspace(0, len(picks) - 1, n_tune).round().astype(int).tolist())

    def sev(i, r):
        return NeutralPrompt(id=f"sev-{r['skeleton_id']}", kind="complaint",
                             text=f"{r['scenario'].rstrip('.')}. {r['event']['negative']}",
                             split="tune" if i in tune_idx else "test")

    out = [sev(i, r) for i, r in enumerate(picks)]
    with open(SHIPPED_CSV, newline="", encoding="utf-8") as fh:
        out += [NeutralPrompt(id=r["id"], text=r["text"], kind="rude", split=r["split"])
                for r in csv.DictReader(fh)]
    return [p for p in out if p.split == "tune"], [p for p in out if p.split == "test"]


def candidates(ctx, expr, point_strength: float, args) -> dict[str, Setting]:
    """Every steering-away setting scored on tune, by label."""
    out = {}
    for f in (float(x) for x in args.ctx_scales.split(",")):
        out[f"ctx@-{f:g}x"] = Setting(vector=ctx, strength=-f * point_strength, label=f"ctx@-{f:g}x")
    for s in (float(x) for x in args.expr_scales.split(",")):
        out[f"expr@-{s:g}"] = Setting(vector=expr, strength=-s, label=f"expr@-{s:g}")
    out["ctx-ablate"] = Setting(vector=ctx, mode="ablate", positions="all", label="ctx-ablate")
    out["expr-ablate"] = Setting(vector=expr, mode="ablate", positions="all", label="expr-ablate")
    return out


def family(label: str) -> str:
    return label.split("@")[0]


def base_arms(setting: str) -> dict[str, dict]:
    """The setting's base (what is steered) and its instruction conditions, as Arm keywords."""
    if setting == "provoked":
        return {"unsteered": {}, "calm-user": {"user_suffix": CALM_SUFFIX},
                "calm-system": {"system_prompt": CALM_SYSTEM}}
    d = next(a for a in prompt_arms(EMOTION) if a.condition == "prompt-designed")
    angry = {"system_prompt": d.system_prompt, "user_suffix": d.user_suffix}
    return {"angry": angry, "angry+calm-user": {**angry, "user_suffix": d.user_suffix + CALM_SUFFIX}}


def arm(cond: str, base: dict, setting: Setting | None = None) -> Arm:
    return Arm(condition=cond, emotion=EMOTION, setting=setting or Setting(), **base)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--select-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"))
    ap.add_argument("--expr-layers", default="6,9,12,15")
    ap.add_argument("--ctx-scales", default="0.5,1,2", help="multiples of the operating point's strength")
    ap.add_argument("--expr-scales", default="1,2,4", help="x RMS per layer")
    ap.add_argument("--tune-sev", type=int, default=10)
    ap.add_argument("--test-sev", type=int, default=20)
    ap.add_argument("--settings", default="provoked,induced")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    t_start = time.perf_counter()

    select = ClassifierJudge.load(args.select_judge)
    report = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(data / "lexicons")}
    JudgeRoles(selection=("select", select), report=report,
               fitted_on={n: judge_sources(j) for n, j in report.items()},
               trained_on={"sev-scenarios", "smollm2-own-replies", "emotion-scenarios"})
    lm = load_model("smollm2-135m")
    tune, test = provocative_prompts(data / "sev", n_tune=args.tune_sev, n_test=args.test_sev)
    assert not {p.id for p in tune} & {p.id for p in test}
    log(f"{len(tune)} tune / {len(test)} test prompts")

    # (i) the shipped operating point's direction, (ii) the expression direction
    point = operating_point("smollm2-135m", EMOTION)
    ctx = directions(lm, method=point.method, site=point.site, layers=point.layers,
                     pooling=point.pooling)[EMOTION]
    layers = tuple(int(x) for x in args.expr_layers.split(","))
    if (out / "expression").is_dir():
        expr = VectorSet.load(out / "expression", lm)[EMOTION]
    else:
        teach = teacher_replies(lm, sev_prompts(data / "sev", n=40), EMOTIONS, max_new_tokens=40,
                                batch_size=40, cache="runs/teacher", log=log)
        p6 = [p for e in EMOTIONS for p in teach.prompts]
        r6 = [r for e in EMOTIONS for r in teach.replies[e]]
        y6 = [e for e in EMOTIONS for _ in teach.prompts]
        g6 = [str(i) for e in EMOTIONS for i in range(len(teach.prompts))]
        vs = expression_vectors(lm, p6, r6, y6, layers=layers, emotions=EMOTIONS, groups=g6,
                                source="smollm2 designed-prompt replies to SEV scenarios",
                                X=reply_activations(lm, p6, r6, layers))
        vs.save(out / "expression")
        expr = vs[EMOTION]
    log(f"directions ready: ctx {point.describe()}; expression layers {layers}")
    cands = candidates(ctx, expr, point.strength, args)

    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    sel_scorer = Scorer(lm, {"select": select}, decoding=decoding, batch_size=64, log=log)
    rep_scorer = Scorer(lm, report, decoding=decoding, batch_size=64, log=log)
    refs = {}
    for name, scorer, prompts in (("tune", sel_scorer, tune), ("test", rep_scorer, test)):
        f = scorer.frame(prompts, [Arm(condition="unsteered", emotion=EMOTION)], relevance=True)
        refs[name] = (float(np.nanmedian(f["perplexity"])), float(np.nanmedian(f["relevance"])))
        log(f"{name}: unsteered median perplexity {refs[name][0]:.2f}, relevance {refs[name][1]:.3f}")
    dump(out / "refs.json", refs)
    summary = {"refs": refs, "operating_point": point.describe(), "settings": {}}
    for setting in args.settings.split(","):
        summary["settings"][setting] = run_setting(setting, cands, tune, test, sel_scorer, rep_scorer,
                                                   select, report, refs, out)
    summary["seconds"] = time.perf_counter() - t_start
    dump(out / "summary.json", summary)
    log(f"done in {summary['seconds']:.0f} s")


def run_setting(setting, cands, tune, test, sel_scorer, rep_scorer, select, report, refs, out) -> dict:
    bases = base_arms(setting)
    base_name, base = next(iter(bases.items()))

    def steer_name(label: str) -> str:
        return label if setting == "provoked" else f"angry+{label}"

    tune_arms = [arm(c, kw) for c, kw in bases.items()]
    tune_arms += [arm(steer_name(lab), base, s) for lab, s in cands.items()]
    log(f"{setting}: selection, {len(tune_arms)} arms x {len(tune)} tune prompts")
    ft = score_arms(sel_scorer, tune, tune_arms, concept_judges={"select": select}, away=True,
                    ref_perplexity=refs["tune"][0], ref_relevance=refs["tune"][1])
    ft.drop(columns=["signals"]).to_csv(out / f"{setting}-tune-replies.csv", index=False)
    _, table = select_scale(ft, judge="select", ref_perplexity=refs["tune"][0])
    # template collapse is judged relative to the base (as eval_prompt_steering): the designed
    # prompt alone opens most replies with "Alright, alright, ..."; steering may share openings
    # as much as its base does, + 0.1
    share = float(table.set_index("condition").loc[base_name, "opening_share"])
    cfg = CollapseConfig(max_opening_share=max(0.25, share + 0.1))
    table["collapsed"] = [collapsed(r, cfg) for r in table.to_dict("records")]
    table["eligible"] = ~table["collapsed"] & (table["ppl_ratio"] <= 2.0)
    table.to_csv(out / f"{setting}-tune.csv", index=False)
    table["label"] = table["condition"].str.removeprefix("angry+")
    steer = table[table["label"].isin(list(cands)) & table["eligible"]]
    per_family = {fam: str(g.sort_values("composite", ascending=False).iloc[0]["label"])
                  for fam, g in steer.groupby(steer["label"].map(family), sort=False)}
    best = None if steer.empty else str(steer.sort_values("composite", ascending=False).iloc[0]["label"])
    log(f"{setting}: selected {best} (per family {per_family})")

    test_arms = [arm(c, kw) for c, kw in bases.items()]
    test_arms += [arm(steer_name(f"steered:{fam}"), base, cands[lab]) for fam, lab in per_family.items()]
    if best:
        w = cands[best]
        rnd = Setting(vector=random_like(w.vector, seed=1), strength=w.strength, mode=w.mode,
                      positions=w.positions, label="random")
        test_arms.append(arm(steer_name("random"), base, rnd))
        calm = bases["calm-user" if setting == "provoked" else "angry+calm-user"]
        test_arms.append(arm(steer_name("calm-user+steered"), calm, w))
    log(f"{setting}: test, {len(test_arms)} arms x {len(test)} test prompts")
    fr = score_arms(rep_scorer, test, test_arms, concept_judges=report, away=True,
                    ref_perplexity=refs["test"][0], ref_relevance=refs["test"][1], targets=[EMOTION])
    fr.drop(columns=["signals"]).to_csv(out / f"{setting}-test-replies.csv", index=False)
    rows = report_rows(fr, judges=list(report), unsteered=fr[fr["condition"] == base_name],
                       ref_perplexity=refs["test"][0], ref_relevance=refs["test"][1])
    for r in rows:   # wrong way (made angrier) is against the setting's base, not the base itself
        if r["condition"] == base_name:
            r["wrong_way"] = float("nan")
    win = steer_name(f"steered:{family(best)}") if best else None
    conds = set(fr["condition"])
    pairs = []
    comparisons = [(steer_name(f"steered:{fam}"), base_name) for fam in per_family]
    comparisons += [(win, c) for c in list(bases)[1:]] + [(win, steer_name("random")),
                                                          (steer_name("calm-user+steered"), list(bases)[1])]
    for j in report:
        for a, b in comparisons:
            if a in conds and b in conds:
                for metric in ("expression", "composite"):
                    pairs.append(paired(fr, a, b, judge=j, metric=metric))
    pd.DataFrame(rows).to_csv(out / f"{setting}-results.csv", index=False)
    pd.DataFrame(pairs).to_csv(out / f"{setting}-paired.csv", index=False)
    result = {"rows": rows, "paired": pairs, "winner": win, "selected": best, "per_family": per_family,
              "tune": table.drop(columns=["label"]).to_dict("records")}
    dump(out / f"{setting}-results.json", result)
    log(f"{setting}: done")
    return {"selected": best, "per_family": per_family}


if __name__ == "__main__":
    main()
