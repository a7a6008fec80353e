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


def _layer_list(layers) -> str:
    """``"10-19"`` for a contiguous run, else ``"6,9,12,15"`` (a span would claim layers not steered)."""
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _is_directions(names: set) -> bool:
    """A folder of saved directions: the cosine figure, or vectors without a results table."""
    vectors = any(n.endswith(".safetensors") for n in names) and "results.csv" not in names
    return "cosine.png" in names or vectors


def register(sub) -> dict:
    """Add steering's subcommands to the ``probe`` parser; returns ``{command: handler}``."""
    from probe.cli_args import model_args
    from steering.eval.cli import add_parser as add_steer_eval
    from steering.eval.cli import cmd_steer_eval

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
                   help="the amount added (--mode add) or the projection set (clamp), in --unit "
                        "(default: the shipped operating point for this model and emotion)")
    p.add_argument("--factor", type=float, default=None,
                   help="with --mode scale: the multiplier of the projection (1 = no change)")
    _direction_args(p, steer=True)
    p.add_argument("--vectors", default=None, help="folder written by `probe directions`")
    p.add_argument("--vector", default=None, help="one saved vector (.safetensors)")
    p.add_argument("--match", default="exact", choices=["exact", "architecture", "none"],
                   help="how closely a saved vector's model must match (default: %(default)s)")
    p.add_argument("--mode", default=None, choices=["add", "ablate", "clamp", "scale"])
    p.add_argument("--positions", default=None,
                   help="all, prompt, generated, generated:K (from the K-th generated token on, so "
                        "the reply opens as the model would), opening:K (only the states that "
                        "predict the reply's first K tokens), last-prompt+generated (default), "
                        "last-prompt")
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
    add_steer_eval(sub)
    handlers = {"directions": cmd_directions, "steer": cmd_steer, "steer-eval": cmd_steer_eval}
    from steering.flips.cli import add_parser as add_flips
    from steering.geometry.cli import add_parser as add_geometry
    from steering.train.cli import add_parser as add_train

    report_kinds()
    return {**handlers, **add_train(sub), **add_flips(sub), **add_geometry(sub)}


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
        from steering.judges.emotion import EMOTIONS

        t0 = time.time()
        lm = load_model(args)
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
    from steering.operating_points import (
        fingerprint_warning,
        operating_point,
        point_vector,
        prompt_mode,
        prompt_vector,
    )
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
    check_strength(args.factor, "--factor")
    if args.positions is not None:   # checked before any model or store is touched
        Setting(positions=args.positions)
    if args.factor is not None and args.mode != "scale":
        raise SteeringError("--factor multiplies the projection with --mode scale; --mode "
                            f"{args.mode or 'add'} takes --strength (an amount added)")
    if args.mode == "scale" and args.strength is not None:
        raise SteeringError("--mode scale multiplies the projection by --factor; --strength is an "
                            "amount added (--mode add or clamp)")
    given = args.factor if args.mode == "scale" else args.strength
    check_out_path(args.out, args.prompts, args.json)
    if args.max_new_tokens < 1:
        raise SteeringError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    lm = load_model(args)
    point = None
    explicit = args.vector or args.vectors
    if given is None or args.layers is None:
        try:
            point = operating_point(lm.spec.alias, args.emotion)
        except SteeringError:
            if given is None or not explicit:
                raise
        if point is not None:
            _say(args, f"operating point ({point.origin}): {point.describe()}")
            mismatch = fingerprint_warning(point, lm.fingerprint)
            if mismatch:  # a default tuned on other weights: said, never used silently
                print(f"warning: {mismatch}", file=sys.stderr)
    # --with-prompt whose shipped mode names its own vector: that vector at its own layers
    own = (getattr(args, "with_prompt", False) and prompt_vector(point) is not None
           and not (explicit or args.method))
    # a single --vector file steers at its own layers unless --layers says otherwise
    layers = parse_layers(args.layers, lm.n_layers) if args.layers else (
        list(point.layers) if point and not own and not args.vector else None)
    unit = args.unit or (point.unit if point else "rms")
    warning = strength_warning(args.strength, unit, lm.spec.alias)
    if warning:  # before any directions are computed or cached
        print(f"warning: {warning}", file=sys.stderr)
    vec = point_vector(point, lm, with_prompt=True) if own else _steer_vector(args, lm, point, layers)
    if own and layers is not None and set(vec.layers) != set(layers):
        vec = vec.at(layers)
    if layers is None and len(vec.layers) > 1:
        _say(args, f"steering every layer of the vector ({vec.layers[0]}-{vec.layers[-1]}); "
                   "--layers chooses fewer")
    setting = _steer_setting(args, vec, point, unit)
    if own and args.positions is None and point.prompt.get("positions"):
        setting = dataclasses.replace(setting, positions=point.prompt["positions"])
    gen_kwargs = dict(point.generate) if point else {"repetition_penalty": 1.05, "no_repeat_ngram_size": 3}
    prompts, system = args.prompts, args.system_prompt
    if getattr(args, "with_prompt", False):   # prompt + steering: the prompt alone is the baseline
        prompts, system, strength = prompt_mode(point, args.emotion, prompts)
        setting = dataclasses.replace(setting, strength=strength if args.strength is None else setting.strength)
        _say(args, f"prompt + steering: system prompt {system!r}, strength {setting.strength:g}")
    _say(args, f"generating {len(prompts)} x 2 replies of up to {args.max_new_tokens} tokens")
    (plain, steered), (cut_plain, cut_steered) = generate_settings(
        lm, prompts, [Setting(vector=None), setting], max_new_tokens=args.max_new_tokens,
        system_prompt=system, progress=not args.quiet, details=True, **gen_kwargs)
    amount = (f"x{setting.factor:g}" if setting.mode == "scale" else f"x{setting.strength:g}"
              if hasattr(vec, "params") else f"x{setting.strength:g} {setting.unit.upper()}")
    how = f"low-rank edit (rank {vec.rank})" if hasattr(vec, "params") else setting.mode
    desc = (f"{args.emotion} {how} {amount} at "
            f"{vec.sites[0].kind} layers {_layer_list(vec.layers)} ({vec.meta.get('method')})"
            + ("" if setting.positions == "last-prompt+generated" else f", positions {setting.positions}"))
    if not args.json:
        print(side_by_side(prompts, [mark(t, c) for t, c in zip(plain, cut_plain)],
                           [mark(t, c) for t, c in zip(steered, cut_steered)], desc))
    if args.json or args.out:
        record = _steer_record(args, lm, vec, setting, point, gen_kwargs, plain, steered)
        record.update(unsteered_hit_limit=cut_plain, steered_hit_limit=cut_steered,
                      sent=prompts, system_prompt=system)   # what the model read (--with-prompt)
        emit_record(record, args.out, args.json)
    return 0


