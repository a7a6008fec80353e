"""``probe`` subcommands contributed by :mod:`steering` (entry-point group ``emoprobe.commands``):

``probe directions``  emotion directions from a store (or computed on the fly), saved as
                      safetensors + JSON with a cosine figure and a held-out separation check;
``probe steer``       steered and unsteered replies side by side (``--json``: on stdout,
                      ``--out FILE``: written to a file);
``probe steer-eval``  the evaluation protocol: grid on the tune prompts, selection under fluency
                      and capability constraints, held-out scores with baselines (docs/steering.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from probe.io import command_line
from probe.report_kinds import register_run_kind

EPILOG_DIRECTIONS = """examples:
  probe directions --out runs/directions                      # SmolLM2, emotion-scenarios, all layers
  probe directions --store cache/smollm2-135m/emotion-scenarios-XXXX.zarr --method mean-diff \\
                   --layers 10-19 --out runs/md
  probe directions --method probe --run runs/smollm2-135m/emotion-scenarios-emotion-XXXX --out runs/pd
  probe directions --method prompted --layers 10-19 --out runs/prompted   # the model's own replies
"""
EPILOG_STEER = """examples:
  probe steer --emotion fear "How was your day?"                  # shipped operating point
  probe steer --emotion happiness --strength 2 --layers 10-19 "Tell me about your day."
  probe steer --emotion anger --vectors runs/directions --strength 2 --out out.json "Hi" "Hello"
  probe steer --emotion fear --json "How was your day?" > replies.json     # JSON on stdout
