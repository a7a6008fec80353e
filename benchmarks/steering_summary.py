"""Summarise ``eval_trained_steering.py`` runs over emotions: one table, means with prompt CIs.

Reads ``<dir>/<emotion>-test-replies.csv`` and ``<dir>/<emotion>-results.json`` from every run
folder given, maps each emotion's conditions onto the same roles (unsteered, user-turn prompt,
designed prompt, the selected steering point, designed prompt + its selected steering, a random
vector of the selected point's norm; each trained method's own selected point as ``steered:M``) and prints, per reporting judge:

* per emotion and role: gated, echo-free expression with a 95% bootstrap CI over test prompts;
* the mean over the emotions read, with a CI from resampling the test prompts (the same prompts
  serve every emotion, so a prompt's replies for all emotions move together);
* paired differences (steered - user-turn prompt, steered - random, prompt + steering - designed
  prompt), each the per-prompt mean over emotions, with the same CI;
* median perplexity and relevance ratios to unsteered.

    python benchmarks/steering_summary.py runs/t4 runs/t4-fear runs/t4-surprise runs/t4-disgust

``--tune distill-amp,distill-cd`` also prints those methods' selection rows side by side (the
selection judge's composite, gated expression and perplexity ratio on the tune prompts, per
emotion and scale): what one objective buys over another where it is chosen. ``--gates`` also
prints, per emotion, each steering role's opening share on the test prompts, whether the
selection's collapse gate would call it collapsed there, and its perplexity ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from probe.stats import group_bootstrap_weights, percentile_ci
from steering.eval.composite import CollapseConfig, collapse_report
from steering.eval.score import hits

ROLES = ("unsteered", "prompt-user", "prompt-designed", "steered", "prompt-designed+steered", "random")
PAIRS = (("steered", "prompt-user"), ("steered", "random"), ("steered", "unsteered"),
         ("prompt-designed+steered", "prompt-designed"), ("prompt-designed+steered", "prompt-user"))


def load(dirs: list[Path], rule: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Test replies of every run, each condition mapped onto its role. ``rule``: read the roles
    ``steered`` / ``random`` / ``prompt-designed+steered`` from that selection rule's choices
    (runs made with ``eval_trained_steering.py --rule both``)."""
    frames, chosen = [], {}
    for d in dirs:
        for res in sorted(d.glob("*-results.json")):
            emotion = res.name.removesuffix("-results.json")
            info = json.loads(res.read_text())
            f = pd.read_csv(d / f"{emotion}-test-replies.csv")
            f = f[f["target"] == emotion].copy()
            role = {c: c for c in ROLES}
            role.update({c: c for c in f["condition"].unique() if c.startswith("steered:")})
            best, combo = info["selected"]["best"], info["selected"]["combo"]
            if rule:
                if rule not in info.get("winners", {}):
                    raise SystemExit(f"{res} has no choices of the {rule!r} rule (run with --rule both)")
                role.pop("random"), role.pop("prompt-designed+steered")
                for key, name in (("randoms", "random"), ("combos", "prompt-designed+steered"),
                                  ("winners", "steered")):
                    if info[key][rule]:
                        role[info[key][rule]] = name
                best, combo = info["selected"]["rules"][rule]
            elif info.get("winner"):
                role[info["winner"]] = "steered"
            f["role"] = f["condition"].map(role)
            f["emotion"] = emotion
            chosen[emotion] = {"steered": best, "combo": combo}
            frames.append(f[f["role"].notna()])
    if not frames:
        raise SystemExit("no <emotion>-results.json in the folders given")
    return pd.concat(frames, ignore_index=True), chosen


def prompt_hits(rows: pd.DataFrame, judge: str) -> pd.Series:
    """Each test prompt's share of ``rows`` (replies) that ``judge`` counts as the target, gated."""
    return pd.Series(hits(rows, judge).astype(float),
                     index=rows["prompt_id"].to_numpy()).groupby(level=0).mean()


def condition_hits(frame: pd.DataFrame, condition: str, judge: str) -> pd.Series:
    """:func:`prompt_hits` of ``frame``'s rows of one ``condition``."""
    return prompt_hits(frame[frame["condition"] == condition], judge)


