"""Choose again among earlier runs' candidates with another selection judge; report the choice.

``eval_trained_steering.py`` selects on the tune prompts with one selection judge and reports on
the test prompts with two others. This script asks what a *different* selection judge would
have chosen from the same candidates, without training or generating any tune reply again: it
pools the first-stage tune replies of several runs (``--pool t20,t22:opening:10``: a run prefix
and the positions its steering arms used), scores them with each judge of ``--judges``
(name=path), applies the same gates and rules (:func:`steering.eval.trained.select_scale`, both
rules), and writes one run folder per judge and emotion (``<out>-<judge>-<emotion>/``) in the
layout ``steering_summary.py`` and ``steering_pairs.py`` read. Test replies of a chosen point
are taken from the run that chose it where that run tested it, else generated; unsteered and
the prompts come from the first pool run's test replies (greedy, the same test prompts).

    python benchmarks/reselect.py --pool t20,t22:opening:10,t24:opening:10 --history t19,t18,t14,t13 \\
        --judges old=~/.cache/emoprobe/judges/select_dair_sev,neutral=~/.cache/emoprobe/judges/select_dair_sev_meld \\
        --emotions sadness,happiness,fear,surprise --out runs/t25 --data ../shared/data
    python benchmarks/steering_summary.py runs/t25-neutral-{sadness,happiness,fear,surprise} --rule expression --gates

``--confirm-top K`` adds the runs' second selection stage: each rule's K best eligible points of
each kind judged again on 60 tune prompts (the pool runs' own confirmation replies are reused
where they cover them); without it every judge chooses on the 18 first-stage tune prompts.
``--history``: earlier runs whose tune replies a pool run's reused candidates
came from (``--reuse`` keeps only its last round's new replies); each pooled candidate's
recomputed composite under the judge the pool run used must equal that run's table, or the
script stops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from probe.models import load_model
from steering.eval.baselines import random_like
from steering.eval.composite import CollapseConfig, JudgeRoles, judge_sources
from steering.eval.grid import Arm, Decoding
from steering.eval.prompts import load_prompts
from steering.eval.scorer import Scorer
from steering.eval.trained import (
    RULES,
    add_composites,
    baseline_arms,
    score_arms,
    select_scale,
)
from steering.inject import Setting
from steering.judges.emotion import ClassifierJudge, LexiconJudge
from steering.judges.gate import text_signals
from steering.lowrank import load_steering

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_trained_steering import confirm_choice, confirm_prompts, first_picks, tune_prompts

BASELINES = ("unsteered", "prompt-user", "prompt-designed")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def parse_pool(spec: str) -> list[tuple[str, str]]:
    """``"t20,t22:opening:10"`` -> ``[("t20", "last-prompt+generated"), ("t22", "opening:10")]``."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        run, _, positions = item.partition(":")
        out.append((run, positions or "last-prompt+generated"))
    if not out:
        raise SystemExit("--pool names no run")
    return out


def pooled_tune(runs: Path, pool, history, emotion: str, check_judge) -> tuple[pd.DataFrame, tuple]:
    """Every pool run's first-stage tune replies, conditions prefixed ``<run>/``, and the tune
    references (which all pool runs must share)."""
    frames, refs = [], None
    for run, _ in pool:
        d = runs / f"{run}-{emotion}"
        table = pd.read_csv(d / f"{emotion}-tune.csv").drop_duplicates("condition", keep="last")
        r = tuple(json.loads((d / "refs.json").read_text())["tune"])
        if refs is not None and not np.allclose(r, refs):
            raise SystemExit(f"{d}: tune references {r} differ from the first pool run's {refs}")
        refs = r
        got = {}
        for src in [run, *history]:   # the run's own replies first, then older rounds'
            for f in sorted((runs / f"{src}-{emotion}").glob(f"{emotion}-tune-replies*.csv")):
                rows = pd.read_csv(f)
                for c, part in rows.groupby("condition", sort=False):
                    if c in set(table["condition"]) and c not in got:
                        got[c] = part
        missing = sorted(set(table["condition"]) - set(got))
        if missing:
            raise SystemExit(f"{d}: no tune replies for {missing}; add the runs they came from to --history")
        f = pd.concat(got.values(), ignore_index=True)
        # the CSVs keep no gate signals; the loop checks are text-only, so recompute them
        f["signals"] = text_signals(list(f["reply"]), check_judge.words,
                                    perplexity=list(f["perplexity"]), reference_perplexity=refs[0])
        check = add_composites(f.copy(), concept_judges={"check": check_judge},
                               ref_perplexity=refs[0], ref_relevance=refs[1])
        check["label:check"] = check_judge.predict(list(check["reply"]))
        _, mine = select_scale(check, judge="check", ref_perplexity=refs[0], collapse=CollapseConfig())
        mine = mine.set_index("condition")
        want = table.set_index("condition")
        bad = [c for c in want.index if abs(mine.at[c, "composite"] - want.at[c, "composite"]) > 1e-6
               or bool(mine.at[c, "eligible"]) != bool(want.at[c, "eligible"])]
        if bad:
            raise SystemExit(f"{d}: the pooled replies of {bad} do not reproduce the run's own "
                             "composites and gates (replies from another vector?)")
        f["condition"] = run + "/" + f["condition"]
        frames.append(f)
    return pd.concat(frames, ignore_index=True), refs