"""


#: The figures of ``probe directions`` and ``probe steer-eval`` (steering/figures.py), as
#: ``probe report`` captions them.
REPORT_CAPTIONS = {"directions": (
    (r"cosine", "Cosine between the emotion directions: at a few layers (top) and each emotion "
                "across layers (bottom)."),
    (r"heldout_auroc", "Held-out AUROC of each emotion's direction against layer (directions "
                       "computed without the scored rows' scenario)."),
), "steer-eval": (
    (r"dose_response", "Dose-response per emotion: each judge's gated expression and the "
                       "perplexity ratio (log) against steering strength, for the selected "
                       "configuration on the tune prompts."),
    (r"pareto", "Selection score vs perplexity ratio of every ladder point per emotion; "
                "capability accuracy as colour where measured; the frontier and the chosen "
                "point marked."),
), "steer": ()}


def _is_directions(names: set) -> bool:
    """A folder of saved directions: the cosine figure, or vectors without a results table."""
    vectors = any(n.endswith(".safetensors") for n in names) and "results.csv" not in names
    return "cosine.png" in names or vectors


def register(sub) -> dict:
    """Add steering's subcommands to the ``probe`` parser; returns ``{command: handler}``."""
    from probe.cli_args import model_args

    p = sub.add_parser("directions", help="emotion directions from a store, saved as vectors",
                       description="Compute one steering vector per emotion from pooled "
                                   "activations, check on held-out scenarios that each "
                                   "separates its emotion, and save vectors and figures.",
                       epilog=EPILOG_DIRECTIONS, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    _direction_args(p)
    p.add_argument("--folds", type=int, default=5,
                   help="group folds of the held-out AUROC check (0: skip it; default: %(default)s)")
    p.add_argument("--gguf", action="store_true",
                   help="also export each vector as a llama.cpp control vector (<emotion>.gguf)")
    p.add_argument("--out", required=True, help="output folder (must not exist yet)")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("steer", help="generate with and without an emotion direction",
                       description="Generate replies to PROMPTs steered towards an emotion and "
                                   "unsteered, in one batch, and print them side by side.",
                       epilog=EPILOG_STEER, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="user messages")
    p.add_argument("--emotion", required=True, help="e.g. happiness, sadness, anger, fear, ...")
    p.add_argument("--strength", type=float, default=None,
                   help="scale, in units of the site's typical RMS (default: the shipped "
                        "operating point for this model and emotion)")
    _direction_args(p, steer=True)
    p.add_argument("--vectors", default=None, help="folder written by `probe directions`")
    p.add_argument("--vector", default=None, help="one saved vector (.safetensors)")
    p.add_argument("--match", default="exact", choices=["exact", "architecture", "none"],
                   help="how closely a saved vector's model must match (default: %(default)s)")
    p.add_argument("--mode", default=None, choices=["add", "ablate", "clamp", "scale"])
    p.add_argument("--positions", default=None,
                   help="all, prompt, generated, last-prompt+generated (default), last-prompt")
    p.add_argument("--unit", dest="unit", default=None, choices=["rms", "absolute", "token-rms"],
                   help="unit of --strength (default: rms)")
    p.add_argument("--with-prompt", action="store_true",
                   help="the operating point's prompt + steering mode: the designed emotion "
                        "prompt plus steering at the strength selected with it (compared with "
                        "the prompt alone)")
    p.add_argument("--max-new-tokens", type=int, default=60,
                   help="tokens per reply (default: %(default)s); a reply cut there ends with "
                        "'[... max_new_tokens reached]'")
    p.add_argument("--json", action="store_true",
                   help="print prompts, settings and both replies as JSON on stdout (instead of "
                        "the side-by-side text)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write that JSON record to FILE")
    p.add_argument("--quiet", action="store_true", help="no loading or progress output")
    _steer_eval_parser(sub)
    handlers = {"directions": cmd_directions, "steer": cmd_steer, "steer-eval": cmd_steer_eval}
    from steering.flips_cli import add_parser as add_flips
    from steering.geometry.cli import add_parser as add_geometry

    for kind, captions in REPORT_CAPTIONS.items():
        register_run_kind(kind, captions=captions,
                          detect=_is_directions if kind == "directions" else None)
    return {**handlers, **add_flips(sub), **add_geometry(sub)}


def _direction_args(p, *, steer: bool = False) -> None:
    from steering.methods import METHODS

    g = p.add_argument_group("directions")
    g.add_argument("--store", default=None,
                   help="activation store (default: cache emotion-scenarios for the model)")
    g.add_argument("--dataset", default="emotion-scenarios",
                   help="dataset to cache when no --store is given (default: %(default)s)")
    g.add_argument("--method", default=None, choices=METHODS + ("expression",),
                   help="default: context-agnostic" + (" (or the operating point's)" if steer else ""))
    g.add_argument("--site", default=None, help="site kind (default: resid_post)")
    g.add_argument("--layers", default=None,
                   help="e.g. 10-19 or 8,12,16 (default: " + ("the operating point's" if steer
                                                             else "every cached layer") + ")")
    g.add_argument("--pooling", default="last", help="store pooling to read (default: %(default)s)")
    g.add_argument("--run", default=None, help="sweep run folder (for --method probe)")
    if not steer:
        g.add_argument("--target", default=None, help="label coordinate (default: the store's)")
        g.add_argument("--neutral", default="neutral",
                       help="neutral label ('' if none; default: %(default)s)")
        g.add_argument("--emotions", default=None, help="comma-separated subset")


def parse_layers(text: str | None, n_layers: int | None = None) -> list[int] | None:
    """``"10-19"`` / ``"8,12,16"`` / ``"*"`` -> layers (checked against ``n_layers``)."""
    from probe.sites import SiteError, parse_sites
    from steering.vector import SteeringError

    if text is None:
        return None
    try:
        layers = [s.layer for s in parse_sites(f"blocks.{text.strip()}.hook_resid_post",
                                               n_layers=10**6 if text.strip() != "*" else n_layers)]
    except SiteError as exc:
        raise SteeringError(f"--layers {text!r}: {exc}") from None
    bad = [x for x in layers if n_layers is not None and x >= n_layers]
    if bad:
        raise SteeringError(f"--layers {text!r}: layer {bad[0]} is out of range: the model has "
                            f"{n_layers} layers (0-{n_layers - 1})")
    return layers


def _given(args, flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in getattr(args, "argv", []))


def _say(args, *msg) -> None:
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr)


def _store_for(args, lm, layers, site, pooling):
    """``--store`` or the model's default store of ``--dataset`` (cached if missing)."""
    if args.store:
        return args.store
    from probe.cache import CacheConfig, cache_activations, default_store_path
    from probe.capture import DEFAULT_POOLINGS
    from probe.data import load_dataset
    from steering.directions import site_kind

    ds = load_dataset(args.dataset)
    kind = site_kind(site)
    spec = ",".join(map(str, layers)) if layers else "*"
    config = CacheConfig(sites=kind if kind == "hook_embed" else f"blocks.{spec}.{kind}",
                         poolings=DEFAULT_POOLINGS if pooling in DEFAULT_POOLINGS else (pooling,))
    path = default_store_path(lm, ds, config)
    _say(args, f"store: {path} (caching what is missing of {args.dataset}, {kind})")
    return cache_activations(lm, ds, config=config, progress=not args.quiet)


