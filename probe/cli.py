"""The ``probe`` command line: cache activations, describe stores, run probe sweeps.

Other packages add subcommands (``probe steer``, ``probe circuits``, ...) without ``probe``
importing them: each registers a function under the entry-point group ``emoprobe.commands``
(see ``pyproject.toml``). The function receives the subparsers object, adds its parsers, and
returns ``{command: handler}``; a handler takes the parsed arguments and returns an exit code.
A package's own user errors are reported like ours when they subclass ``ValueError`` and are
listed in the handler's ``user_errors`` attribute.

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


def _user_errors() -> tuple[type[BaseException], ...]:
    from probe.arch import ArchitectureError
    from probe.capture import CaptureError
    from probe.data.schema import DatasetError
    from probe.models import ModelError
    from probe.distributed import DistributedError
    from probe.objectstore import ObjectStoreError
    from probe.lazy import MemoryBudgetError
    from probe.placement import PlacementError
    from probe.sites import SiteError
    from probe.store import StoreError
    from probe.tokens import EncodingError

    from probe.vlm.attribution import AttributionError
    from probe.vlm.conflict import ConflictError
    from probe.vlm.processors import ProcessorError

    errors: list[type[BaseException]] = [ArchitectureError, CaptureError, DatasetError,
                                          ModelError, SiteError, StoreError, EncodingError,
                                          AttributionError, ConflictError, ProcessorError,
                                          PlacementError, MemoryBudgetError, DistributedError,
                                          ObjectStoreError]
    try:
        from probe.stats import ProbeError

        errors.append(ProbeError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2-135m",
                   help="registered alias (see `probe models`), Hugging Face id, or local directory "
                        "(default: %(default)s, embedded)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    g.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                   help="feed raw text (default: wrap each text as a user turn when the model has "
                        "a chat template)")
    g.add_argument("--system-prompt", default=None,
                   help="system prompt for the chat template (default: the template's own)")
    g.add_argument("--allow-download", action="store_true",
                   help="let Hugging Face download missing weights (default: local files only)")
    g.add_argument("--device-map", default=None,
                   help="spread a big model over GPUs, CPU and disk (accelerate): auto, balanced, "
                        "sequential (default: the whole model on --device)")
    g.add_argument("--max-memory", default=None,
                   help="memory per device for --device-map, e.g. '0=20GiB,1=20GiB,cpu=64GiB'")
    g.add_argument("--offload-folder", default=None,
                   help="where --device-map offloads what fits nowhere else "
                        "(default: ~/.cache/emoprobe/offload/<model>)")


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="emotion-scenarios",
                   help="registered name (see `probe datasets`), NAME:PATH, a dataset directory "
                        "(format detected), or a .csv/.jsonl file (default: %(default)s)")
    g.add_argument("--text-column", default=None, help="text column of a user CSV/JSONL")
    g.add_argument("--label-column", default=None, help="label column of a user CSV/JSONL")
    g.add_argument("--group-column", default=None, help="group column of a user CSV/JSONL")
    g.add_argument("--id-column", default=None,
                   help="id column of a user CSV/JSONL (default: row-0, row-1, ...)")
    g.add_argument("--split", default=None, help="use only this split (train, dev, test)")
    g.add_argument("--limit", type=_positive_int, default=None,
                   help="use at most N rows: whole groups, the target's classes in proportion, "
                        "fixed seed 0 (so reruns reuse the store)")


def _cache_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("caching")
    g.add_argument("--sites", default="hook_embed blocks.*.hook_resid_post",
                   help="site patterns, space-separated: blocks.*.hook_resid_post, "
                        "blocks.0-11.hook_mlp_out, blocks.5.attn.hook_z, blocks.*.mlp.hook_post, "
                        "hook_embed; short forms resid_post, attn_out, ... (default: %(default)s)")
    g.add_argument("--pooling", default="last,content-mean",
                   help="comma-separated: last, mean, content-mean, content-last, token "
                        "(default: %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=32,
                   help="texts per forward pass (default: %(default)s)")
    g.add_argument("--store-dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype on disk; values beyond float16's range stop the run with a "
                        "pointer to bfloat16 / float32, never stored as inf; bfloat16 is kept as "
                        "its uint16 bits and read back as exact float32 (default: %(default)s)")
    g.add_argument("--padding-side", default=None, choices=["left", "right"],
                   help="default: the tokenizer's")
    g.add_argument("--max-length", type=_positive_int, default=None,
                   help="refuse texts longer than this many tokens (default: the model's "
                        "context, max_position_embeddings)")
    g.add_argument("--truncate", action="store_true",
                   help="cut texts longer than --max-length / the model's context to fit (the "
                        "end of the text goes; the chat template is kept) instead of refusing them")
    g.add_argument("--cache-dir", default=None,
                   help="root for stores (default: $EMOPROBE_CACHE or ./cache)")


def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec options for a store URL (s3://, gs://, ...), e.g. "
                        "'{\"endpoint_url\": \"http://minio:9000\"}' (default: "
                        "$EMOPROBE_STORAGE_OPTIONS); never written to run records")


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
    _model_args(p)
    _data_args(p)
    _cache_args(p)
    p.add_argument("--out", default=None, help="store path or object-store URL such as "
                   "s3://bucket/x.zarr (default: <cache-dir>/<model>/<dataset>-<key>.zarr)")
    _storage_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("several workers (docs/scale.md)")
    g.add_argument("--workers", type=_positive_int, default=1,
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
    _storage_args(p)

    p = sub.add_parser("sweep", help="cache what is missing, fit a probe at every layer, plot",
                       description="Cache activations (resuming if cached), fit a linear probe "
                                   "at every layer and site with group-aware cross-validation, "
                                   "bootstrap CIs, a control task and a lexical baseline; write "
                                   "a results table and layerwise figures.",
                       epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    _data_args(p)
    _cache_args(p)
    g = p.add_argument_group("probing")
    g.add_argument("--target", default=None,
                   help="target column (default: the dataset's; e.g. valence, V, A, D)")
    g.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds, group-aware (default: %(default)s)")
    g.add_argument("--fold-fallback", default="error", choices=["error", "reduce"],
                   help="when the groups (or a class's groups) are fewer than --folds: stop "
                        "with an error (default) or use fewer folds and report it")
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
    _storage_args(p)
    p.add_argument("--out", default=None,
                   help="results folder (default: runs/<model>/<dataset>-<target>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    from probe.vlm.cli import add_parser as add_conflict

    add_conflict(sub, _model_args)
    sub.add_parser("models", help="list registered model aliases")
    sub.add_parser("datasets", help="list registered datasets")
    from probe.behaviour.cli import register as register_behave
    from probe.report import register as register_report

    parser.handlers = {**COMMANDS, **register_behave(sub), **register_report(sub),
                       **plugin_commands(sub)}
    return parser


def plugin_commands(sub) -> dict:
    """Subcommands registered by other packages (entry-point group ``emoprobe.commands``)."""
    from importlib.metadata import entry_points

    handlers: dict = {}
    for ep in sorted(entry_points(group="emoprobe.commands"), key=lambda e: e.name):
        register = ep.load()
        for name, handler in register(sub).items():
            if name in COMMANDS or name in handlers:
                raise RuntimeError(f"command {name!r} from {ep.value} is already defined")
            handlers[name] = handler
    return handlers


def _poolings(args) -> tuple[str, ...]:
    return tuple(p.strip() for p in args.pooling.split(",") if p.strip())


def _load_data(args):
    """The dataset, cut to ``--limit`` (stratified); for a sweep, checked against ``--folds``."""
    from probe.capture import CaptureError
    from probe.data import load_dataset

    ds = load_dataset(args.dataset, text_column=args.text_column, label_column=args.label_column,
                      group_column=args.group_column, id_column=args.id_column, split=args.split)
    if hasattr(args, "pooling") and "token" in _poolings(args) and "target_word" not in ds.frame:
        raise CaptureError(f"--pooling token reads each row's target word, but dataset "
                           f"{ds.name!r} has no 'target_word' column; choose other poolings")
    target = getattr(args, "target", None)
    limited = ds.limit(args.limit, target=target)
    if len(limited) < len(ds) and getattr(args, "fold_fallback", None) == "error":
        _check_limit(ds, limited, args.limit, target or ds.default_target, args.folds)
    return limited


def _check_limit(ds, limited, limit: int, target: str, n_folds: int) -> None:
    """Refuse a ``--limit`` too small for the folds, naming the smallest one that works."""
    from probe.data.subset import smallest_working_limit
    from probe.stats import ProbeError

    if ds.target_kind(target) == "multilabel":
        return  # the sweep refuses it with its own message
    error = _fold_error(limited, target, n_folds)
    if error is None:
        return
    best = smallest_working_limit(ds, lambda d: _fold_error(d, target, n_folds) is None,
                                  target=target)
    if best is None:
        raise error
    raise ProbeError(f"--limit {limit} keeps {len(limited)} rows, too few for {n_folds}-fold "
                     f"group-aware cross-validation on {target!r}: {error}\nThe smallest "
                     f"--limit that works here is {best} (or lower --folds).")


def _fold_error(ds, target: str, n_folds: int):
    """The error the sweep's fold check raises on ``ds``, or ``None`` if folds can be made."""
    import pandas as pd

    from probe.stats import ProbeError, group_stratified_folds

    col, groups = ds.frame[target], ds.frame["group"]
    if ds.target_kind(target) == "continuous":
        y, task = pd.to_numeric(col, errors="coerce"), "regression"
        rows = y.notna().to_numpy()
    else:
        rows = (col.notna() & (col.astype(str) != "")).to_numpy()
        y, task = col.astype(str), "classification"
    try:
        group_stratified_folds(y[rows].to_numpy(), groups[rows].to_numpy(), n_folds, task=task)
    except ProbeError as exc:
        return exc
    return None


