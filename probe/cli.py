"""The ``probe`` command line: cache activations, describe stores, run probe sweeps.

Every command group registers the same way: a function ``register(sub)`` receives the
subparsers object, adds its parsers (with the argument groups of :mod:`probe.cli_args`) and
returns ``{command: handler}``; a handler takes the parsed arguments and returns an exit code.
Other packages (``probe steer``, ``probe circuits``, ...) offer their ``register`` under the
entry-point group ``emoprobe.commands`` (see ``pyproject.toml``), so ``probe`` never imports
them. ``probe``'s own plugins (``behave``, ``conflict``, ``report``) live inside ``probe`` and
are named below, so they work from a source checkout without reinstalling. Registering imports
nothing heavy: ``probe --help`` parses before torch loads. A package's user errors are
reported like ours when they derive from :class:`probe.errors.EmoprobeError` (the older way,
listing them in the handler's ``user_errors`` attribute, still works).

Every user-facing error (unknown model or dataset, missing weights, bad site, incomplete store,
degenerate data) prints one clear ``error:`` message and exits with status 2, without a stack
trace. Sites, layers and poolings are checked against the model's config before its weights
load. Output cut short by a closed pipe (``probe info STORE | head``) ends quietly with status
141, as other Unix tools do. ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from probe.behaviour.cli import register as register_behave
from probe.cli_args import (cache_args, cache_config, data_args, load_data, load_model,
                            model_args, positive_int, storage_args)
from probe.errors import EmoprobeError
from probe.report_cli import register as register_report
from probe.vlm.cli import register as register_conflict

EPILOG_CACHE = """examples:
  probe cache --limit 64                      # embedded SmolLM2, our stimulus set
  probe cache --model llama-3-8b --device cuda --dtype bfloat16 --dataset ../shared/data/meld
  probe cache --sites 'blocks.*.hook_resid_post blocks.10-20.attn.hook_z' --pooling last,token
"""
EPILOG_SWEEP = """examples:
  probe sweep                                        # SmolLM2 x emotion-scenarios (see README for times)
  probe sweep --dataset ../shared/data/emobank --target A --limit 1000     # regression (arousal)
  probe sweep --dataset ../shared/data/goemotions --limit 2000             # Ekman classes
  probe sweep --model qwen3-8b --device cuda --sites 'resid_post attn_out mlp_out'
  probe sweep --dataset sev:train/sev.jsonl --eval-dataset sev:heldout/sev.jsonl   # transfer
  probe sweep --dataset my_stimuli.csv --task classification --split-eval train:test
