"""Prompt + steering as its own mode: the steering scale selected *with* the designed prompt.

Loads the vectors ``benchmarks/eval_trained_steering.py`` saved (``OUT/vectors/<emotion>-<method>``),
scores the designed prompt alone and designed prompt + vector at ``--scales`` on the tune prompts
with the selection judge (AxBench composite; gates as the runner's, except that template collapse
is judged *relative to the prompt alone*: a combination may share openings as much as the prompt
alone does, + 0.1), and reports the best point and the prompt alone on the test prompts with the
reporting judges. Same roles, prompts and decoding as the runner.

    python benchmarks/eval_prompt_steering.py --emotion anger --method distill --out runs/trained
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from probe.io import atomic_write
from probe.models import load_model
from steering.eval.composite import CollapseConfig, JudgeRoles, collapsed, judge_sources
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import NeutralPrompt, load_prompts
from steering.eval.protocol import spread
from steering.eval.scorer import Scorer
from steering.eval.trained import baseline_arms, paired, report_rows, score_arms, select_scale
from steering.inject import Setting
from steering.judges.emotion import ClassifierJudge, LexiconJudge
from steering.train.data import sev_prompts
from steering.vector import SteeringVector


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emotion", required=True)
    ap.add_argument("--method", default="distill")
    ap.add_argument("--out", required=True, help="the runner's output folder")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--select-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"))
    ap.add_argument("--scales", default="0.25,0.5,0.75")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out, data, e = Path(args.out), Path(args.data), args.emotion
    select = ClassifierJudge.load(args.select_judge)
    report = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(data / "lexicons")}
    JudgeRoles(selection=("select", select), report=report,
               fitted_on={n: judge_sources(j) for n, j in report.items()},
               trained_on={"sev-scenarios", "smollm2-own-replies"})
    lm = load_model("smollm2-135m")
    vec = SteeringVector.load(out / "vectors" / f"{e}-{args.method}", lm)
    refs = json.loads((out / "refs.json").read_text())
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    tune = spread(load_prompts("tune"), 10) + [
        NeutralPrompt(id=f"sev-{i}", text=t, kind="narrative", split="tune")
        for i, t in enumerate(sev_prompts(data / "sev", n=8, offset=140))]
    test = load_prompts("test")
    designed = [a for a in baseline_arms(e) if a.condition == "prompt-designed"][0]
    arms = [designed] + [Arm(condition=f"designed+{args.method}@{s}", emotion=e,
                             system_prompt=designed.system_prompt, user_suffix=designed.user_suffix,
                             setting=Setting(vector=vec, strength=float(s)))
                         for s in args.scales.split(",")]
    ref_ppl, ref_rel = refs["tune"]
    ft = score_arms(Scorer(lm, {"select": select}, decoding=decoding, log=log), tune, arms,
                    concept_judges={"select": select}, ref_perplexity=ref_ppl, ref_relevance=ref_rel)
    _, table = select_scale(ft, judge="select", ref_perplexity=ref_ppl)
    base = table[table["condition"] == "prompt-designed"].iloc[0]
    cfg = CollapseConfig(max_opening_share=max(0.25, float(base["opening_share"]) + 0.1))
    table["eligible"] = [(not collapsed(r, cfg)) and r["ppl_ratio"] <= 2.0 for r in table.to_dict("records")]
    table.to_csv(out / f"{e}-combo-tune.csv", index=False)
    ok = table[table["eligible"] & table["condition"].str.startswith("designed+")]
    best = None if ok.empty else str(ok.sort_values("composite", ascending=False).iloc[0]["condition"])
    log(f"{e}: prompt + steering selected {best}\n{table.round(3).to_string()}")
    if best is None:
        atomic_write(out / f"{e}-combo-results.json", json.dumps({"selected": None}))
        return
    scale = float(best.split("@")[1])
    test_arms = [Arm(condition="unsteered", emotion=None), designed,
                 Arm(condition="prompt-designed+steered", emotion=e, system_prompt=designed.system_prompt,
                     user_suffix=designed.user_suffix, setting=Setting(vector=vec, strength=scale))]
    ref_ppl, ref_rel = refs["test"]
    fr = score_arms(Scorer(lm, report, decoding=decoding, log=log), test, test_arms, concept_judges=report,
                    ref_perplexity=ref_ppl, ref_relevance=ref_rel, targets=[e])
    fr.drop(columns=["signals"]).to_csv(out / f"{e}-combo-test-replies.csv", index=False)
    rows = report_rows(fr, judges=list(report), unsteered=fr[fr["condition"] == "unsteered"],
                       ref_perplexity=ref_ppl, ref_relevance=ref_rel)
    pairs = [paired(fr, "prompt-designed+steered", "prompt-designed", judge=j, metric=m)
             for j in report for m in ("expression", "composite")]
    atomic_write(out / f"{e}-combo-results.json", json.dumps(
        {"selected": best, "scale": scale, "rows": rows, "paired": pairs}, indent=1, default=float))
    pd.DataFrame(rows).to_csv(out / f"{e}-combo-results.csv", index=False)
    log(f"{e}: done")


if __name__ == "__main__":
    main()
