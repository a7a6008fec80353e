"""A run's tune replies split by prompt kind: shipped tune prompts (like the test prompts) vs SEV.

``eval_trained_steering.py`` selects on 18 tune prompts: 10 shipped ones (questions, requests,
small talk, instructions; the test prompts are of these kinds) and 8 SEV scenarios (the kind of
text the SEV-trained candidates were trained on). This prints, per emotion and candidate, the
selection judge's gated expression on each part and the median perplexity ratio on the shipped
part, then the point a selection on the shipped part alone would make (highest expression among
points with ratio <= 2 there; the collapse gates need more than 10 prompts and are left out, so
this is an upper bound on what such a selection could pick) next to the run's selected point.
Reads only tune files: no test prompt is touched.

    python benchmarks/tune_by_kind.py t12
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from steering.eval.score import hits


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run prefix: folders <runs>/<run>-<emotion>")
    ap.add_argument("--emotions", default="anger,sadness,happiness,fear,surprise,disgust")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--max-ppl-ratio", type=float, default=2.0)
    ap.add_argument("--table", action="store_true", help="print every candidate, not only the choices")
    args = ap.parse_args(argv)
    picks = []
    for e in args.emotions.split(","):
        d = Path(args.runs) / f"{args.run}-{e}"
        f = pd.read_csv(d / f"{e}-tune-replies.csv")
        ref = json.loads((d / "refs.json").read_text())["tune"][0]
        best = json.loads((d / f"{e}-selection.json").read_text())["best"]
        f = f.assign(hit=hits(f, "select").astype(float),
                     part=f["prompt_id"].str.startswith("sev-").map({True: "sev", False: "shipped"}))
        alone = f[~f["condition"].str.startswith(("designed", "prompt-"))]
        t = alone.pivot_table(index="condition", columns="part", values="hit", aggfunc="mean")
        t["ppl_shipped"] = alone[alone["part"] == "shipped"].groupby("condition")["perplexity"].median() / ref
        t["n_shipped"] = alone[alone["part"] == "shipped"].groupby("condition")["prompt_id"].nunique()
        if args.table:
            print(f"== {e} (selected {best})\n{t.round(2).to_string()}")
        ok = t[t["ppl_shipped"] <= args.max_ppl_ratio].sort_values(["shipped", "ppl_shipped"],
                                                                     ascending=[False, True])
        alt = ok.index[0] if len(ok) else None
        picks.append({"emotion": e, "selected": best,
                      "selected_shipped": t.loc[best, "shipped"] if best in t.index else float("nan"),
                      "selected_sev": t.loc[best, "sev"] if best in t.index else float("nan"),
                      "shipped_only_pick": alt,
                      "pick_shipped": t.loc[alt, "shipped"] if alt else float("nan"),
                      "pick_ppl": t.loc[alt, "ppl_shipped"] if alt else float("nan"),
                      "n_shipped": int(t["n_shipped"].max())})
    p = pd.DataFrame(picks)
    print(p.round(2).to_string(index=False))
    print(f"mean over emotions: selected point {p['selected_shipped'].mean():.2f} on shipped tune prompts "
          f"({p['selected_sev'].mean():.2f} on SEV ones); best within the ratio bound on shipped prompts "
          f"{p['pick_shipped'].mean():.2f}")


if __name__ == "__main__":
    main()
