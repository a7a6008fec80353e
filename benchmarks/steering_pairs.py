"""Two ``eval_trained_steering.py`` runs' selected steering, paired by test prompt.

For each selection rule and reporting judge: the second run's selected steering minus the first
run's, per emotion and as the per-prompt mean over emotions, with 95% bootstrap CIs over test
prompts (the runs share their test prompts). Runs made with ``--rule both``.

    python benchmarks/steering_pairs.py t10 t11 --emotions anger,sadness,happiness,fear,surprise,disgust
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from steering_summary import ci_over_prompts, fmt_diff, load

from steering.eval.score import hits


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="run prefix: folders <runs>/<first>-<emotion>")
    ap.add_argument("second")
    ap.add_argument("--emotions", default="anger,sadness,happiness,fear,surprise,disgust")
    ap.add_argument("--runs", default="runs")
    args = ap.parse_args(argv)
    emotions = args.emotions.split(",")
    for rule in ("composite", "expression"):
        frames = {run: load([Path(args.runs) / f"{run}-{e}" for e in emotions], rule)[0]
                  for run in (args.first, args.second)}
        for j in ("classifier", "lexicon"):
            per, cells = [], []
            for e in emotions:
                s = {}
                for run, f in frames.items():
                    p = f[(f["emotion"] == e) & (f["role"] == "steered")]
                    s[run] = pd.Series(hits(p, j).astype(float),
                                       index=p["prompt_id"].to_numpy()).groupby(level=0).mean()
                d = (s[args.second] - s[args.first]).dropna()
                cells.append(f"{e} {fmt_diff(ci_over_prompts(d))}")
                per.append(d.rename(e))
            mean = pd.concat(per, axis=1).mean(axis=1)
            print(f"{rule} rule, {j}: {args.second} - {args.first}, mean "
                  f"{fmt_diff(ci_over_prompts(mean))}; " + "; ".join(cells))


if __name__ == "__main__":
    main()
