"""Steering's random control matched on the edit's size, for ``eval_trained_steering.py`` runs.

The random control of a low-rank (LoReFT) intervention in ``eval_trained_steering.py`` has the
trained one's shapes and parameter norms, and in ``t12`` it moved the model less than the trained
edit (perplexity ratio 1.06 against 1.33), which a smaller edit on real tokens would explain.
This script rebuilds each run's control for the selected steering point with the edit's *size*
matched (``random_like(v, seed=1, states=...)``: the same random subspace as the run's control,
rescaled per site so its mean ``|edit|`` over real tokens equals the trained edit's; the tokens
are the last prompt token and reply tokens of the selected point's own *tune* replies, the tokens
it edits), prints the three mean edit sizes, scores it on the run's test prompts with the
reporting judges, writes ``<emotion>-test-replies-matched.csv`` beside the run's files, and
prints, per emotion and as the per-prompt mean over emotions, the selected steering minus each
control with 95% bootstrap CIs over test prompts, and each arm's median perplexity ratio. A
rank-1 vector adds the same edit to every token, so its norm-matched control is already
size-matched: the run's control is reused.

    python benchmarks/matched_random.py t12 --emotions anger,sadness,happiness,fear,surprise,disgust
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
from steering.eval.baselines import random_like, reply_states
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import load_prompts
from steering.eval.protocol import spread
from steering.eval.scorer import Scorer
from steering.eval.trained import score_arms
from steering.inject import Setting
from steering.judges.emotion import ClassifierJudge, LexiconJudge
from steering.lowrank import LowRankIntervention, load_steering


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run prefix: folders <runs>/<run>-<emotion>")
    ap.add_argument("--emotions", default="anger,sadness,happiness,fear,surprise,disgust")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--seed", type=int, default=1, help="the run's control seed (eval_trained_steering: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="read the scored controls, print")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    emotions = args.emotions.split(",")
    dirs = {e: Path(args.runs) / f"{args.run}-{e}" for e in emotions}
    for e, d in dirs.items():
        if not (d / f"{e}-results.json").is_file():
            raise SystemExit(f"{d / f'{e}-results.json'} is missing: run eval_trained_steering.py first")
    lm = report = None
    frames, sizes = {}, {}
    refs = {e: json.loads((d / "refs.json").read_text())["test"][0] for e, d in dirs.items()}
    for e, d in dirs.items():
        info = json.loads((d / f"{e}-results.json").read_text())
        win, best = info["winner"], info["selected"]["best"]
        f = pd.read_csv(d / f"{e}-test-replies.csv")
        f = f[f["target"] == e]
        out = d / f"{e}-test-replies-matched.csv"
        method, strength = best.split("@")
        v = load_steering(d / "vectors" / f"{e}-{method}") if not args.report_only else None
        if isinstance(v, LowRankIntervention) or (args.report_only and out.is_file()):
            if not args.report_only:
                if lm is None:
                    lm = load_model("smollm2-135m")
                    report = {"classifier": ClassifierJudge.load(),
                              "lexicon": LexiconJudge.load(Path(args.data) / "lexicons")}
                v.check(lm)
                tune = pd.read_csv(d / f"{e}-tune-replies.csv")
                tune = tune[(tune["condition"] == best) & tune["reply"].fillna("").str.strip().ne("")]
                states = reply_states(lm, list(tune["prompt"]), list(tune["reply"]), v.sites)
                plain = random_like(v, seed=args.seed)
                matched = random_like(v, seed=args.seed, states=states)
                sizes[e] = {k: float(np.mean(list(x.edit_norms(states).values())))
                            for k, x in (("trained", v), ("random", plain), ("random-matched", matched))}
                ref_ppl, ref_rel = json.loads((d / "refs.json").read_text())["test"]
                scorer = Scorer(lm, report, decoding=Decoding(max_new_tokens=60), batch_size=64)
                arm = Arm(condition="random-matched", emotion=e,
                          setting=Setting(vector=matched, strength=float(strength)))
                fm = score_arms(scorer, spread(load_prompts("test"), None), [arm], concept_judges=report,
                                ref_perplexity=ref_ppl, ref_relevance=ref_rel, targets=[e])
                fm.drop(columns=["signals"]).to_csv(out, index=False)
                (d / f"{e}-matched-sizes.json").write_text(json.dumps(sizes[e], indent=1))
            m = pd.read_csv(out)
            f = pd.concat([f, m[m["target"] == e]], ignore_index=True)
            if (d / f"{e}-matched-sizes.json").is_file():
                sizes[e] = json.loads((d / f"{e}-matched-sizes.json").read_text())
        else:   # a vector: its norm-matched control is size-matched already
            f = pd.concat([f, f[f["condition"] == "random"].assign(condition="random-matched")],
                          ignore_index=True)
        frames[e] = f.assign(condition=f["condition"].replace({win: "steered"}))
    print(f"{args.run}: selected steering against its random controls, 40 test prompts "
          "(classifier / lexicon, 95% CIs over prompts)")
    for e, s in sizes.items():
        print(f"  {e}: mean |edit| at strength 1 over tune-reply tokens: trained {s['trained']:.2f}, "
              f"random {s['random']:.2f}, random-matched {s['random-matched']:.2f}")
    for cond in ("steered", "random", "random-matched"):
        ppl = {e: float(np.nanmedian(f.loc[f["condition"] == cond, "perplexity"]) / refs[e])
               for e, f in frames.items()}
        expr = {j: pd.concat([condition_hits(f, cond, j) for f in frames.values()], axis=1).mean(axis=1)
                for j in ("classifier", "lexicon")}
        print(f"  {cond}: expression {fmt(ci_over_prompts(expr['classifier']))} / "
              f"{fmt(ci_over_prompts(expr['lexicon']))}; median ppl ratio "
              + ", ".join(f"{e} {x:.2f}" for e, x in ppl.items()))
    for ctl in ("random", "random-matched"):
        for j in ("classifier", "lexicon"):
            per = {e: (condition_hits(f, "steered", j) - condition_hits(f, ctl, j)).dropna()
                   for e, f in frames.items()}
            mean = pd.concat(per.values(), axis=1).mean(axis=1)
            print(f"  steered - {ctl}, {j}: mean {fmt_diff(ci_over_prompts(mean))}; "
                  + "; ".join(f"{e} {fmt_diff(ci_over_prompts(d))}" for e, d in per.items()))


if __name__ == "__main__":
    main()
