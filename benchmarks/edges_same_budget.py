"""Rankers of a ``--edge-estimator hybrid`` run compared on the same patched edges.

A hybrid run's ``edges_<emotion>.csv`` holds every edge's hybrid score (``value``), its
``eap-sublayer`` score (``estimate``), and the edge-patching truth of the validation sample
(``patched``: the hybrid's top N and N random others). From those alone, on that same sample and
the same prompts, this scores three rankers against the truth:

* ``eap-sublayer``: the estimates, nothing patched;
* ``same budget``: ``eap-sublayer`` with its own top B edges patched (B = the number of edges the
  hybrid patched), the control the hybrid's node rule has to beat: the same patching spent on the
  edges ``eap-sublayer`` ranks highest (a sampled edge among them takes its patched value, the
  others keep their estimates, which is all the sample can see);
* ``hybrid``: the run's ranking.

Point estimates (Spearman and recall@k over the sampled edges; no CI: the CSV keeps means over
prompts). The sample was drawn from the hybrid's top N, so it favours the hybrid's top; read the
comparison as paired on those edges, not as a fresh validation of the other two.

    python benchmarks/edges_same_budget.py runs/edges24-hy-a runs/edges24-hy-b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from circuits.validate import recall_at


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="folders of probe circuits --edge-estimator hybrid runs")
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        summary = json.loads((Path(run) / "run.json").read_text())["emotions"]
        for csv in sorted(Path(run).glob("edges_*.csv")):
            f = pd.read_csv(csv)
            nodes = summary[csv.stem.removeprefix("edges_")]["edges"].get("exact_nodes")
            if "estimate" not in f or not nodes:
                raise SystemExit(f"{csv} is not from a --edge-estimator hybrid run")
            exact = f["upstream"].isin(nodes)
            budget = int(exact.sum())
            top_b = set(f.reindex(f["estimate"].abs().sort_values(ascending=False).index)
                        .head(budget)["edge"])
            s = f[f["patched"].notna()]
            truth = s["patched"].to_numpy()
            same = np.where(s["edge"].isin(top_b), s["patched"], s["estimate"])
            for name, est in (("eap-sublayer", s["estimate"].to_numpy()), ("same budget", same),
                              ("hybrid", s["value"].to_numpy())):
                rows.append({"emotion": csv.stem.removeprefix("edges_"), "ranker": name,
                             "patched by the ranker": 0 if name == "eap-sublayer" else budget,
                             "sampled edges it patched": int(s["edge"].isin(top_b).sum()) if name == "same budget"
                             else int(exact[s.index].sum()) if name == "hybrid" else 0,
                             "spearman": spearmanr(est, truth)[0],
                             **{f"recall@{k}": recall_at(est, truth, k) for k in (10, 20)}})
    t = pd.DataFrame(rows)
    print(t.round(2).to_string(index=False))
    print("\nmean over emotions:")
    print(t.groupby("ranker", sort=False)[["spearman", "recall@10", "recall@20"]].mean().round(2).to_string())


if __name__ == "__main__":
    main()
