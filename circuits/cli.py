"""``probe circuits``: contributed to ``probe`` through the ``emoprobe.commands`` entry point."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from probe.errors import EmoprobeError
from probe.io import run_folder
from probe.report_kinds import register_run_kind

EPILOG = """examples:
  probe circuits                                   # happiness direction at L24, heads+neurons+sublayers
  probe circuits --metric direction:happiness,sadness@L24 --validate      # patch every component
  probe circuits --validate 250     # types with more than 500: top 250 + 250 random (said so)
  probe circuits --baseline pairs --align length --validate all --components heads,sublayers
  probe circuits --metric logprob:happy --label happiness --estimator ig --no-circuit
  probe circuits --dataset ../shared/data/sev --metric direction:positive@L24 --baseline pairs

metrics: direction:EMOTION[,EMOTION...]@L<layer> (direction:all@L24), logit-diff:POS[,POS]-NEG[,NEG],
logprob:WORD (logit metrics need --label: whose prompts), says:EMOTION[,EMOTION...] (what the model says:
log-odds of the emotion's words against the other emotions' words at the reply start)
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
    g.add_argument("--validate", type=_validate_arg, default=None, nargs="?", const="all",
                   metavar="N|all",
                   help="activation-patch the components the run's ranking estimator scores "
                        "(the circuit's ranker when a circuit is built) and report Spearman, "
                        "Pearson, top-k recall with bootstrap CIs over prompts and a random "
                        "baseline, sign agreement, split-half agreement and compute. Bare or "
                        "'all': every component; N: a type with more than 2N components is "
                        "patched on its top N plus N drawn at random by layer (reported)")
    g.add_argument("--validate-prompts", type=int, default=8,
                   help="prompts the validation patches on (default: %(default)s)")
    g.add_argument("--edges", type=int, default=0, metavar="N",
                   help="edge attribution (--edge-estimator) between heads, MLPs and the metric on the "
                        "validation prompts, checked by patching its top N and N random edges "
                        "(direction metrics; default: off)")
    g.add_argument("--edge-estimator", default="hybrid",
                   choices=["eap", "eap-norm", "eap-sublayer", "hybrid"],
                   help="what scores the edges: eap (gradient x change at the edge's input), "
                        "eap-norm (the downstream norm taken exactly, linear after it), "
                        "eap-sublayer (the downstream norm + attention or MLP run on each edge's "
                        "change, linear after it) or hybrid (eap-sublayer, the edges of the "
                        "--exact-nodes upstream nodes with the largest ablation change patched "
                        "instead; default: %(default)s)")
    g.add_argument("--exact-nodes", type=int, default=2, metavar="K",
                   help="hybrid: patch every edge out of the K upstream nodes whose ablation "
                        "changes the residual most, relative to its norm (default: %(default)s)")
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
    g.add_argument("--max-error", type=float, default=0.2,
                   help="normalised error |M_circuit - M| / |M_empty - M| a circuit must stay "
                        "within (upper CI bound on training prompts; default: %(default)s)")
    g.add_argument("--max-fraction", type=float, default=0.05,
                   help="size budget as a share of the candidates (default: %(default)s)")
    g.add_argument("--search-rounds", type=int, default=20,
                   help="when no ranked circuit within the size budget is close to the model at the CI level, "
                        "refine it by swaps measured on training prompts (circuits.search) for "
                        "at most N rounds, then try half the size while it stays close; 0: take "
                        "the ranking's top k as it is (default: %(default)s)")
    g.add_argument("--search-halvings", type=int, default=3,
                   help="after a search at the budget, halve the size and search again while "
                        "the circuit stays close on training prompts, at most N times; 0: the "
                        "budget size only (default: %(default)s)")
    g.add_argument("--no-search-stable", dest="search_stable", action="store_false",
                   help="judge the smallest searched circuit that is close even when its "
                        "split-half check is not stable (default: a halving is kept only while "
                        "the halved circuit is stable; else the next larger close one is judged)")
    g.add_argument("--search-splits", type=int, default=1,
                   help="split-half checks of a searched circuit: rank and search on each half "
                        "of the training scenarios (default: %(default)s)")
    g.add_argument("--random-circuits", type=int, default=20,
                   help="random circuits of the same composition judged beside each circuit "
                        "(default: %(default)s)")
    g.add_argument("--no-ablations", dest="ablations", action="store_false",
                   help="judge the circuit under mean ablation only (default: mean, zero, resample)")
    g.add_argument("--no-behaviour", dest="behaviour", action="store_false",
                   help="skip judging the circuit on what the model says (says:EMOTION)")
    g.add_argument("--influence-prompts", type=int, default=8,
                   help="prompts for Wang et al.'s sublayer influence; 0 skips (default: %(default)s)")
    g.add_argument("--test-fraction", type=float, default=0.5,
                   help="share of scenario groups held out (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="split, pairs and samples (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="rows per backward (default: %(default)s)")
    p.add_argument("--out", default=None, help="results folder (default: runs/<model>/circuits-<metric>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no loading bars")
    report_kinds()
    return {"circuits": cmd_circuits}


def check_args(args, dataset=None) -> None:
    """Every check that needs no model, run before the model loads (``UsageError`` etc.)."""
    from circuits.components import parse_types
    from circuits.metrics import MetricError, parse_metric_spec

    for name in ("prompts", "validate_prompts", "circuit_prompts", "batch_size", "ig_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("random_circuits", "search_rounds", "search_halvings", "search_splits"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if args.edges < 0:
        raise UsageError("--edges must be >= 0")
    for name in ("max_error", "max_fraction", "test_fraction"):
        v = getattr(args, name)
        if not 0 < v < (1 if name == "test_fraction" else float("inf")):
            raise UsageError(f"--{name.replace('_', '-')} must be > 0"
                             + (" and < 1" if name == "test_fraction" else "") + f", not {v}")
    kind, labels, layer = parse_metric_spec(args.metric)
    if args.edges and kind != "direction":
        raise UsageError("--edges needs a direction metric (it reads one residual site)")
    parse_types(args.components.split(","))
    if args.circuit:
        parse_types(args.circuit_types.split(","))
    if layer is not None:
        from probe.models import known_n_layers

        n = known_n_layers(args.model, allow_download=args.allow_download)
        if n is not None and not 0 <= layer < n:
            raise MetricError(f"layer {layer} in {args.metric!r} is out of range: the model has "
                              f"{n} layers (0-{n - 1})")
    if dataset is None:
        return
    target = args.target or dataset.default_target
    classes = [str(c) for c in dataset.classes(target)]
    if kind in ("direction", "says") and labels != ["all"]:
        allowed = [c for c in classes if c != "neutral"] if kind == "direction" else classes
        bad = [a for a in labels if a not in allowed]
        if bad:
            raise MetricError(f"no direction for {bad[0]!r}: {target} has directions for "
                              f"{sorted(allowed)} (the neutral class has none)"
                              if kind == "direction" else
                              f"says:{bad[0]}: {target} has no class {bad[0]!r} (classes {classes})")
    if kind in ("logit-diff", "logprob") and args.label not in classes:
        raise MetricError(f"{kind} metrics need --label: whose prompts to explain (one of {classes})")


def cmd_circuits(args) -> int:
    from circuits.pipeline import CircuitsConfig, run_circuits
    from probe.cli_args import load_data, load_model

    check_args(args)
    cfg = CircuitsConfig(
        metric=args.metric, components=tuple(args.components.split(",")),
        estimator=args.estimator, baseline=args.baseline, align=args.align, label=args.label,
        target=args.target, prompts=args.prompts, validate=args.validate,
        validate_prompts=args.validate_prompts, circuit=args.circuit,
        circuit_types=tuple(args.circuit_types.split(",")), circuit_prompts=args.circuit_prompts,
        circuit_estimator=args.circuit_estimator, max_error=args.max_error,
        max_fraction=args.max_fraction, random_circuits=args.random_circuits,
        ablations=args.ablations, behaviour=args.behaviour,
        influence_prompts=args.influence_prompts, test_fraction=args.test_fraction,
        seed=args.seed, batch_size=args.batch_size, ig_steps=args.ig_steps, edges=args.edges,
        edge_estimator=args.edge_estimator, exact_nodes=args.exact_nodes,
        search_rounds=args.search_rounds, search_halvings=args.search_halvings,
        search_splits=args.search_splits, search_stable=args.search_stable)
    dataset = load_data(args)
    check_args(args, dataset)
    lm = load_model(args)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", args.metric).strip("-")
    out = run_folder(args.out or None, lm.spec.alias, f"circuits-{slug}")
    existed = out.exists()
    try:
        run_circuits(lm, dataset, cfg, out)
    except BaseException:
        if not existed:
            _remove_if_empty(out)
        raise
    return 0


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but empty folders (a run that wrote nothing)."""
    if not folder.is_dir():
        return
    dirs = sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    if any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        return
    for d in dirs:
        d.rmdir()
    folder.rmdir()


def report_kinds() -> None:
    """Tell ``probe report`` about ``circuits`` folders (entry point ``emoprobe.report_kinds``)."""
    register_run_kind("circuits", captions=REPORT_CAPTIONS, detect=lambda names: any(
        n.startswith("circuit_") and n.endswith(".json") for n in names))