def test_reuse(runs: Path, run: str, emotion: str, label: str, combo: bool) -> pd.DataFrame | None:
    """The test replies ``run`` generated for its point ``label`` (or None if it did not test it)."""
    d = runs / f"{run}-{emotion}"
    res = json.loads((d / f"{emotion}-results.json").read_text())
    names = []
    if not combo:
        names += [f"steered:{m}" for m, lab in res["selected"]["per_method"].items() if lab == label]
    for rule, (b, c) in res["selected"]["rules"].items():
        if (c if combo else b) == label:
            names.append(res["combos" if combo else "winners"][rule])
    if not names or names[0] is None:
        return None
    f = pd.read_csv(d / f"{emotion}-test-replies.csv")
    part = f[(f["condition"] == names[0]) & (f["target"] == emotion)]
    return part if len(part) else None


def arm_of(runs: Path, emotion: str, label: str, cond: str, positions: dict, lm,
           control: bool = False) -> Arm:
    """The arm of pooled point ``label`` (``<run>/<method>@<strength>``, or ``designed+...``),
    named ``cond``, in its run's positions; ``control``: a random vector of its norm instead."""
    run, _, lab = label.partition("/")
    m, s = lab.removeprefix("designed+").split("@")
    v = load_steering(runs / f"{run}-{emotion}" / "vectors" / f"{emotion}-{m}", lm)
    if control:
        v = random_like(v, seed=1)
    extra = {}
    if lab.startswith("designed+"):
        d = next(a for a in baseline_arms(emotion) if a.condition == "prompt-designed")
        extra = {"system_prompt": d.system_prompt, "user_suffix": d.user_suffix}
    return Arm(condition=cond, emotion=emotion, **extra,
               setting=Setting(vector=v, strength=float(s), positions=positions[run]))


