"""Score a run's trained vector on parts of its layers or positions on the tune prompts.

``eval_trained_steering.py`` trains every vector at the same layers (6/9/12/15 by default) and
adds it at the last prompt token and every reply token. This diagnostic asks where the
expression and the disfluency sit: it keeps only some of a vector's layers
(``SteeringVector.at``) and/or adds it at other positions (e.g. ``opening:K``: only the states
that predict the reply's first K tokens), scores each variant at several strengths on the
run's 18 first-stage tune prompts with the *selection* judge, and prints the gated expression,
the median perplexity ratio and the collapse gate per point, beside the full vector's rows from
the run's own tune table. It touches no test prompt and no reporting judge, so what it prints may
inform a pre-registration; it chooses no operating point. Writes
``<emotion>-tune-layers.csv`` beside the run's files.

    python benchmarks/layer_subsets.py t19 --emotions sadness,happiness,fear,surprise \\
        --method self2-pref --subsets 6,9/12,15 --strengths 1,1.5,2
    python benchmarks/layer_subsets.py t21 --method self2-pref --subsets all \
        --positions opening:4,opening:8 --strengths 1,1.5,2 --tag opening
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from eval_trained_steering import tune_prompts

from probe.models import load_model
from steering.eval.grid import Arm, Decoding
from steering.eval.scorer import Scorer
from steering.eval.trained import score_arms, select_scale
from steering.inject import Setting
from steering.judges.emotion import ClassifierJudge
from steering.vector import SteeringError, SteeringVector

COLUMNS = ["condition", "expression", "composite", "ppl_ratio", "opening_share", "eligible"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run prefix: folders <runs>/<run>-<emotion>")
    ap.add_argument("--emotions", default="sadness,happiness,fear,surprise")
    ap.add_argument("--method", required=True, help="the run's vector <emotion>-<method>")
    ap.add_argument("--subsets", default="all",
                    help="layer subsets, '/'-separated, e.g. 6,9/12,15 ('all': the whole vector)")
    ap.add_argument("--positions", default="last-prompt+generated",
                    help="comma-separated position modes (Setting.positions), e.g. opening:4,opening:8")
    ap.add_argument("--tag", default="layers", help="output files <emotion>-tune-<tag>.csv")
    ap.add_argument("--strengths", default="1,1.5,2")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--select-judge", default=str(Path.home() / ".cache/emoprobe/judges/select_dair_sev"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="read the scored rows, print")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    subsets = [None if s == "all" else tuple(int(x) for x in s.split(","))
               for s in args.subsets.split("/") if s]
    positions = [p for p in args.positions.split(",") if p]
    try:   # a bad mode fails here, before anything loads
        for p in positions:
            Setting(positions=p)
    except SteeringError as exc:
        raise SystemExit(f"error: {exc}") from None
    strengths = [float(s) for s in args.strengths.split(",")]
    lm = select = None
    for e in args.emotions.split(","):
        d = Path(args.runs) / f"{args.run}-{e}"
        vec_path = d / "vectors" / f"{e}-{args.method}"
        if not vec_path.with_suffix(".safetensors").is_file() or not (d / "refs.json").is_file():
            raise SystemExit(f"{d} has no {args.method} vector or refs.json: run eval_trained_steering.py first")
        out = d / f"{e}-tune-{args.tag}.csv"
        ref_ppl, ref_rel = json.loads((d / "refs.json").read_text())["tune"]
        if not args.report_only:
            if lm is None:
                lm = load_model("smollm2-135m")
                select = ClassifierJudge.load(args.select_judge)
            vec = SteeringVector.load(vec_path, lm)
            try:   # SteeringVector.at names a layer the vector lacks
                parts = {s: vec.at(s) if s else vec for s in subsets}
            except SteeringError as exc:
                raise SystemExit(f"{vec_path}: {exc}") from None
            arms = [Arm(condition=label(args.method, s, p, k), emotion=e,
                        setting=Setting(vector=parts[s], strength=k, positions=p))
                    for s in subsets for p in positions for k in strengths]
            scorer = Scorer(lm, {"select": select}, decoding=Decoding(max_new_tokens=60), batch_size=64)
            ft = score_arms(scorer, tune_prompts(Path(args.data)), arms, concept_judges={"select": select},
                            ref_perplexity=ref_ppl, ref_relevance=ref_rel)
            ft.drop(columns=["signals"]).to_csv(d / f"{e}-tune-{args.tag}-replies.csv", index=False)
            _, table = select_scale(ft, judge="select", ref_perplexity=ref_ppl)
            table.to_csv(out, index=False)
        table = pd.read_csv(out)
        full = pd.read_csv(d / f"{e}-tune.csv")
        full = full[full["condition"].str.startswith(f"{args.method}@")]
        both = pd.concat([full, table], ignore_index=True)
        cols = [c for c in COLUMNS if c in both.columns]
        print(f"\n{e}: {args.method} on the tune prompts (selection judge; full vector = the run's rows)")
        print(both[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def label(method: str, layers, positions: str, strength: float) -> str:
    """``self2-pref[12-15]{opening:4}@1``: the parts left at their defaults are not named."""
    where = f"[{'-'.join(map(str, layers))}]" if layers else ""
    when = "" if positions == "last-prompt+generated" else f"{{{positions}}}"
    return f"{method}{where}{when}@{strength:g}"


if __name__ == "__main__":
    main()
