"""Where a chosen point's expression goes between tune and test: the prompts or the judge?

For each run folder's chosen points (each method's point, the expression rule's point, the
designed prompt) the gated, echo-free expression rate is computed on the tune replies and on
the test replies with the selection judge *and* with both reporting judges. Read across a row:
tune -> test under the selection judge is the change of prompts; selection judge -> a reporting
judge on the test replies is the change of judge. A diagnostic: no choice is made from it, and
the reporting judges' tune rates are never used to select.

    python benchmarks/judge_gap.py runs/t22-{sadness,happiness,fear,surprise} --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from steering.judges.emotion import ClassifierJudge, LexiconJudge


def rate(rows: pd.DataFrame, judge) -> float:
    labels = np.asarray(judge.predict(list(rows["reply"])), dtype=object)
    ok = rows["passed"].astype(bool).to_numpy() & ~rows.get("echo", pd.Series(False, index=rows.index)
                                                          ).fillna(False).astype(bool).to_numpy()
    return float(np.mean((labels == rows["target"].to_numpy(dtype=object)) & ok))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--select-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"))
    ap.add_argument("--data", required=True)
    args = ap.parse_args(argv)
    judges = {"select": ClassifierJudge.load(args.select_judge), "classifier": ClassifierJudge.load(),
              "lexicon": LexiconJudge.load(Path(args.data) / "lexicons")}
    cols = [f"{s}:{j}" for j in judges for s in ("tune", "test")]
    print(f"{'run':<16} {'condition':<22} {'point':<22} " + " ".join(f"{c:>16}" for c in cols))
    gaps = []
    for d in args.dirs:
        emotion = d.name.rsplit("-", 1)[-1]
        sel = json.loads((d / f"{emotion}-selection.json").read_text())
        tune = pd.concat([pd.read_csv(f) for f in sorted(d.glob(f"{emotion}-tune-replies*.csv"))])
        test = pd.read_csv(d / f"{emotion}-test-replies.csv")
        conds = {"prompt-designed": "prompt-designed"}
        conds.update({f"steered:{m}": a for m, a in sel["per_method"].items() if a})
        pick = sel["rules"].get("expression", [None])[0]
        if pick and pick not in sel["per_method"].values():
            conds["rule:expression"] = pick
        for cond, arm in conds.items():
            tr, te = tune[tune["condition"] == arm], test[test["condition"] == cond]
            if tr.empty or te.empty:
                continue
            row = {f"{s}:{j}": rate(part, judge) for j, judge in judges.items()
                   for s, part in (("tune", tr), ("test", te))}
            if cond != "prompt-designed":
                gaps.append(row)
            print(f"{d.name:<16} {cond:<22} {arm:<22} " + " ".join(f"{row[c]:>16.2f}" for c in cols))
    if gaps:
        g = pd.DataFrame(gaps).mean()
        print(f"\nmean over {len(gaps)} steering points: tune->test, selection judge "
              f"{g['test:select'] - g['tune:select']:+.2f}; selection judge -> classifier on test "
              f"{g['test:classifier'] - g['test:select']:+.2f}, -> lexicon "
              f"{g['test:lexicon'] - g['test:select']:+.2f}")


if __name__ == "__main__":
    main()
