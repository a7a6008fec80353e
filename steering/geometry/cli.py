"""``probe geometry``: the emotion-geometry protocol in one command (registered by steering.cli)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path

from probe.report_kinds import register_run_kind

EPILOG = """examples:
  probe geometry                    # SmolLM2, default sources, ~10 min on a busy 2-core machine
  probe geometry --sources goemotions,stories --per-emotion 16 --bootstrap 200 --out runs/geo-quick
  probe geometry --model llama-3.1-8b-instruct --device cuda --per-emotion 64 \\
                 --stories-per-emotion 6
  probe geometry --compare-model llama-3.2-1b-instruct # RDM agreement with a second model
  probe geometry --compare-vectors runs/expression     # vs saved (e.g. expression) directions
  probe steer --vector runs/geo/vectors/goemotions/joy --layers 10-19 --strength 2 "Hi"
"""


def add_parser(sub) -> dict:
    """Add ``probe geometry`` to the ``probe`` parser; returns ``{"geometry": handler}``."""
    d = _defaults()
    p = sub.add_parser(
        "geometry",
        help="emotion geometry: PCs of emotion vectors vs human ratings",
        description="Emotion vectors per layer from several text sources (recipe: "
        "mean-pool from a token offset, subtract the grand mean, project "
        "out neutral-text PCs), their PCA against human valence/arousal/"
        "dominance ratings with permutation nulls and bootstrap CIs, and "
        "RDM agreement between sources.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="smollm2-135m",
        help="alias, Hugging Face id or folder (default: %(default)s)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, ..."
    )
    g.add_argument(
        "--allow-download", action="store_true", help="let Hugging Face download weights"
    )
    g.add_argument(
        "--compare-model", default=None, help="a second model: RDM agreement by relative depth"
    )
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="pool texts as chat user turns (default: raw text, as the recipe reads it)",
    )
    g = p.add_argument_group("texts")
    g.add_argument(
        "--sources",
        default=",".join(d.sources),
        help="comma-separated: goemotions, dair-emotion, meld, emotion-scenarios, stories, "
        "name:/path or a CSV (first = primary; default: %(default)s)",
    )
    g.add_argument("--emotions", default=None, help="comma-separated subset of emotions")
    g.add_argument(
        "--per-emotion",
        type=int,
        default=d.per_emotion,
        help="texts per emotion and corpus (default: %(default)s)",
    )
    g.add_argument(
        "--min-words", type=int, default=d.min_words, help="default: %(default)s"
    )
    g.add_argument(
        "--neutral",
        default=d.neutral,
        help="source of the neutral texts (its 'neutral' label; default: %(default)s)",
    )
    g.add_argument(
        "--n-neutral", type=int, default=d.n_neutral, help="default: %(default)s"
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="folder of the external datasets (default: $EMOPROBE_SHARED_DATA, $EMOPROBE_DATA)",
    )
    g.add_argument(
        "--stories-per-emotion",
        type=int,
        default=d.stories_per_emotion,
        help="model-written stories per emotion (default: %(default)s)",
    )
    g.add_argument(
        "--story-tokens", type=int, default=d.story_tokens, help="default: %(default)s"
    )
    g.add_argument("--stories", default=None, help="reuse a stories.jsonl of an earlier run")
    g = p.add_argument_group("recipe (published defaults)")
    g.add_argument(
        "--token-offset",
        type=int,
        default=d.token_offset,
        help="first pooled token of corpus texts (default: %(default)s)",
    )
    g.add_argument(
        "--story-offset", type=int, default=d.story_offset,
        help="first pooled token of stories (default: %(default)s)"
    )
    g.add_argument(
        "--no-grand-mean",
        dest="grand_mean",
        action="store_false",
        help="keep the grand mean over emotions",
    )
    g.add_argument(
        "--neutral-share",
        type=float,
        default=d.neutral_share,
        help="variance share of the neutral PCs projected out (0: none; default: %(default)s)",
    )
    g.add_argument("--layers", default=None, help="e.g. 10-19 (default: every layer)")
    g = p.add_argument_group("statistics")
    g.add_argument("--lexicon", default=None, help="NRC VAD lexicon file or folder")
    g.add_argument("--ratings", default=None, help="CSV of your own: word/emotion + rating columns")
    g.add_argument(
        "--bootstrap", type=int, default=d.n_boot, help="resamples (default: %(default)s)"
    )
    g.add_argument(
        "--permutations", type=int, default=d.n_perm, help="default: %(default)s"
    )
    g.add_argument(
        "--pcs", type=int, default=d.n_pcs, help="PCs tested (default: %(default)s)"
    )
    g.add_argument(
        "--compare-vectors",
        default=None,
        help="folder of saved steering vectors (e.g. expression directions) to compare",
    )
    g.add_argument(
        "--min-shared",
        type=int,
        default=d.min_shared,
        help="fewest shared emotions for an RDM agreement (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--padding-side", default="right", choices=["left", "right"])
    p.add_argument("--out", default=None, help="run folder (default: runs/<model>/geometry-<time>)")
    p.add_argument("--quiet", action="store_true")
    report_kinds()
    return {"geometry": cmd_geometry}


def _defaults():
    """The defaults as attributes, read without loading torch (``--help`` stays fast)."""
    from types import SimpleNamespace

    from steering.geometry import defaults

    return SimpleNamespace(**{k.lower(): v for k, v in vars(defaults).items() if k.isupper()})



def config_from_args(args):
    from steering.geometry.features import GeometryError
    from steering.geometry.recipe import Recipe
    from steering.geometry.run import GeometryConfig

    def csv(text):
        return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None

    layers = None
    if args.layers:
        try:
            layers = tuple(
                x
                for part in args.layers.split(",")
                for x in (
                    range(int(part.split("-")[0]), int(part.split("-")[1]) + 1)
                    if "-" in part
                    else [int(part)]
                )
            )
        except ValueError:
            raise GeometryError(
                f"--layers {args.layers!r}: expected e.g. 10-19 or 8,12,16"
            ) from None
    recipe = Recipe(
        token_offset=args.token_offset,
        story_offset=args.story_offset,
        subtract_grand_mean=args.grand_mean,
        neutral_share=args.neutral_share,
    )
    return GeometryConfig(
        sources=csv(args.sources) or (),
        emotions=csv(args.emotions),
        per_emotion=args.per_emotion,
        min_words=args.min_words,
        neutral=args.neutral,
        n_neutral=args.n_neutral,
        recipe=recipe,
        stories_per_emotion=args.stories_per_emotion,
        story_tokens=args.story_tokens,
        stories_file=args.stories,
        n_boot=args.bootstrap,
        n_perm=args.permutations,
        n_pcs=args.pcs,
        layers=layers,
        batch_size=args.batch_size,
        padding_side=args.padding_side,
        chat_template=args.chat_template,
        lexicon=args.lexicon,
        ratings=args.ratings,
        data_root=args.data_root,
        compare_vectors=args.compare_vectors,
        min_shared=args.min_shared,
        seed=args.seed,
    )


def cmd_geometry(args) -> int:
    from probe.io import run_folder
    from probe.models import load_model
    from steering.geometry.features import GeometryError
    from steering.geometry.run import prepare, run_geometry
    from steering.geometry.summary import print_summary

    config = config_from_args(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise GeometryError(f"{out} exists and is not empty; choose another --out or delete it")
    if config.compare_vectors and not Path(config.compare_vectors).is_dir():
        raise GeometryError(f"--compare-vectors {config.compare_vectors}: no such folder")
    log = (
        (lambda m: None)
        if args.quiet
        else (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    )
    prepared = prepare(config)  # texts and ratings: bad input fails before any model loads
    lm = load_model(
        args.model, device=args.device, dtype=args.dtype, allow_download=args.allow_download
    )
    bad = [x for x in config.layers or () if x >= lm.n_layers]
    if bad:
        raise GeometryError(f"--layers: layer {bad[0]} is out of range ({lm.n_layers} layers)")
    lm2 = (
        load_model(
            args.compare_model,
            device=args.device,
            dtype=args.dtype,
            allow_download=args.allow_download,
        )
        if args.compare_model
        else None
    )
    out = run_folder(out, lm.spec.alias, "geometry")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        run = run_geometry(
            lm, config, prepared, tmp, lm2=lm2, log=log, argv=getattr(args, "argv", [])
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_summary(out, run)
    return 0


def report_kinds() -> None:
    """Tell ``probe report`` about ``geometry`` folders."""
    register_run_kind("geometry", headline_metric="abs_r")
