"""``probe steer-eval``: the steering evaluation protocol (grid on the tune prompts, selection
under fluency and capability constraints, held-out scores with baselines; docs/steering.md).

Registered by :func:`steering.cli.register` with the other steering commands.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from probe.io import command_line

EPILOG_EVAL = """examples:
  probe steer-eval --quick --out runs/steer-eval-quick              # 2 emotions, tiny grid (~1 min)
  probe steer-eval --strong-judge ~/.cache/emoprobe/judges/strong_judge --out runs/steer-eval
  probe steer-eval --emotions fear,anger --bands 10-19,14-19 --strengths 10,20 --out runs/se2
Selection reads only the tune prompts; results.csv holds the held-out (test) scores.
"""


def add_parser(sub) -> None:
    from probe.cli_args import model_args

    p = sub.add_parser("steer-eval", help="evaluate steering: tune, select, held-out scores",
                       description="Search steering settings on the tune half of the shipped "
                                   "neutral prompts, select one per emotion under a fluency and "
                                   "a capability constraint, and score it with every judge on the "
                                   "test half next to prompting, prompting + steering, a random "
                                   "direction and no steering.",
                       epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--out", required=True, help="output folder (must not exist yet)")
    p.add_argument("--quick", action="store_true",
                   help="a small slice: happiness and fear, one configuration, 2 strengths, "
                        "3 tune and 4 test prompts, 12 capability items")
    p.add_argument("--emotions", default=None, help="comma-separated (default: all six)")
    g = p.add_argument_group("grid (tune prompts)")
    g.add_argument("--methods", default=None, help="direction methods, e.g. context-agnostic,mean-diff")
    g.add_argument("--bands", default=None, help="layer bands, e.g. 6-11,10-19,20-25")
    g.add_argument("--positions", default=None, help="e.g. last-prompt+generated,all")
    g.add_argument("--strengths", default=None,
                   help="coarse strengths summed over a band's layers (x RMS), e.g. 6,12,24")
    g.add_argument("--coarse-prompts", type=int, default=None, help="tune prompts of the coarse pass")
    g.add_argument("--ladder-configs", type=int, default=None, help="configurations per emotion refined")
    g.add_argument("--ladder-steps", type=int, default=None, help="strengths between coarse ones")
    g.add_argument("--ladder-prompts", type=int, default=None,
                   help="tune prompts of the ladder and the selection (default: all 40)")
    g.add_argument("--test-prompts", type=int, default=None, help="test prompts (default: all 40)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: 40")
    g = p.add_argument_group("selection and scoring")
    g.add_argument("--max-ppl-ratio", type=float, default=None, help="default: 2")
    g.add_argument("--max-capability-drop", type=float, default=None, help="default: 0.10")
    g.add_argument("--capability-items", type=int, default=None,
                   help="N MC items spread over the set (default: all 120)")
    g.add_argument("--capability-checks", type=int, default=None,
                   help="candidates per emotion whose capability is measured (default: 3)")
    g.add_argument("--pareto-capability", action="store_true",
                   help="also measure capability at every ladder strength of the chosen configuration")
    g.add_argument("--strong-judge", default=None,
                   help="a third judge built locally with scripts/build_judge.py --sources "
                        "goemotions,dair,sev-replies --out PATH (built there if missing; never shipped)")
    g.add_argument("--lexicon", default=None, help="NRC lexicon file or folder (default: "
                                                   "$EMOPROBE_SHARED_DATA/lexicons)")
    g.add_argument("--store", default=None, help="activation store for the directions (default: "
                                                 "cache emotion-scenarios for the model)")
    g.add_argument("--write-operating-points", action="store_true",
                   help="record the selected points in the user's table "
                        "<$EMOPROBE_HOME or ~/.cache/emoprobe>/operating_points.json (merged per "
                        "model and emotion; probe steer then prefers them to the shipped ones)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default: 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _csv(text, cast=str):
    return tuple(cast(x.strip()) for x in text.split(",") if x.strip()) if text else None


def eval_config(args):
    """The :class:`~steering.eval.protocol.EvalConfig` the ``steer-eval`` arguments ask for."""
    from dataclasses import replace

    from steering.eval.protocol import EvalConfig

    emotions = _csv(args.emotions)
    base = EvalConfig.quick(**({"emotions": emotions} if emotions else {})) if args.quick \
        else EvalConfig(**({"emotions": emotions} if emotions else {}))
    grid = {k: v for k, v in {
        "methods": _csv(args.methods), "positions": _csv(args.positions),
        "bands": tuple(tuple(int(x) for x in b.split("-")) if "-" in b else (int(b), int(b))
                       for b in args.bands.split(",")) if args.bands else None,
        "totals": _csv(args.strengths, float), "coarse_prompts": args.coarse_prompts,
        "ladder_configs": args.ladder_configs, "ladder_steps": args.ladder_steps}.items()
        if v is not None}
    top = {k: v for k, v in {
        "ladder_prompts": args.ladder_prompts, "test_prompts": args.test_prompts,
        "max_ppl_ratio": args.max_ppl_ratio, "max_capability_drop": args.max_capability_drop,
        "capability_items": args.capability_items, "batch_size": args.batch_size,
        "capability_checks": args.capability_checks,
        "pareto_capability": True if args.pareto_capability else None,
        "seed": args.seed}.items() if v is not None}
    decoding = replace(base.decoding, max_new_tokens=args.max_new_tokens) if args.max_new_tokens \
        else base.decoding
    return replace(base, grid=replace(base.grid, **grid), decoding=decoding, **top)


def _eval_judges(args, log):
    from pathlib import Path as _P

    from steering.eval.scorer import load_judges

    strong = args.strong_judge
    if strong:
        base = _P(strong).expanduser()
        if not base.with_suffix(".json").is_file():
            from steering.judges.build import build_judge

            log(f"building the local strong judge at {base} (goemotions, dair, sev-replies)")
            build_judge(("goemotions", "dair", "sev-replies"), ("goemotions", "dair", "sev-replies"),
                        out=base)
        strong = str(base)
    return load_judges(strong=strong, lexicon=args.lexicon)


def cmd_steer_eval(args) -> int:
    from probe.cli_args import load_model
    from steering.directions import directions
    from steering.eval.protocol import run_evaluation
    from steering.eval.report import print_summary, write_report
    from steering.vector import SteeringError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SteeringError(f"{out} exists and is not empty; choose another --out or delete it")
    config = eval_config(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}",
                                                                file=sys.stderr, flush=True))
    t0 = time.time()
    judges = _eval_judges(args, log)
    lm = load_model(args)
    source = args.store or lm
    layers = config.grid.layers()
    bad = [x for x in layers if x >= lm.n_layers]
    if bad:
        raise SteeringError(f"--bands reach layer {bad[0]}; the model has {lm.n_layers} layers")
    vectors = {m: directions(source, method=m, layers=layers) for m in config.grid.methods}
    result = run_evaluation(lm, config, vectors=vectors, judges=judges, log=log)
    run_id = f"steer-eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    first = next(iter(vectors[config.grid.methods[0]].values()))
    run = {"run_id": run_id, "command": command_line(getattr(args, "argv", [])),
           "model": lm.provenance(), "seconds": round(time.time() - t0, 1),
           "judges": {n: getattr(j, "meta", {}).get("heldout") if hasattr(j, "meta") else None
                      for n, j in judges.items()},
           "directions": {k: first.meta.get(k) for k in ("store", "dataset", "dataset_hash",
                                                          "pooling", "site")}}
    write_report(result, out, run=run)
    print_summary(result, out)
    if args.write_operating_points:
        _write_points(result, lm, run_id, run["command"])
    return 0


def _write_points(result, lm, run_id: str, command: str) -> None:
    from steering.operating_points import OperatingPoint, write_operating_point

    for emotion, sel in result.selections.items():
        pt = sel.point
        test = result.table[(result.table.emotion == emotion) & (result.table.condition == "steered")]
        held = ", ".join(f"{r.judge} {r.value:.2f}" for r in test.itertuples())
        path = write_operating_point(OperatingPoint(
            model=lm.spec.alias, emotion=emotion, method=pt.method, site=pt.site,
            layers=tuple(pt.layers), strength=pt.strength, positions=pt.positions,
            generate=result.config.decoding.kwargs(), provisional=not sel.constraints_met,
            source=f"probe steer-eval run {run_id}: `{command}`. {sel.note}. Held-out gated "
                   f"expression: {held}."), weight_fingerprint=lm.fingerprint)
    print(f"recorded {len(result.selections)} operating points in {path} (your table: "
          "probe steer uses them before the shipped defaults)")