def _check_before_loading(args) -> None:
    """Sites, layers and poolings against the model's config: seconds, not a model load.

    Commands without ``--sites``/``--pooling`` (e.g. ``probe conflict``) skip what they lack.
    """
    from probe.capture import check_poolings
    from probe.models import known_n_layers
    from probe.sites import parse_sites

    if getattr(args, "pooling", None) is not None:
        check_poolings(_poolings(args))
    if getattr(args, "sites", None) is None:
        return
    n_layers = known_n_layers(args.model, allow_download=args.allow_download)
    if n_layers is not None:
        parse_sites(args.sites, n_layers=n_layers)


def _load_model(args):
    from probe.models import ModelError, load_model

    if args.system_prompt is not None and not args.chat_template:
        raise ModelError("--system-prompt needs the chat template; drop --no-chat-template")
    _check_before_loading(args)
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    lm = load_model(args.model, device=args.device, dtype=args.dtype,
                    chat_template=args.chat_template, allow_download=args.allow_download,
                    device_map=args.device_map, max_memory=args.max_memory,
                    offload_folder=args.offload_folder)
    if args.system_prompt is not None and not lm.chat_template:
        raise ModelError(f"--system-prompt was given but {args.model} has no chat template")
    return lm


def _cache_config(args):
    from probe.cache import CacheConfig

    return CacheConfig(sites=args.sites, poolings=_poolings(args),
                       batch_size=args.batch_size, store_dtype=args.store_dtype,
                       padding_side=args.padding_side, system_prompt=args.system_prompt,
                       max_length=args.max_length, truncate=getattr(args, "truncate", False))


