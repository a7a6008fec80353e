"""Markdown tables of a ``probe circuits`` run folder: each circuit's closeness, random circuits,
ablations, behaviour, stability, and the validated ranker's recall (what docs/circuits.md shows).

    python benchmarks/circuits_table.py runs/docs/circuits-closeness

Reads ``circuit_<emotion>.json`` (written as each emotion finishes) and, when the run finished,
``run.json`` for the validation; prints one table per part.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from circuits.verdict import error_reach


def _f(x, d=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _ci(v, lo, hi) -> str:
    return f"{_f(v)} [{_f(lo)}, {_f(hi)}]"


def circuits(folder: Path) -> list[str]:
    out = ["| emotion | found by | size (heads + neurons) | share | error, held out | "
           "signed error, held out | error, train | random circuits: median (closest 5%) | "
           "as close | CMD area (ranking) | split-half Jaccard | missed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    abl = ["| emotion | mean | zero | resample | says: (behaviour) | says:, random median |",
           "|---|---|---|---|---|---|"]
    for p in sorted(folder.glob("circuit_*.json")):
        c = json.loads(p.read_text())
        f, info = c["faithfulness"], c["info"]
        comp = {"heads": 0, "neurons": 0}
        for x in c["components"]:
            comp[x["type"]] = comp.get(x["type"], 0) + 1
        r = f.get("random", {})
        s = info.get("stability", {})
        missed = []
        if c["fraction"] > info.get("max_fraction", 0.05):
            missed.append("small")
        if f["error"] > f["max_error"]:
            missed.append("close")
        elif not error_reach(f) <= f["max_error"]:
            missed.append("close by upper CI")
        if not r or r["share_as_close"] > 0.05:
            missed.append("far from random")
        if not s.get("stable"):
            missed.append("stable")
        sr = info.get("search") or {}
        found = "ranking"
        if sr.get("chosen"):
            t = next(t for t in sr["tried"] if t["size"] == c["size"])
            found = f"search ({100 * t['changed']:.0f}% swapped)"
        if s.get("of") == "search":
            rs = info.get("ranking_stability", {})
            stab = (f"{_f(s.get('jaccard'))} (rank + search, {s['n_splits']} split; ranking "
                    f"{_f(rs.get('jaccard'))})")
        else:
            stab = _ci(s.get('jaccard'), s.get('ci_low'), s.get('ci_high'))
        out.append(
            f"| {c['name']} | {found} | {c['size']} ({comp['heads']} + {comp['neurons']}) | "
            f"{100 * c['fraction']:.2f}% | {_ci(f['error'], *f['error_ci'])} | "
            f"{_ci(f['signed_error'], *f['signed_error_ci']) if 'signed_error' in f else 'n/a'} | "
            f"{_ci(f['error_train'], *f['error_train_ci'])} ({f['chosen_by']}) | "
            f"{_f(r.get('median'))} ({_f(r.get('p05'))}) | "
            f"{_f(100 * r['share_as_close'], 0) + '%' if r else 'n/a'} | {_f(f['area_error'], 3)} | "
            f"{stab} | {', '.join(missed) or 'none'} |")
        a = f.get("ablations", {})
        b = f.get("behaviour", {})
        cell = lambda d: _ci(d["error"], *d["error_ci"]) if d else "n/a"  # noqa: E731
        abl.append(f"| {c['name']} | {cell(a.get('mean'))} | {cell(a.get('zero'))} | "
                   f"{cell(a.get('resample'))} | {cell(b)} | "
                   f"{_f(b.get('random', {}).get('median'))} |")
    return out + [""] + abl


def validation(folder: Path) -> list[str]:
    """From run.json, or (a run still going or stopped) from each ``validation_<emotion>.csv``."""
    import pandas as pd

    out = ["| emotion | estimator | type | n | Spearman | recall@20 | random p95 | "
           "patched top-20 split-half Jaccard |", "|---|---|---|---|---|---|---|---|"]
    run = folder / "run.json"
    emotions = json.loads(run.read_text())["emotions"] if run.exists() else {}
    for csv in sorted(folder.glob("validation_*.csv")):
        e = csv.stem.removeprefix("validation_")
        v = emotions.get(e, {}).get("validation", {})
        halves = {t: s for p in v.get("runs", []) for t, s in p["truth_split_half"].items()}
        for r in pd.read_csv(csv).to_dict("records"):
            s = halves.get(r["type"], {})
            out.append(f"| {e} | {r['estimator']} | {r['type']} | {r['n']} | "
                       f"{_ci(r['spearman'], r.get('spearman_low'), r.get('spearman_high'))} | "
                       f"{_ci(r['recall@20'], r.get('recall@20_low'), r.get('recall@20_high'))} | "
                       f"{_f(r.get('recall@20_random_p95'))} | "
                       + (f"{_ci(s.get('jaccard'), s.get('ci_low'), s.get('ci_high'))} |" if s
                          else "see validation_<emotion>.txt |"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a probe circuits output folder")
    args = p.parse_args(argv)
    print("\n".join(circuits(args.run) + [""] + validation(args.run)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
