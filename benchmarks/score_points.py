"""Score named points of an ``eval_trained_steering.py`` run on its test prompts: a diagnostic.

A run reports on its test prompts only the points its selection chose. This script scores other
points (``METHOD@STRENGTH`` of the run's own vectors) on the same 40 test prompts with the
reporting judges, writes ``<emotion>-test-replies-points.csv`` beside the run's files, and prints
each point's gated expression (per emotion and as the per-prompt mean over emotions, 95% CIs
over test prompts), its median perplexity and relevance ratios, and its paired difference from
conditions of the run's own test replies (``--against``). It selects nothing, and nothing it
prints may be used to choose a point: the test prompts would then select as well as report.

    python benchmarks/score_points.py t19 --emotions sadness,happiness,fear,surprise \\
        --points self2-pref@1 --against steered:self-pref,prompt-user
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from steering_summary import ci_over_prompts, condition_hits, fmt, fmt_diff

from probe.models import load_model
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import load_prompts
from steering.eval.protocol import spread
from steering.eval.scorer import Scorer
from steering.eval.trained import score_arms
from steering.inject import Setting
from steering.judges.emotion import ClassifierJudge, LexiconJudge
from steering.lowrank import load_steering

JUDGES = ("classifier", "lexicon")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run prefix: folders <runs>/<run>-<emotion>")
    ap.add_argument("--emotions", default="anger,sadness,happiness,fear,surprise")
    ap.add_argument("--points", required=True, help="comma-separated METHOD@STRENGTH of the run's vectors")
    ap.add_argument("--against", default="prompt-user",
                    help="comma-separated conditions of the run's test replies to pair each point with")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="read the scored points, print")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    points = [p for p in args.points.split(",") if p]
    dirs = {e: Path(args.runs) / f"{args.run}-{e}" for e in args.emotions.split(",")}
    for e, d in dirs.items():
        if not (d / f"{e}-test-replies.csv").is_file() or not (d / "refs.json").is_file():
            raise SystemExit(f"{d} has no test replies or refs.json: run eval_trained_steering.py first")
    frames, refs = {}, {}
    lm = report = None
    for e, d in dirs.items():
        refs[e] = json.loads((d / "refs.json").read_text())["test"]
        out = d / f"{e}-test-replies-points.csv"
        have = [p for p in points if (d / "vectors" / f"{e}-{p.split('@')[0]}.safetensors").is_file()]
        if not args.report_only and have:
            if lm is None:
                lm = load_model("smollm2-135m")
                report = {"classifier": ClassifierJudge.load(),
                          "lexicon": LexiconJudge.load(Path(args.data) / "lexicons")}
            arms = [Arm(condition=f"point:{p}", emotion=e,
                        setting=Setting(vector=load_steering(d / "vectors" / f"{e}-{p.split('@')[0]}", lm),
                                        strength=float(p.split("@")[1]), label=p)) for p in have]
            scorer = Scorer(lm, report, decoding=Decoding(max_new_tokens=60), batch_size=64)
            fp = score_arms(scorer, spread(load_prompts("test"), None), arms, concept_judges=report,
                            ref_perplexity=refs[e][0], ref_relevance=refs[e][1], targets=[e])
            fp.drop(columns=["signals"]).to_csv(out, index=False)
        f = pd.read_csv(d / f"{e}-test-replies.csv")
        if out.is_file():
            f = pd.concat([f, pd.read_csv(out)], ignore_index=True)
        frames[e] = f[f["target"] == e]
    print(f"{args.run}: points scored on the test prompts (a diagnostic: nothing here selects); "
          "classifier / lexicon, 95% CIs over prompts")
    for p in points:
        cond = f"point:{p}"
        got = {e: f for e, f in frames.items() if cond in set(f["condition"])}
        if not got:
            print(f"  {p}: no emotion has this vector")
            continue
        each = {e: "/".join(f"{condition_hits(f, cond, j).mean():.2f}" for j in JUDGES) for e, f in got.items()}
        ratios = {e: (float(np.nanmedian(f.loc[f["condition"] == cond, "perplexity"]) / refs[e][0]),
                      float(np.nanmedian(f.loc[f["condition"] == cond, "relevance"]) / refs[e][1]))
                  for e, f in got.items()}
        mean = [fmt(ci_over_prompts(pd.concat([condition_hits(f, cond, j) for f in got.values()], axis=1)
                                    .mean(axis=1))) for j in JUDGES]
        print(f"  {p} ({len(got)} emotions): {mean[0]} / {mean[1]}; "
              + ", ".join(f"{e} {x} (ppl {ratios[e][0]:.2f}, rel {ratios[e][1]:.2f})" for e, x in each.items()))
        for other in (a for a in args.against.split(",") if a):
            both = {e: f for e, f in got.items() if other in set(f["condition"])}
            diffs = [fmt_diff(ci_over_prompts(pd.concat(
                [condition_hits(f, cond, j) - condition_hits(f, other, j) for f in both.values()], axis=1)
                .mean(axis=1))) for j in JUDGES]
            print(f"    minus {other} ({len(both)} emotions): {diffs[0]} / {diffs[1]}")


if __name__ == "__main__":
    main()