def cmd_cache(args) -> int:
    from probe.cache import cache_activations, check_lengths_early, default_store_path

    from probe import objectstore

    objectstore.check(args.out)
    if args.finalize or args.workers > 1 or args.distributed:
        return _cache_distributed(args)
    if objectstore.protocol(args.out or "") == "memory":
        warnings.warn(f"{args.out} lives in this process only and is gone when `probe cache` "
                      "exits; use it from Python, or with `probe sweep --store`")
    dataset = _load_data(args)
    check_lengths_early(args.model, dataset, _cache_config(args), chat_template=args.chat_template,
                        allow_download=args.allow_download)  # tokenizer only: before the model
    lm = _load_model(args)
    config = _cache_config(args)
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
    dataset, config = _load_data(args), _cache_config(args)
    if args.distributed:
        rank = dist.rank_from_env()
        if rank is None:
            raise dist.DistributedError("--distributed found no RANK/WORLD_SIZE (torchrun) or "
                                        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT in the "
                                        "environment")
        if rank.device is not None:
            args.device = rank.device
        done = dist.run_worker(_load_model(args), dataset, config=config, out=args.out, rank=rank)
        print(f"worker {rank.rank}/{rank.world} done; store {args.out} "
              f"{'complete' if done else 'not complete yet (other workers, or --finalize)'}")
        return 0
    from probe.models import load_model

    loader = (load_model, (args.model,), dict(dtype=args.dtype, chat_template=args.chat_template,
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

    return sweep_from_args(args, load_data=_load_data, load_model=_load_model,
                           cache_config=_cache_config)


def cmd_conflict(args) -> int:
    from probe.vlm.cli import run

    return run(args, load_model=_load_model)


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


COMMANDS = {"cache": cmd_cache, "info": cmd_info, "sweep": cmd_sweep, "conflict": cmd_conflict,
            "models": cmd_models, "datasets": cmd_datasets}


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
    except BrokenPipeError:  # first: the next clause imports every module with user errors
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what `yes | head` reports
    except (*_user_errors(), *getattr(handler, "user_errors", ())) as exc:
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
