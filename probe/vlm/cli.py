"""``probe conflict``: the image/text modality-conflict experiment from the command line."""

from __future__ import annotations

import argparse

from probe.io import run_folder
from probe.report_kinds import register_run_kind

EPILOG = """examples:
  probe conflict --model llava-1.5-7b --device cuda              # drawn faces and scenes
  probe conflict --model qwen2.5-vl-7b-instruct --images my_images/   # positive/ and negative/
  probe conflict --model /path/to/checkpoint --scenarios 8 --layers 0,4,8,12

Nothing about real models is claimed by this toolkit's tests: they run the experiment on tiny
random models. On a real model read items.csv before the summary.
"""


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "conflict", help="image vs text: which modality a vision-language model's emotion follows",
        description="Build an image/text conflict set (emotion-scenarios texts with faces or "
                    "scenes of the opposite valence, plus congruent controls), then measure which "
                    "modality the model's answer follows and how much of its valence read-out "
                    "comes from image vs text tokens at every layer (attribution patching, "
                    "checked by mean-ablating each modality's tokens).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.set_defaults(model="llava-1.5-7b")
    g = p.add_argument_group("conflict set")
    g.add_argument("--scenarios", type=int, default=16,
                   help="scenario groups; each gives 2 congruent and 2 conflict items "
                        "(default: %(default)s)")
    g.add_argument("--images", default=None,
                   help="folder with positive/ and negative/ images to use instead of drawn ones")
    g.add_argument("--set", dest="set_file", default=None,
                   help="an existing conflict.jsonl (skips building one)")
    g.add_argument("--image-size", type=int, default=224,
                   help="drawn image size (default: %(default)s)")
    g.add_argument("--question", default=None,
                   help="appended to every text (default: a one-word emotion question)")
    g = p.add_argument_group("measurement")
    g.add_argument("--layers", default=None,
                   help="comma-separated layers to attribute (default: every layer)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="items per forward (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="which scenarios are drawn (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="results folder (default: runs/<model>/conflict-<time>)")
    p.add_argument("--quiet", action="store_true", help="no loading bars")


def register(sub) -> dict:
    """Add ``probe conflict`` to ``probe``'s subparsers; returns ``{"conflict": handler}``."""
    from probe.cli_args import load_model, model_args

    add_parser(sub, model_args)

    def handler(args) -> int:
        return run(args, load_model=load_model)

    report_kinds()
    return {"conflict": handler}


def run(args, *, load_model) -> int:
    from probe.data import load_dataset
    from probe.vlm.conflict import QUESTION, ConflictConfig, ConflictError, run_conflict
    from probe.vlm.report import format_summary

    if args.scenarios < 1 or args.batch_size < 1:
        raise ConflictError("--scenarios and --batch-size must be at least 1")
    layers = None
    if args.layers:
        try:
            layers = tuple(int(x) for x in args.layers.split(","))
        except ValueError:
            raise ConflictError(f"--layers takes comma-separated integers, not "
                                f"{args.layers!r}") from None
    config = ConflictConfig(scenarios=args.scenarios, images=args.images,
                            image_size=args.image_size, question=args.question or QUESTION,
                            layers=layers, check_layer=min(layers) if layers else 0,
                            batch_size=args.batch_size, seed=args.seed,
                            system_prompt=args.system_prompt)
    lm = load_model(args)
    if layers and max(layers) >= lm.n_layers:
        raise ConflictError(f"--layers {max(layers)} is out of range: the model has "
                            f"{lm.n_layers} layers (0-{lm.n_layers - 1})")
    out = run_folder(args.out, lm.spec.alias, "conflict")
    summary = run_conflict(lm, out, scenarios=load_dataset("emotion-scenarios"), config=config,
                           set_file=args.set_file)
    print(format_summary(summary, lm.spec.alias))
    print(f"results: {out} (items.csv, layers.csv, summary.json, run.json, conflict.png/svg)")
    return 0


def report_kinds() -> None:
    """Tell ``probe report`` about ``conflict`` folders (entry point ``emoprobe.report_kinds``)."""
    register_run_kind("conflict", captions=[(r"conflict", "Image vs text conflict: attribution "
                      "share by layer, attribution vs ablation, and which modality the answer "
                      "follows.")])
