"""``probe steer-flips``: how often steering along an emotion direction flips zero-shot answers.

Registered from :func:`steering.cli.register`. See :mod:`steering.flips.measure` for what is measured.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from probe.io import atomic_write, command_line, run_folder
from probe.report_kinds import register_run_kind

EPILOG = """examples:
  probe steer-flips --limit 84                                # SmolLM2, layers 10-19, x2/4/8 RMS
  probe steer-flips --limit 140 --bands 0-9,10-19,20-29 --strengths 1,2,4,8
  probe steer-flips --positions last-prompt+generated --template options
  probe steer-flips --model llama-3-8b-instruct --device cuda --bands 8-15,16-23
"""


def add_parser(sub) -> dict:
    """Add ``probe steer-flips`` to ``sub``; returns ``{"steer-flips": handler}``."""
    from probe import cli_args as base

    p = sub.add_parser(
        "steer-flips", help="how often steering along an emotion direction flips the model's "
                            "zero-shot emotion answers",
        description="Make emotion directions from the training scenarios of a store, ask the "
                    "model which emotion each held-out stimulus expresses (label scoring) "
                    "unsteered and steered along every direction over layer bands x strengths, "
                    "and report flip rates (to the steered emotion, away from the gold answer) "
                    "with cluster-bootstrap CIs against a random direction.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    base.model_args(p)
    base.data_args(p)
    base.cache_args(p)
    g = p.add_argument_group("steering flips")
    g.add_argument("--target", default=None, help="label target (default: the dataset's)")
    g.add_argument("--bands", default="10-19",
                   help="comma-separated layer bands FIRST-LAST (default: %(default)s)")
    g.add_argument("--strengths", default="2,4,8",
                   help="strengths in units of each layer's typical RMS (default: %(default)s)")
    g.add_argument("--emotions", default=None, help="comma-separated subset (default: all)")
    g.add_argument("--method", default="context-agnostic", help="direction method (default: "
                                                                "%(default)s)")
    g.add_argument("--template", default="completion",
                   help="zero-shot template: one-word, options, completion, letters "
                        "(default: %(default)s)")
    g.add_argument("--positions", default="all", choices=["all", "last-prompt+generated"],
                   help="where the vector is added (default: %(default)s)")
    g.add_argument("--heldout-share", type=float, default=0.5,
                   help="share of scenarios asked about; the rest make the directions "
                        "(default: %(default)s)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    g.add_argument("--seed", type=int, default=0, help="seed of the split and random control")
    p.add_argument("--store", default=None, help="use this store instead of the default one")
    p.add_argument("--out", default=None,
                   help="results folder (default: runs/<model>/steer-flips-<dataset>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    def handler(args) -> int:
        return run(args, base)

    report_kinds()
    return {"steer-flips": handler}


def parse_bands(text: str) -> tuple[tuple[int, int], ...]:
    """``"10-19,20-29"`` -> ``((10, 19), (20, 29))``."""
    from steering.vector import SteeringError

    out = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())) or int(hi or lo) < int(lo):
            raise SteeringError(f"--bands {text!r}: {part!r} is not a band FIRST-LAST, e.g. 10-19")
        out.append((int(lo), int(hi or lo)))
    if not out:
        raise SteeringError("--bands is empty; e.g. --bands 10-19")
    return tuple(out)


def parse_strengths(text: str) -> tuple[float, ...]:
    from steering.vector import SteeringError

    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SteeringError(f"--strengths {text!r}: give numbers, e.g. 2,4,8") from None
    if not values:
        raise SteeringError("--strengths is empty; e.g. --strengths 2,4,8")
    return values


def run(args, base) -> int:
    """Load, cache the store if needed, measure, write the folder, print a summary."""
    from probe.behaviour.templates import select_templates
    from probe.cache import cache_activations, default_store_path
    from steering.flips.figure import plot_flips
    from steering.flips.measure import FlipsConfig, steering_flips

    t0 = time.time()
    config = FlipsConfig(
        strengths=parse_strengths(args.strengths), bands=parse_bands(args.bands),
        emotions=tuple(e.strip() for e in args.emotions.split(",")) if args.emotions else None,
        method=args.method, template=args.template, positions=args.positions,
        heldout_share=args.heldout_share, batch_size=args.batch_size, n_boot=args.bootstrap,
        seed=args.seed)
    select_templates("emotion", (args.template,))  # an unknown template fails before loading
    dataset = base.load_data(args)
    lm = base.load_model(args)
    cache = base.cache_config(args)
    if "last" not in cache.poolings:
        cache = replace(cache, poolings=("last", *cache.poolings))
    store = Path(args.store) if args.store else default_store_path(
        lm, dataset, cache, Path(args.cache_dir) if args.cache_dir else None)
    if not args.store:
        cache_activations(lm, dataset, config=cache, out=store, progress=not args.quiet)
    flips = steering_flips(lm, store, target=args.target, config=config,
                           progress=not args.quiet)
    out = run_folder(args.out, lm.spec.alias, f"steer-flips-{dataset.name}")
    out.mkdir(parents=True, exist_ok=True)
    flips.table.to_csv(out / "results.csv", index=False)
    flips.answers.to_csv(out / "answers.csv", index=False)
    plot_flips(flips.table, out=out / "flips",
               title=f"{lm.spec.alias} · {dataset.name} · steering flips ({args.template}, "
                     f"sum) · {flips.n_items} held-out items")
    run_json = {"command": command_line(getattr(args, "argv", [])),
                "config": asdict(config), "store": str(store), "classes": flips.classes,
                "n_items": flips.n_items, "n_direction_rows": flips.n_train_rows,
                "provenance": lm.provenance(), "seconds": round(time.time() - t0, 1)}
    atomic_write(out / "run.json", json.dumps(run_json, indent=1, default=str) + "\n")  # last
    print(collapse_note(flips.answers))
    print(summary(flips.table))
    print(f"\nresults: {out}  (results.csv, answers.csv, run.json, flips.png/svg)")
    return 0


def collapse_note(answers) -> str:
    """The unsteered answer distribution, with a warning when one answer dominates."""
    lines = []
    for variant, g in answers[answers["direction"] == "none"].groupby("variant", sort=False):
        counts = g["answer"].value_counts()
        acc = float((g["answer"] == g["gold"]).mean())
        line = (f"unsteered ({variant}): accuracy {acc:.2f}; answers "
                + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if counts.iloc[0] > 0.8 * len(g):
            line += (f"  <- collapsed on {counts.index[0]!r}: flips then show which label the "
                     "collapse moves to, not recognition changing item by item")
        lines.append(line)
    return "\n".join(lines)


def summary(table) -> str:
    """Per band and strength: mean flip_to over the emotions vs the random direction."""
    lines = ["steering flips (variant sum): flip_to / flip_away, emotions' mean vs random"]
    part = table[table["variant"] == "sum"]
    for (band, s), g in part.groupby(["band", "strength"], sort=False):
        emo = g[g["direction"] != "random"]
        rnd = g[g["direction"] == "random"]

        def val(df, m):
            v = df[df["metric"] == m]["value"]
            return f"{v.mean():.2f}" if len(v) else "—"
        best = emo[emo["metric"] == "flip_to"].dropna(subset=["value"]).sort_values("value").tail(1)
        if best.empty:
            continue
        lines.append(f"  layers {band:7s} x{s:<5g} flip_to {val(emo, 'flip_to')} (random "
                     f"{val(rnd, 'flip_to')}; best {best['direction'].iloc[0]} "
                     f"{best['value'].iloc[0]:.2f}), flip_away {val(emo, 'flip_away')} (random "
                     f"{val(rnd, 'flip_away')})")
    return "\n".join(lines)


def report_kinds() -> None:
    """Tell ``probe report`` about ``steer-flips`` folders."""
    register_run_kind("steer-flips", headline_metric="flip_to", captions=[(r"flips", (
        "Steering flips: share of answers, flips to the steered emotion and away from the gold "
        "one against strength, per layer band; the random direction dashed grey, 95% CI "
        "bands."))])