"""

# The argument groups and loaders live in probe.cli_args (public, for plugins); the old private
# names stay for callers that have not moved yet.
_model_args, _data_args, _cache_args, _storage_args = model_args, data_args, cache_args, storage_args
_load_data, _load_model, _cache_config = load_data, load_model, cache_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probe",
        description="Emotion interpretability toolkit: cache activations of emotion stimuli into "
                    "resumable Zarr stores and fit linear probes at every layer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("cache", help="cache pooled activations into a Zarr store",
                       description="Run the model over a dataset and cache pooled activations "
                                   "at the chosen sites. Resumes an interrupted store.",
                       epilog=EPILOG_CACHE, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    data_args(p)
    cache_args(p)
    p.add_argument("--out", default=None, help="store path or object-store URL such as "
                   "s3://bucket/x.zarr (default: <cache-dir>/<model>/<dataset>-<key>.zarr)")
    storage_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("several workers (docs/scale.md)")
    g.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine writing one store (one GPU each when "
                        "several are visible); needs --out")
    g.add_argument("--distributed", action="store_true",
                   help="run as one worker of a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK) or a "
                        "SLURM job array (SLURM_ARRAY_TASK_ID/COUNT); every worker gets the same "
                        "command and --out on a shared filesystem")
    g.add_argument("--finalize", action="store_true",
                   help="fold the workers' finished blocks into the store at --out and report "
                        "whether it is complete (the last worker does this itself)")

    p = sub.add_parser("info", help="describe an activation store")
    p.add_argument("store", help="path of a .zarr store, or its URL (s3://bucket/x.zarr)")
    storage_args(p)

    p = sub.add_parser("sweep", help="cache what is missing, fit a probe at every layer, plot",
                       description="Cache activations (resuming if cached), fit a linear probe "
                                   "at every layer and site with group-aware cross-validation, "
                                   "bootstrap CIs, a control task and a lexical baseline; write "
                                   "a results table and layerwise figures.",
                       epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    data_args(p)
    cache_args(p)
    g = p.add_argument_group("probing")
    g.add_argument("--target", default=None,
                   help="target column (default: the dataset's; e.g. valence, V, A, D)")
    g.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds, group-aware (default: %(default)s)")
    g.add_argument("--fold-fallback", default="error", choices=["error", "reduce"],
                   help="when the groups (or a class's groups) are fewer than --folds: stop "
                        "with an error (default) or use fewer folds and report it")
    g.add_argument("--probe", default=None, metavar="KIND",
                   help="probe kind (probe.probe_kinds): logistic (categorical targets, the "
                        "default) or ridge (continuous, the default); a plugin may register more")
    g.add_argument("--C", type=float, default=None, help="inverse L2 strength of logistic probes on standardised features (default: 0.05)")
    g.add_argument("--alpha", type=float, default=None, help="L2 strength of ridge probes (default: 10)")
    g.add_argument("--bootstrap", type=int, default=1000, help="cluster-bootstrap resamples for 95%% CIs (default: %(default)s)")
    g.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control task (selectivity)")
    g.add_argument("--no-lexical", dest="lexical", action="store_false",
                   help="skip the bag-of-words baseline")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of folds, bootstrap and control labels (default: %(default)s)")
    g.add_argument("--task", default=None, choices=["classification", "regression"],
                   help="default: inferred when unambiguous (text labels: classification; "
                        "non-integer numbers: regression); whole numbers (class ids 0-6, a 1-5 "
                        "rating) need it")
    g.add_argument("--max-iter", type=int, default=None,
                   help="iteration cap of the logistic probe's solver (default: 300); raise it "
                        "when a convergence warning names sites")
    g.add_argument("--no-save-probes", dest="save_probes", action="store_false",
                   help="do not save the probes fitted on all rows (default: saved under "
                        "<out>/probes/, weights and directions in raw activation space)")
    g = p.add_argument_group("held-out evaluation")
    g.add_argument("--eval-dataset", default=None,
                   help="also fit each probe on all of --dataset and score it on this dataset "
                        "(same forms as --dataset; cached with the same model and options): "
                        "transfer next to in-distribution CV")
    g.add_argument("--eval-split", default=None,
                   help="use only this split of --eval-dataset (default: all rows)")
    g.add_argument("--eval-limit", type=int, default=None,
                   help="a deterministic random subset of N rows of --eval-dataset")
    g.add_argument("--eval-store", default=None,
                   help="like --eval-dataset, from an existing store of the same model")
    g.add_argument("--split-eval", default=None, metavar="TRAIN[:TEST]",
                   help="no CV: fit on the rows whose split column is TRAIN and score the others "
                        "(or those of TEST), e.g. train:test or train:dev,test")
    g.add_argument("--memory", default=None,
                   help="memory budget for probing, e.g. 8GiB: reads the store out of core "
                        "(Dask) in jobs that fit, for stores larger than RAM")
    p.add_argument("--store", default=None, help="use this store path (or object-store URL, "
                   "e.g. s3://bucket/x.zarr) instead of the default")
    storage_args(p)
    p.add_argument("--out", default=None,
                   help="results folder (default: runs/<model>/<dataset>-<target>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    handlers = {**COMMANDS, **register_conflict(sub)}
    sub.add_parser("models", help="list registered model aliases")
    sub.add_parser("datasets", help="list registered datasets")
    for register in (register_behave, register_report):
        handlers.update(register(sub))
    parser.handlers = {**handlers, **plugin_commands(sub, defined=handlers)}
    return parser


def plugin_commands(sub, defined=None) -> dict:
    """Subcommands registered by other packages (entry-point group ``emoprobe.commands``)."""
    from importlib.metadata import entry_points

    defined = COMMANDS if defined is None else defined
    handlers: dict = {}
    for ep in sorted(entry_points(group="emoprobe.commands"), key=lambda e: e.name):
        register = ep.load()
        for name, handler in register(sub).items():
            if name in defined or name in handlers:
                raise RuntimeError(f"command {name!r} from {ep.value} is already defined")
            handlers[name] = handler
    return handlers


def cmd_cache(args) -> int:
    from probe.cache import cache_activations, check_lengths_early, default_store_path

    from probe import objectstore

    objectstore.check(args.out)
    if args.finalize or args.workers > 1 or args.distributed:
        return _cache_distributed(args)
    if objectstore.protocol(args.out or "") == "memory":
        warnings.warn(f"{args.out} lives in this process only and is gone when `probe cache` "
                      "exits; use it from Python, or with `probe sweep --store`")
    dataset = load_data(args)
    check_lengths_early(args.model, dataset, cache_config(args), chat_template=args.chat_template,
                        allow_download=args.allow_download)  # tokenizer only: before the model
    lm = load_model(args)
    config = cache_config(args)
    out = args.out or default_store_path(lm, dataset, config,
                                         Path(args.cache_dir) if args.cache_dir else None)
    path = cache_activations(lm, dataset, config=config, out=out, progress=not args.quiet)
    print(f"store: {path}")
    if config.store_dtype == "bfloat16":  # xarray alone would show the uint16 bits
        print(f"open it with: probe.store.open_store({str(path)!r}) (decodes bfloat16)")
    else:
        print(f"open it with: xarray.open_zarr({str(path)!r}) or probe.store.open_store(...)")
    return 0


def _cache_distributed(args) -> int:
    from probe import distributed as dist

    if not args.out:
        raise dist.DistributedError("--workers, --distributed and --finalize need --out (the one "
                                    "store every worker writes)")
    if args.finalize:
        done = dist.finalize(args.out)
        state = "complete" if done else "INCOMPLETE: rerun the job to redo the missing blocks"
        print(f"store: {args.out} ({state})")
        return 0
    dataset, config = load_data(args), cache_config(args)
    if args.distributed:
        rank = dist.rank_from_env()
        if rank is None:
            raise dist.DistributedError("--distributed found no RANK/WORLD_SIZE (torchrun) or "
                                        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT in the "
                                        "environment")
        if rank.device is not None:
            args.device = rank.device
        done = dist.run_worker(load_model(args), dataset, config=config, out=args.out, rank=rank)
        print(f"worker {rank.rank}/{rank.world} done; store {args.out} "
              f"{'complete' if done else 'not complete yet (other workers, or --finalize)'}")
        return 0
    from probe.models import load_model as load_weights  # picklable, for the worker processes

    loader = (load_weights, (args.model,), dict(dtype=args.dtype, chat_template=args.chat_template,
                                              allow_download=args.allow_download))
    dist.cache_with_workers(loader, dataset, config=config, out=args.out, workers=args.workers)
    print(f"store: {args.out}")
    return 0


def cmd_info(args) -> int:
    from probe.store_info import describe

    print(describe(args.store))
    return 0


def cmd_sweep(args) -> int:
    from probe.sweep_cli import sweep_from_args

    return sweep_from_args(args, load_data=load_data, load_model=load_model,
                           cache_config=cache_config)


def cmd_models(args) -> int:
    from probe.models import REGISTRY

    for spec in REGISTRY.values():
        flags = ", ".join(f for f in ("embedded" if spec.embedded else "",
                                      "gated" if spec.gated else "") if f)
        print(f"{spec.alias:24s} {spec.hf_id:40s} {flags}{'  ' + spec.note if spec.note else ''}")
    return 0


def cmd_datasets(args) -> int:
    from probe.data import available_datasets

    for name, desc in available_datasets().items():
        print(f"{name:20s} {desc}")
    return 0


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


COMMANDS = {"cache": cmd_cache, "info": cmd_info, "sweep": cmd_sweep, "models": cmd_models,
            "datasets": cmd_datasets}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = _redacted(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    previous, warnings.formatwarning = warnings.formatwarning, _warning_line
    handler = parser.handlers[args.command]
    saved_options = os.environ.get(STORAGE_ENV)
    try:
        _set_storage_options(args)
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what `yes | head` reports
    except (EmoprobeError, *getattr(handler, "user_errors", ())) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: committed blocks are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous
        if saved_options is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = saved_options


STORAGE_ENV = "EMOPROBE_STORAGE_OPTIONS"  # probe.objectstore.ENV_OPTIONS (not imported eagerly)


def _set_storage_options(args) -> None:
    """``--storage-options`` for this command (and its worker processes), via the environment."""
    if getattr(args, "storage_options", None) is not None:
        from probe.objectstore import storage_options

        os.environ[STORAGE_ENV] = json.dumps(storage_options(args.storage_options))


def _redacted(argv: list[str]) -> list[str]:
    """The command line without the value of ``--storage-options`` (credentials)."""
    out = list(argv)
    for i, a in enumerate(out):
        name = a.split("=", 1)[0]
        if not (name.startswith("--stora") and "--storage-options".startswith(name)):
            continue  # argparse also takes unambiguous prefixes (--storage)
        if "=" in a:
            out[i] = f"{name}=<redacted>"
        elif i + 1 < len(out):
            out[i + 1] = "<redacted>"
    return out


def _discard_stdout() -> None:
    """Send what is still buffered for a closed pipe to /dev/null (no error at exit)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # pragma: no cover - a captured stream
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