def choose(name, judge, emotion, tune, refs, base, first, test_refs, lm, report, args, test,
           stage_one) -> None:
    """One selection judge's choice for ``emotion`` from the pooled ``tune`` replies, reported on
    the test prompts into ``<out>-<name>-<emotion>/``."""
    runs, pool, data = Path(args.runs), parse_pool(args.pool), Path(args.data)
    positions, (ref_ppl, ref_rel) = dict(pool), refs
    out = Path(f"{args.out}-{name}-{emotion}")
    out.mkdir(parents=True, exist_ok=True)
    f = add_composites(tune.copy(), concept_judges={"select": judge},
                       ref_perplexity=ref_ppl, ref_relevance=ref_rel)
    f["label:select"] = judge.predict(list(f["reply"]))
    _, table = select_scale(f, judge="select", ref_perplexity=ref_ppl,
                            collapse=CollapseConfig())
    table.to_csv(out / f"{emotion}-tune.csv", index=False)
    picks = {r: first_picks(table, r) for r in RULES}
    log(f"{emotion}, judge {name}: {picks}")
    frames, winners, randoms, combos = [base], {}, {}, {}
    arms, known = [], set()

    def point(label, cond, combo, control=None):
        run, _, lab = label.partition("/")
        if cond in known:
            return
        known.add(cond)
        old = None if control else test_reuse(runs, run, emotion, lab, combo)
        if old is not None:
            frames.append(old.assign(condition=cond))
            return
        arms.append(arm_of(runs, emotion, label, cond, positions, lm, control))

    stage1 = dict(picks)
    if args.confirm_top:   # the pool runs' own confirmation replies, reused where they cover the prompts
        prev = []
        for run, _ in pool:
            f = runs / f"{run}-{emotion}" / f"{emotion}-confirm-replies.csv"
            if f.is_file():
                c = pd.read_csv(f, keep_default_na=False, dtype={"prompt_id": str, "reply": str})
                prev.append(c.assign(condition=run + "/" + c["condition"]))
        replies = out / f"{emotion}-confirm-replies.csv"
        replies.unlink(missing_ok=True)
        if prev:
            pd.concat(prev).to_csv(replies, index=False)
        scorer = Scorer(lm, {"select": judge}, decoding=Decoding(max_new_tokens=args.max_new_tokens),
                        batch_size=64, log=log)
        picks = confirm_choice(emotion, table, args.confirm_top, confirm_prompts(data, stage_one), stage_one,
                               out, scorer, judge, *json.loads((first / "refs.json").read_text())["confirm"],
                               lambda lab: arm_of(runs, emotion, lab, lab, positions, lm), rules=RULES,
                               collapse=CollapseConfig(), reuse=True) or picks
        log(f"{emotion}, judge {name}: confirmed {picks}")
    for k, rule in enumerate(RULES):
        b, c = picks[rule]
        prime = picks[RULES[0]]
        winners[rule] = combos[rule] = randoms[rule] = None
        if b:
            same = k > 0 and b == prime[0]
            winners[rule] = "steered:pick" if k == 0 or same else f"rule:{rule}"
            randoms[rule] = "random" if k == 0 or same else f"random:{rule}"
            point(b, winners[rule], False)
            point(b, randoms[rule], False, control=True)
        if c:
            same = k > 0 and c == prime[1]
            combos[rule] = ("prompt-designed+steered" if k == 0 or same
                            else f"prompt-designed+steered:{rule}")
            point(c, combos[rule], True)
    if arms:
        log(f"{emotion}, judge {name}: test, {len(arms)} arms x {len(test)} prompts")
        scorer = Scorer(lm, report, decoding=Decoding(max_new_tokens=args.max_new_tokens),
                        batch_size=64, log=log)
        fr = score_arms(scorer, test, arms, concept_judges=report, ref_perplexity=test_refs[0],
                        ref_relevance=test_refs[1], targets=[emotion])
        frames.append(fr.drop(columns=["signals"]))
    fr = pd.concat(frames, ignore_index=True).drop(columns=["signals"], errors="ignore")
    fr.to_csv(out / f"{emotion}-test-replies.csv", index=False)
    best, combo = picks[RULES[0]]
    (out / f"{emotion}-results.json").write_text(json.dumps(
        {"selected": {"best": best, "combo": combo, "per_method": {},
                      "rules": {r: list(p) for r, p in picks.items()}},
         "winner": winners[RULES[0]], "winners": winners, "randoms": randoms,
         "combos": combos, "judge": name, "pool": args.pool,
         "stage1": {r: list(p) for r, p in stage1.items()}, "confirm_top": args.confirm_top},
        indent=1))
    (out / "refs.json").write_text(json.dumps({"tune": [ref_ppl, ref_rel], "test": list(test_refs)}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True, help="run prefixes, each RUN or RUN:POSITIONS")
    ap.add_argument("--history", default="", help="older runs the pool runs' reused replies came from")
    ap.add_argument("--judges", required=True, help="NAME=PATH,...: selection judges to choose with")
    ap.add_argument("--check-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"),
                    help="the selection judge the pool runs used (their composites are checked with it)")
    ap.add_argument("--emotions", default="sadness,happiness,fear,surprise")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", required=True, help="prefix: writes <out>-<judge>-<emotion>/")
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--confirm-top", type=int, default=0,
                    help="K: a second selection stage on 60 tune prompts, as eval_trained_steering.py's")
    args = ap.parse_args(argv)
    runs, pool = Path(args.runs), parse_pool(args.pool)
    history = [h for h in args.history.split(",") if h]
    judges = {}
    for item in args.judges.split(","):
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--judges wants NAME=PATH items, got {item!r}")
        judges[name] = ClassifierJudge.load(Path(path).expanduser())
    report = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(Path(args.data) / "lexicons")}
    for name, j in judges.items():
        JudgeRoles(selection=(name, j), report=report,
                   fitted_on={n: judge_sources(r) for n, r in report.items()},
                   trained_on={"sev-scenarios", "smollm2-own-replies", "steering-train-prompts"})
    check = ClassifierJudge.load(Path(args.check_judge).expanduser())
    lm = load_model("smollm2-135m")
    test = load_prompts("test")
    data = Path(args.data)
    stage_one = tune_prompts(data)
    for emotion in args.emotions.split(","):
        tune, (ref_ppl, ref_rel) = pooled_tune(runs, pool, history, emotion, check)
        if sorted(tune["prompt_id"].astype(str).unique()) != sorted(p.id for p in stage_one):
            raise SystemExit("the pooled tune replies are not on the first-stage tune prompts")
        first = runs / f"{pool[0][0]}-{emotion}"
        base = pd.read_csv(first / f"{emotion}-test-replies.csv")
        base = base[base["condition"].isin(BASELINES) & (base["target"] == emotion)]
        if sorted(base["prompt_id"].unique()) != sorted(p.id for p in test):
            raise SystemExit(f"{first}: its test prompts are not the shipped test prompts")
        test_refs = tuple(json.loads((first / "refs.json").read_text())["test"])
        for name, judge in judges.items():
            choose(name, judge, emotion, tune, (ref_ppl, ref_rel), base, first, test_refs, lm, report,
                   args, test, stage_one)


if __name__ == "__main__":
    main()
