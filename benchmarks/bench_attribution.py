"""Attribution patching against activation patching: agreement and compute, in one run.

For each emotion: build the prompts (aligned same-scenario pairs, or the emotion's prompts with
the template-aware mean baseline) from the *training* scenarios, attribute every head, sublayer
(and a random sample of neurons) with each estimator, activation-patch the same components on
the same prompts, and report Spearman, Pearson, top-k recall, sign agreement and the compute
of both sides (wall time and rows x blocks) measured in this run.

    python benchmarks/bench_attribution.py --emotions happiness,sadness --prompts 8 \\
        --baseline pairs --estimators atp,ig --json runs/bench_attribution.json

Timings on a shared machine are noisy; the ratios compare two sides measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _prompts(lm, ds, emotion, train, args):
    from circuits.baselines import MeanBaseline
    from circuits.components import groups
    from circuits.pairs import make_pairs, rows_of

    if args.baseline == "pairs":
        pairs = make_pairs(lm, ds, label=emotion, groups=train, align=args.align, seed=args.seed)
        pairs = pairs.select(range(min(args.prompts, len(pairs))))
        batch, base = pairs.noising()
        return batch, base, list(pairs.groups)
    rows = rows_of(ds, emotion, groups=train).sort_values("group").head(args.prompts)
    ref = ds.frame[ds.frame["group"].isin(train)]
    sites = [g.site for g in groups(lm, args.types, range(args.layer + 1))]
    base = MeanBaseline.fit(lm, list(ref["text"]), sites)
    return lm.batch(list(rows["text"])), base, list(rows["group"])


def _saved_compute(folder: Path, emotion: str):
    from circuits.runs import Compute

    saved = json.loads((folder / "bench.json").read_text())["emotions"][emotion]["patching"]
    return Compute(forward_passes=saved["forward_passes"],
                   forward_row_blocks=saved["forward_row_blocks"], seconds=saved["seconds"])


def run(args) -> dict:
    from circuits.attribution import attribute
    from circuits.metrics import direction, emotion_directions
    from circuits.pairs import split_groups
    from circuits.patching import patch
    from circuits.validate import compare
    from probe.data import load_dataset
    from probe.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    ds = load_dataset(args.dataset)
    train, _ = split_groups(ds, seed=args.seed)
    dirs = emotion_directions(lm, ds, layer=args.layer, groups=train)
    out = {"config": vars(args), "emotions": {}}
    for emotion in args.emotions:
        metric = direction(dirs[emotion], layer=args.layer, lm=lm, name=f"direction:{emotion}@L{args.layer}")
        batch, base, groups_ = _prompts(lm, ds, emotion, train, args)
        attrs = {e: attribute(lm, batch, metric, base, types=args.types, estimator=e,
                              batch_size=args.prompts, steps=args.ig_steps, row_groups=groups_)
                 for e in args.estimators}
        first = attrs[args.estimators[0]]
        rng = np.random.default_rng(args.seed)
        comps = []
        for g in first.groups:
            cs = g.components()
            if g.type == "neurons":
                continue
            comps += cs
        neurons = [c for g in first.groups if g.type == "neurons" for c in g.components()]
        if neurons and args.neurons:
            comps += [neurons[i] for i in sorted(rng.choice(len(neurons), args.neurons, replace=False))]
        saved = Path(args.reuse_patching or "") / f"patch_{emotion}.csv"
        if args.reuse_patching and saved.is_file():
            # The patching table of an earlier run on the same prompts (same seed and --prompts):
            # only the estimators are timed again; the compute ratio uses the saved run's cost.
            tt = pd.read_csv(saved)
            truth = _saved_compute(Path(args.reuse_patching), emotion)
        else:
            truth = patch(lm, batch, metric, base, comps, rows_per_forward=args.rows_per_forward,
                          row_groups=groups_)
            tt = truth.table()
            truth = truth.compute
        res = {"prompts": len(batch), "patched": len(tt), "patching": truth.as_dict(),
               "estimators": {}}
        print(f"\n== {emotion} ({len(batch)} prompts, {base.name} baseline, {len(tt)} components patched)")
        print(f"patching: {truth.seconds:.1f} s, {truth.cost} rows x blocks")
        for e, a in attrs.items():
            table = compare(a.table(), tt, signed=a.signed)
            c = a.compute
            ratio = {"wall": truth.seconds / c.seconds, "rows_x_blocks": truth.cost / c.cost}
            res["estimators"][e] = {"compute": c.as_dict(), "ratio": ratio,
                                    "table": table.to_dict("records")}
            print(f"-- {e}: {c.seconds:.1f} s, {c.cost} rows x blocks; patching / {e}: "
                  f"{ratio['wall']:.1f}x wall, {ratio['rows_x_blocks']:.1f}x rows x blocks")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        out["emotions"][emotion] = res
        if args.csv_dir:
            d = Path(args.csv_dir)
            d.mkdir(parents=True, exist_ok=True)
            tt.to_csv(d / f"patch_{emotion}.csv", index=False)
            pd.concat([a.table() for a in attrs.values()]).to_csv(d / f"attr_{emotion}.csv", index=False)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="emotion-scenarios")
    p.add_argument("--emotions", default="happiness,sadness", type=lambda s: s.split(","))
    p.add_argument("--layer", type=int, default=24)
    p.add_argument("--baseline", choices=["pairs", "mean"], default="pairs")
    p.add_argument("--align", choices=["length", "suffix"], default="length")
    p.add_argument("--types", default="heads,sublayers", type=lambda s: tuple(s.split(",")))
    p.add_argument("--neurons", type=int, default=0, help="random neurons to patch (needs 'neurons' in --types)")
    p.add_argument("--estimators", default="atp", type=lambda s: s.split(","))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--ig-steps", type=int, default=8)
    p.add_argument("--rows-per-forward", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--csv-dir", default=None,
                   help="also write per-component tables (and bench.json) here")
    p.add_argument("--reuse-patching", default=None, metavar="DIR",
                   help="read patch_<emotion>.csv and bench.json from an earlier --csv-dir run "
                        "with the same prompts instead of patching again")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = run(args)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1, default=str) + "\n"
    for path in (args.json, args.csv_dir and Path(args.csv_dir) / "bench.json"):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)


if __name__ == "__main__":
    main()