# ------------------------------------------------------------------------------ directions
def cmd_directions(args) -> int:
    from probe.cli_args import load_model
    from probe.store_info import check_store_model
    from steering.directions import directions, heldout_auroc
    from steering.vector import SteeringError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SteeringError(f"{out} exists and is not empty; choose another --out or delete it")
    method = args.method or "context-agnostic"
    site = args.site or "resid_post"
    emotions = [e.strip() for e in args.emotions.split(",")] if args.emotions else None
    neutral = args.neutral or None
    lm = None
    if method == "expression":   # the model's own replies, read over their tokens
        from steering.expression import model_expression_directions
        from steering.judges import EMOTIONS

        t0 = time.time()
        lm = _load_model(args)
        layers = parse_layers(args.layers, lm.n_layers) or list(range(lm.n_layers))
        vecs = model_expression_directions(lm, layers=layers, emotions=emotions or EMOTIONS)
        _write_directions(args, out, vecs, None, method, time.time() - t0)
        return 0
    if method == "probe":
        if not args.run:
            raise SteeringError("--method probe needs --run (a `probe sweep` output folder)")
        source = args.run
        layers = parse_layers(args.layers)
    else:
        if args.store and method != "prompted" and _given(args, "--model"):
            check_store_model(args.store, args.model)  # else --model would be ignored silently
        lm = load_model(args) if (method == "prompted" or not args.store) else None
        layers = parse_layers(args.layers, lm.n_layers if lm else None)
        source = lm if method == "prompted" else _store_for(args, lm, layers, site, args.pooling) \
            if not args.store else args.store
    kwargs = {"progress": not args.quiet} if method == "prompted" else {}
    t0 = time.time()
    vecs = directions(source, method=method, site=site, layers=layers, pooling=args.pooling,
                      emotions=emotions, **({} if method in ("probe", "prompted") else
                                            {"target": args.target, "neutral": neutral}), **kwargs)
    auroc = None
    if args.folds and method not in ("probe", "prompted"):
        _say(args, f"held-out check: {args.folds} group folds")
        auroc = heldout_auroc(source, method=method, site=site, layers=layers, pooling=args.pooling,
                              target=args.target, neutral=neutral, emotions=emotions, folds=args.folds)
    _write_directions(args, out, vecs, auroc, method, time.time() - t0)
    return 0