def ci_over_prompts(per_prompt: pd.Series, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    ids = per_prompt.index.to_numpy()
    w = group_bootstrap_weights(ids, n_boot, seed)
    lo, hi = percentile_ci((w @ per_prompt.to_numpy(float)) / w.sum(axis=1))
    return float(per_prompt.mean()), float(lo), float(hi)


def fmt(t) -> str:
    return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"


def fmt_diff(t) -> str:
    return f"{t[0]:+.2f} [{t[1]:+.2f}, {t[2]:+.2f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--judges", default="classifier,lexicon")
    ap.add_argument("--tune", default="", help="methods whose tune rows to compare, e.g. distill-amp,distill-cd")
    ap.add_argument("--rule", default=None, choices=("composite", "expression"),
                    help="runs made with --rule both: the roles from this selection rule's choices")
    ap.add_argument("--gates", action="store_true",
                    help="also print each steering role's collapse gate and perplexity ratio on the test prompts")
    args = ap.parse_args(argv)
    if args.tune:
        tune_table(args.dirs, args.tune.split(","))
    frame, chosen = load(args.dirs, args.rule)
    emotions = list(dict.fromkeys(frame["emotion"]))
    judges = args.judges.split(",")
    for j in judges:
        frame[f"hit:{j}"] = hits(frame, j).astype(float)
    ref = frame[frame["role"] == "unsteered"].groupby("emotion")[["perplexity", "relevance"]].median()

    print("selected:", ", ".join(f"{e}: {c['steered']} / prompt+{c['combo']}" for e, c in chosen.items()))
    head = "| role | " + " | ".join(emotions) + f" | mean of {len(emotions)} | ppl ratio | relevance ratio |"
    for j in judges:
        print(f"\nexpression, {j} (gated, echo-free; 95% CI over test prompts)\n")
        print(head)
        print("|" + "---|" * (len(emotions) + 4))
        methods = sorted(r for r in frame["role"].unique() if r.startswith("steered:"))
        for role in (*ROLES, *methods):
            part = frame[frame["role"] == role]
            if part.empty:
                continue
            cells = []
            for e in emotions:
                pe = part[part["emotion"] == e]
                cells.append(fmt(ci_over_prompts(pe.groupby("prompt_id")[f"hit:{j}"].mean())) if len(pe) else "-")
            per_prompt = part.groupby(["prompt_id", "emotion"])[f"hit:{j}"].mean().groupby("prompt_id").mean()
            ratios = part.groupby("emotion")[["perplexity", "relevance"]].median() / ref
            k = part["emotion"].nunique()
            note = f" (of {k})" if k < len(emotions) else ""
            print(f"| {role} | " + " | ".join(cells) + f" | {fmt(ci_over_prompts(per_prompt))}{note} | "
                  f"{ratios['perplexity'].median():.2f} | {ratios['relevance'].median():.2f} |")
        print(f"\npaired differences, {j} (per prompt, mean over emotions present in both)\n")
        print("| difference | " + " | ".join(emotions) + " | mean |")
        print("|" + "---|" * (len(emotions) + 2))
        for a, b in (*PAIRS, *((m, "prompt-user") for m in methods)):
            cells, per_e = [], []
            for e in emotions:
                pe = frame[frame["emotion"] == e]
                pa = pe[pe["role"] == a].groupby("prompt_id")[f"hit:{j}"].mean()
                pb = pe[pe["role"] == b].groupby("prompt_id")[f"hit:{j}"].mean()
                d = (pa - pb).dropna()
                cells.append(fmt_diff(ci_over_prompts(d)) if len(d) else "-")
                if len(d):
                    per_e.append(d.rename(e))
            mean = fmt_diff(ci_over_prompts(pd.concat(per_e, axis=1).mean(axis=1))) if per_e else "-"
            print(f"| {a} - {b} | " + " | ".join(cells) + f" | {mean} |")
    if args.gates:
        gates_table(frame, emotions, ref)


def gates_table(frame: pd.DataFrame, emotions: list[str], ref: pd.DataFrame) -> None:
    """Opening share (collapsed?) / perplexity ratio of every steering role on the test prompts."""
    print("\ngates on the test prompts: opening share (* = collapsed by the selection's template gate: "
          "shared openings, distinct-n across prompts; a looping reply already fails the fluency gate "
          "per reply) / median perplexity ratio\n")
    print("| role | " + " | ".join(emotions) + " |")
    print("|" + "---|" * (len(emotions) + 1))
    roles = ["steered", "prompt-designed+steered",
             *sorted(r for r in frame["role"].unique() if r.startswith("steered:"))]
    for role in roles:
        cells = []
        for e in emotions:
            part = frame[(frame["role"] == role) & (frame["emotion"] == e)]
            if part.empty:
                cells.append("-")
                continue
            rep = collapse_report(list(part["reply"]), None, CollapseConfig())   # loops: the reply gate
            ratio = part["perplexity"].median() / ref.loc[e, "perplexity"]
            cells.append(f"{rep['opening_share']:.3f}{'*' if rep['collapsed'] else ''} / {ratio:.2f}")
        print(f"| {role} | " + " | ".join(cells) + " |")


def tune_table(dirs: list[Path], methods: list[str]) -> None:
    """Selection rows (tune prompts, selection judge) of ``methods``, alone and with the prompt."""
    print("| emotion | arm | composite | expression | ppl ratio | eligible |\n|---|---|---|---|---|---|")
    for d in dirs:
        for f in sorted(d.glob("*-tune.csv")):
            t = pd.read_csv(f)
            keep = t["condition"].str.removeprefix("designed+").str.split("@").str[0].isin(methods)
            for _, r in t[keep].sort_values("condition").iterrows():
                print(f"| {f.name.removesuffix('-tune.csv')} | {r['condition']} | {r['composite']:.2f} | "
                      f"{r['expression']:.2f} | {r['ppl_ratio']:.2f} | {'yes' if r['eligible'] else 'no'} |")
    print()


if __name__ == "__main__":
    main()
