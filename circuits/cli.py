"""``probe circuits``: contributed to ``probe`` through the ``emoprobe.commands`` entry point."""

from __future__ import annotations

import argparse
import re

from probe.errors import EmoprobeError
from probe.io import run_folder
from probe.report_kinds import register_run_kind

EPILOG = """examples:
  probe circuits                                   # happiness direction at L24, heads+neurons+sublayers
  probe circuits --metric direction:happiness,sadness@L24 --validate 100
  probe circuits --baseline pairs --align length --validate all --components heads,sublayers
  probe circuits --metric logprob:happy --label happiness --estimator ig --no-circuit
  probe circuits --dataset ../shared/data/sev --metric direction:positive@L24 --baseline pairs

metrics: direction:EMOTION[,EMOTION...]@L<layer> (direction:all@L24), logit-diff:POS[,POS]-NEG[,NEG],
logprob:WORD (logit metrics need --label: whose prompts)
components: heads, neurons, sublayers, resid (positions from the end), queries, keys
"""


class UsageError(EmoprobeError, ValueError):
    """A ``probe circuits`` option with a bad value."""


def _validate_arg(text: str) -> int:
    if text == "all":
        return -1
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--validate takes a number or 'all', not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("--validate must be >= 1 (or 'all')")
    return n


#: The figures ``probe circuits`` draws (circuits/figures.py), as ``probe report`` captions them.
REPORT_CAPTIONS = (
    (r"heads_(.+)", "Attention heads, {x}: layer x head heatmaps of the attribution estimate and "
                    "of activation patching on one colour scale centred at 0 (grey: not "
                    "measured)."),
    (r"neurons_(.+)", "Neurons, {x}: the largest attribution estimates (and patched effects where "
                      "measured) as horizontal bars."),
    (r"influence_(.+)", "Sublayer influence, {x}: I = ds / (alpha sigma) of attention and MLP "
                        "outputs against layer."),
    (r"scatter_(.+)", "Estimate vs measurement, {x}: attribution (y) against activation patching "
                      "(x), one panel per component type."),
    (r"circuit_(.+)", "The circuit for {x}: its heads, neurons and sublayers by layer."),
    (r"faithfulness", "Faithfulness (solid, CI band) and completeness (dashed) of each circuit "
                      "against its size, on held-out scenarios."),
)

def register(sub) -> dict:
    """Add circuits' subcommands to the ``probe`` parser; returns ``{command: handler}``."""
    from probe.cli_args import data_args, model_args

    p = sub.add_parser(
        "circuits", help="attribution patching, validation against patching, circuits per emotion",
        description="Rank every head, neuron and sublayer by its effect on an emotion metric with "
                    "attribution patching, validate the ranking against activation patching, "
                    "assemble a circuit per emotion and measure its faithfulness on held-out "
                    "scenarios. Writes a tidy table, run.json, circuit files and figures.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    data_args(p)
    g = p.add_argument_group("what to explain")
    g.add_argument("--metric", default="direction:happiness@L24",
                   help="metric (see below; default: %(default)s)")
    g.add_argument("--label", default=None, help="class whose prompts logit metrics explain")
    g.add_argument("--target", default=None, help="label column (default: the dataset's)")
    g = p.add_argument_group("attribution")
    g.add_argument("--components", default="heads,neurons,sublayers",
                   help="comma-separated component types (default: %(default)s)")
    g.add_argument("--estimator", default="atp", choices=["atp", "atp*", "ig"],
                   help="AtP, AtP* (QK fix + GradDrop) or integrated gradients (default: %(default)s)")
    g.add_argument("--baseline", default="mean", choices=["mean", "pairs", "zero"],
                   help="patch to the template-aware mean, to an aligned same-scenario prompt of "
                        "another emotion, or to zero (default: %(default)s)")
    g.add_argument("--align", default="length", choices=["length", "suffix"],
                   help="pairs: keep equal-length pairs and patch every stimulus token, or keep "
                        "all and patch the template suffix only (default: %(default)s)")
    g.add_argument("--prompts", type=int, default=32,
                   help="training prompts (or pairs) per emotion for attribution (default: %(default)s)")
    g.add_argument("--ig-steps", type=int, default=8, help="IG integration points (default: %(default)s)")
    g = p.add_argument_group("validation")
    g.add_argument("--validate", type=_validate_arg, default=None, metavar="N|all",
                   help="activation-patch up to N components per type (or all) and report "
                        "Spearman/Pearson/top-k recall/sign agreement and compute")
    g.add_argument("--validate-prompts", type=int, default=8,
                   help="prompts the validation patches on (default: %(default)s)")
    g = p.add_argument_group("circuits")
    g.add_argument("--no-circuit", dest="circuit", action="store_false",
                   help="attribute (and validate) only")
    g.add_argument("--circuit-types", default="heads,neurons",
                   help="component types a circuit is made of (default: %(default)s)")
    g.add_argument("--circuit-estimator", default="ig", choices=["atp", "atp*", "ig"],
                   help="attribution that ranks circuit candidates against the mean baseline; "
                        "ig walks the path from the intact model to everything ablated "
                        "(default: %(default)s)")
    g.add_argument("--circuit-prompts", type=int, default=16,
                   help="prompts for choosing the size (training) and for faithfulness "
                        "(held-out) (default: %(default)s each)")
    g.add_argument("--faithfulness", type=float, default=0.8,
                   help="faithfulness a circuit must reach (default: %(default)s)")
    g.add_argument("--influence-prompts", type=int, default=8,
                   help="prompts for Wang et al.'s sublayer influence; 0 skips (default: %(default)s)")
    g.add_argument("--test-fraction", type=float, default=0.5,
                   help="share of scenario groups held out (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="split, pairs and samples (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="rows per backward (default: %(default)s)")
    p.add_argument("--out", default=None, help="results folder (default: runs/<model>/circuits-<metric>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no loading bars")
    register_run_kind("circuits", captions=REPORT_CAPTIONS, detect=lambda names: any(
        n.startswith("circuit_") and n.endswith(".json") for n in names))
    return {"circuits": cmd_circuits}


def cmd_circuits(args) -> int:
    from circuits.pipeline import CircuitsConfig, run_circuits
    from probe.cli_args import load_data, load_model

    for name in ("prompts", "validate_prompts", "circuit_prompts", "batch_size", "ig_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    cfg = CircuitsConfig(
        metric=args.metric, components=tuple(args.components.split(",")),
        estimator=args.estimator, baseline=args.baseline, align=args.align, label=args.label,
        target=args.target, prompts=args.prompts, validate=args.validate,
        validate_prompts=args.validate_prompts, circuit=args.circuit,
        circuit_types=tuple(args.circuit_types.split(",")), circuit_prompts=args.circuit_prompts,
        circuit_estimator=args.circuit_estimator,
        faithfulness_target=args.faithfulness, influence_prompts=args.influence_prompts,
        test_fraction=args.test_fraction, seed=args.seed, batch_size=args.batch_size,
        ig_steps=args.ig_steps)
    dataset = load_data(args)
    lm = load_model(args)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", args.metric).strip("-")
    out = run_folder(args.out or None, lm.spec.alias, f"circuits-{slug}")
    run_circuits(lm, dataset, cfg, out)
    return 0
