"""Two ``eval_trained_steering.py`` runs' selected steering, paired by test prompt.

For each selection rule and reporting judge: the second run's selected steering minus the first
run's, per emotion and as the per-prompt mean over emotions, with 95% bootstrap CIs over test
prompts (the runs share their test prompts). Runs made with ``--rule both``.

    python benchmarks/steering_pairs.py t10 t11 --emotions anger,sadness,happiness,fear,surprise,disgust

``--conditions A B`` pairs two test conditions instead (``first``'s A against ``second``'s B;
give one run twice to compare two candidates of the same run, e.g. each method's selected
point: ``t12 t12 --conditions steered:sev-lm steered:sev-lm-r4``); an emotion where either
condition is missing (no eligible point) is left out and named.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from steering_summary import ci_over_prompts, fmt_diff, load, prompt_hits


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="run prefix: folders <runs>/<first>-<emotion>")
    ap.add_argument("second")
    ap.add_argument("--emotions", default="anger,sadness,happiness,fear,surprise,disgust")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--conditions", nargs=2, metavar=("A", "B"), default=None,
                    help="pair first's condition A with second's condition B (not the selected steering)")
    args = ap.parse_args(argv)
    emotions = args.emotions.split(",")
    rules = ("composite",) if args.conditions else ("composite", "expression")
    for rule in rules:
        frames = {run: load([Path(args.runs) / f"{run}-{e}" for e in emotions], rule)[0]
                  for run in (args.first, args.second)}
        for j in ("classifier", "lexicon"):
            per, cells = [], []
            for e in emotions:
                s = []
                for k, run in enumerate((args.first, args.second)):
                    f = frames[run]
                    pick = (f["condition"] == args.conditions[k]) if args.conditions else (f["role"] == "steered")
                    p = f[(f["emotion"] == e) & pick]
                    s.append(prompt_hits(p, j))
                d = (s[1] - s[0]).dropna()
                if d.empty:
                    cells.append(f"{e} missing")
                    continue
                cells.append(f"{e} {fmt_diff(ci_over_prompts(d))}")
                per.append(d.rename(e))
            if not per:
                print(f"{rule} rule, {j}: no emotion has both conditions ({'; '.join(cells)})")
                continue
            mean = pd.concat(per, axis=1).mean(axis=1)
            what = (f"{args.second}:{args.conditions[1]} - {args.first}:{args.conditions[0]}"
                    if args.conditions else f"{args.second} - {args.first}")
            print(f"{rule} rule, {j}: {what}, mean "
                  f"{fmt_diff(ci_over_prompts(mean))}; " + "; ".join(cells))


if __name__ == "__main__":
    main()