def _write_directions(args, out: Path, vecs, auroc, method: str, seconds: float) -> None:
    from steering.figures import auroc_figure, cosine_figure

    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        vecs.save(tmp)
        cosine_figure(vecs, tmp / "cosine")
        if auroc is not None:
            auroc.to_csv(tmp / "heldout_auroc.csv", index=False)
            auroc_figure(auroc, tmp / "heldout_auroc")
        if args.gguf:
            from steering.gguf_export import export_gguf

            for name, vec in vecs.items():
                export_gguf(vec.at([x for x in vec.layers if x >= 1]) if 0 in vec.layers else vec,
                            tmp / name)
        first = next(iter(vecs.values()))
        run = {"command": command_line(getattr(args, "argv", [])), "method": method,
               "emotions": list(vecs), "layers": first.layers, "site": first.sites[0].kind,
               "seconds": round(seconds, 2),
               "provenance": {k: v for k, v in first.meta.items() if k not in ("rms", "norms", "emotion")}}
        (tmp / "run.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _print_summary(vecs, auroc, out)


def _print_summary(vecs, auroc, out: Path) -> None:
    first = next(iter(vecs.values()))
    print(f"{first.meta.get('method')} directions at {first.sites[0].kind}, layers "
          f"{first.layers[0]}-{first.layers[-1]} ({first.meta.get('model')}, "
          f"{first.meta.get('dataset')}, pooling {first.meta.get('pooling')}):")
    head = f"{'emotion':12s} {'rows':>5s}  {'typical RMS':>17s}"
    if auroc is not None:
        head += f"  {'held-out AUROC: best (layer)':>29s}  {'mean':>5s}"
    print(head)
    rms = list(first.meta.get("rms", {}).values())
    for name, vec in vecs.items():
        line = (f"{name:12s} {str(vec.meta.get('n_rows_emotion', '-')):>5s}  "
                f"{min(rms):7.2f} - {max(rms):7.2f}" if rms else f"{name:12s}")
        if auroc is not None:
            part = auroc[auroc["emotion"] == name]
            best = part.loc[part["auroc"].idxmax()]
            line += f"  {best['auroc']:22.3f} (L{int(best['layer']):>2d})  {part['auroc'].mean():5.3f}"
        print(line)
    if auroc is not None:
        print("AUROC: projection on a direction computed without the row's scenario, emotion vs rest")
    print(f"wrote {len(vecs)} vectors (.safetensors + .json), cosine.png/svg"
          + (", heldout_auroc.csv/png/svg" if auroc is not None else "") + f" and run.json to {out}")


# ------------------------------------------------------------------------------ steer
def cmd_steer(args) -> int:
    from probe.cli_args import load_model
    from steering.inject import Setting, generate_settings
    from steering.operating_points import operating_point, prompt_mode
    from steering.steer_output import (
        check_out_path,
        check_strength,
        emit_record,
        mark,
        side_by_side,
        strength_warning,
    )
    from steering.vector import SteeringError

    if not args.prompts:
        raise SteeringError('give at least one prompt, e.g. probe steer --emotion fear "How was your day?"')
    check_strength(args.strength)
    check_out_path(args.out, args.prompts, args.json)
    if args.max_new_tokens < 1:
        raise SteeringError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    lm = load_model(args)
    point = None
    explicit = args.vector or args.vectors
    if args.strength is None or args.layers is None:
        try:
            point = operating_point(lm.spec.alias, args.emotion)
        except SteeringError:
            if args.strength is None or not explicit:
                raise
        if point is not None:
            _say(args, f"operating point: {point.describe()}")
    layers = parse_layers(args.layers, lm.n_layers) if args.layers else (
        list(point.layers) if point else None)
    unit = args.unit or (point.strength if point else "rms")
    warning = strength_warning(args.strength, unit, lm.spec.alias)
    if warning:  # before any directions are computed or cached
        print(f"warning: {warning}", file=sys.stderr)
    vec = _steer_vector(args, lm, point, layers)
    if layers is None and len(vec.layers) > 1:
        _say(args, f"steering every layer of the vector ({vec.layers[0]}-{vec.layers[-1]}); "
                   "--layers chooses fewer")
    setting = Setting(vector=vec, scale=args.strength if args.strength is not None else point.scale,
                      mode=args.mode or (point.mode if point else "add"),
                      positions=args.positions or (point.positions if point else "last-prompt+generated"),
                      strength=unit, label=args.emotion)
    gen_kwargs = dict(point.generate) if point else {"repetition_penalty": 1.05, "no_repeat_ngram_size": 3}
    prompts, system = args.prompts, args.system_prompt
    if getattr(args, "with_prompt", False):   # prompt + steering: the prompt alone is the baseline
        prompts, system, scale = prompt_mode(point, args.emotion, prompts)
        setting = dataclasses.replace(setting, scale=scale if args.strength is None else setting.scale)
        _say(args, f"prompt + steering: system prompt {system!r}, scale {setting.scale:g}")
    _say(args, f"generating {len(prompts)} x 2 replies of up to {args.max_new_tokens} tokens")
    (plain, steered), (cut_plain, cut_steered) = generate_settings(
        lm, prompts, [Setting(vector=None), setting], max_new_tokens=args.max_new_tokens,
        system_prompt=system, progress=not args.quiet, details=True, **gen_kwargs)
    desc = (f"{args.emotion} {setting.mode} x{setting.scale:g} {setting.strength.upper()} at "
            f"{vec.sites[0].kind} layers {vec.layers[0]}-{vec.layers[-1]} ({vec.meta.get('method')})")
    if not args.json:
        print(side_by_side(prompts, [mark(t, c) for t, c in zip(plain, cut_plain)],
                           [mark(t, c) for t, c in zip(steered, cut_steered)], desc))
    if args.json or args.out:
        record = _steer_record(args, lm, vec, setting, point, gen_kwargs, plain, steered)
        record.update(unsteered_hit_limit=cut_plain, steered_hit_limit=cut_steered)
        emit_record(record, args.out, args.json)
    return 0


def _steer_vector(args, lm, point, layers):
    from steering.directions import directions
    from steering.vector import SteeringError, SteeringVector, VectorSet

    from steering.operating_points import point_vector

    if args.vector:
        vec = SteeringVector.load(args.vector, lm, match=args.match)
    elif point is not None and point.vector and not args.method:   # a shipped trained vector
        vec = point_vector(point, lm)
    elif args.vectors:
        vec = VectorSet.load(args.vectors, lm, match=args.match)[args.emotion]
    else:
        method = args.method or (point.method if point else "context-agnostic")
        site = args.site or (point.site if point else "resid_post")
        pooling = point.pooling if point else args.pooling
        if method == "probe":
            if not args.run:
                raise SteeringError("--method probe needs --run (a `probe sweep` output folder)")
            source = args.run
        elif method in ("prompted", "expression"):
            source = lm
        else:
            source = _store_for(args, lm, layers, site, pooling)
        kw = {"pooling": pooling} if method not in ("prompted",) else {}
        if method == "expression":
            from steering.expression import model_expression_directions
            from steering.judges import EMOTIONS

            vecs = model_expression_directions(lm, layers=layers or list(range(lm.n_layers)),
                                               emotions=EMOTIONS)
        else:
            vecs = directions(source, method=method, site=site, layers=layers, **kw)
        vec = vecs[args.emotion]
    if layers is not None and set(vec.layers) != set(layers):
        vec = vec.at(layers)
    return vec


def _steer_record(args, lm, vec, setting, point, gen_kwargs, plain, steered) -> dict:
    from dataclasses import asdict

    return {
        "command": command_line(getattr(args, "argv", [])),
        "model": lm.provenance(),
        "emotion": args.emotion,
        "vector": {k: vec.meta.get(k) for k in ("method", "emotion", "site", "pooling", "store",
                                                 "dataset", "dataset_hash", "weight_fingerprint")}
        | {"layers": vec.layers, "sha256": vec.checksum()},
        "setting": {"scale": setting.scale, "mode": setting.mode, "strength": setting.strength,
                    "positions": str(setting.positions), "spread": setting.spread},
        "operating_point": asdict(point) if point else None,
        "generate": {"max_new_tokens": args.max_new_tokens, "do_sample": False, **gen_kwargs},
        "prompts": args.prompts, "unsteered": plain, "steered": steered,
    }


# ------------------------------------------------------------------------------ steer-eval
EPILOG_EVAL = """examples:
  probe steer-eval --quick --out runs/steer-eval-quick              # 2 emotions, tiny grid (~1 min)
  probe steer-eval --strong-judge ~/.cache/emoprobe/judges/strong_judge --out runs/steer-eval
  probe steer-eval --emotions fear,anger --bands 10-19,14-19 --strengths 10,20 --out runs/se2
Selection reads only the tune prompts; results.csv holds the held-out (test) scores.
"""


def _steer_eval_parser(sub) -> None:
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
                   help="record the selected points in steering/operating_points.json")
    p.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default: 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _csv(text, cast=str):
    return tuple(cast(x.strip()) for x in text.split(",") if x.strip()) if text else None