def _steer_vector(args, lm, point, layers):
    from steering.directions import directions
    from steering.lowrank import load_steering
    from steering.operating_points import point_vector
    from steering.vector import SteeringError, VectorSet

    if args.vector:   # a steering vector or a low-rank (LoReFT) intervention
        vec = load_steering(args.vector, lm, match=args.match)
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
            from steering.judges.emotion import EMOTIONS

            vecs = model_expression_directions(lm, layers=layers or list(range(lm.n_layers)),
                                               emotions=EMOTIONS)
        else:
            vecs = directions(source, method=method, site=site, layers=layers, **kw)
        vec = vecs[args.emotion]
    if layers is not None and set(vec.layers) != set(layers):
        vec = vec.at(layers)
    return vec


def _steer_setting(args, vec, point, unit: str):
    """The :class:`Setting` of ``probe steer``: each flag's value under its own name, the
    operating point filling what the flags leave out."""
    from steering.inject import Setting

    mode = args.mode or (point.mode if point else "add")
    if mode == "scale":
        factor = args.factor if args.factor is not None else (point.factor if point else None)
        return Setting(vector=vec, factor=factor, mode=mode, unit=unit, label=args.emotion,
                       positions=args.positions or (point.positions if point else "last-prompt+generated"))
    return Setting(vector=vec, strength=args.strength if args.strength is not None else point.strength,
                   mode=mode, unit=unit, label=args.emotion,
                   positions=args.positions or (point.positions if point else "last-prompt+generated"))


def _steer_record(args, lm, vec, setting, point, gen_kwargs, plain, steered) -> dict:
    from dataclasses import asdict

    return {
        "command": command_line(getattr(args, "argv", [])),
        "model": lm.provenance(),
        "emotion": args.emotion,
        "vector": {k: vec.meta.get(k) for k in ("method", "emotion", "site", "pooling", "store",
                                                 "dataset", "dataset_hash", "weight_fingerprint")}
        | {"layers": vec.layers, "sha256": vec.checksum()},
        "setting": {"strength": setting.strength, "unit": setting.unit, "factor": setting.factor,
                    "mode": setting.mode, "positions": str(setting.positions),
                    "spread": setting.spread},
        "operating_point": asdict(point) if point else None,
        "generate": {"max_new_tokens": args.max_new_tokens, "do_sample": False, **gen_kwargs},
        "prompts": args.prompts, "unsteered": plain, "steered": steered,
    }


def report_kinds() -> None:
    """Tell ``probe report`` about every steering command's folders (entry point
    ``emoprobe.report_kinds``): directions, steer, steer-eval, steer-flips, geometry."""
    from steering.flips.cli import report_kinds as flips_kinds
    from steering.geometry.cli import report_kinds as geometry_kinds

    for kind, captions in REPORT_CAPTIONS.items():
        register_run_kind(kind, captions=captions,
                          detect=_is_directions if kind == "directions" else None)
    flips_kinds()
    geometry_kinds()