def eval_config(args):
    """The :class:`~steering.evaluate.EvalConfig` the ``steer-eval`` arguments ask for."""
    from dataclasses import replace

    from steering.evaluate import EvalConfig

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

    from steering.evaluate import load_judges

    strong = args.strong_judge
    if strong:
        base = _P(strong).expanduser()
        if not base.with_suffix(".json").is_file():
            from steering.judge_build import build_judge

            log(f"building the local strong judge at {base} (goemotions, dair, sev-replies)")
            build_judge(("goemotions", "dair", "sev-replies"), ("goemotions", "dair", "sev-replies"),
                        out=base)
        strong = str(base)
    return load_judges(strong=strong, lexicon=args.lexicon)


def cmd_steer_eval(args) -> int:
    from probe.cli_args import load_model
    from steering.directions import directions
    from steering.eval_report import print_summary, write_report
    from steering.evaluate import run_evaluation
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
            layers=tuple(pt.layers), scale=pt.scale, positions=pt.positions,
            generate=result.config.decoding.kwargs(), provisional=not sel.constraints_met,
            source=f"probe steer-eval run {run_id}: `{command}`. {sel.note}. Held-out gated "
                   f"expression: {held}."), weight_fingerprint=lm.fingerprint)
    print(f"recorded {len(result.selections)} operating points in {path}")
