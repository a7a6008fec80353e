"""What a ``probe`` subcommand needs: argument groups and loaders, public for plugins.

A command of ``probe`` -- built in, or added by a package through the ``emoprobe.commands``
entry point (see :mod:`probe.cli` and docs/extending.md) -- gets the same options and the same
checks as ``probe cache`` and ``probe sweep`` by using these:

* argument groups: :func:`model_args`, :func:`data_args`, :func:`cache_args`,
  :func:`storage_args` (and :func:`positive_int`, an ``argparse`` type);
* loaders that read those arguments: :func:`load_data` (dataset cut to ``--limit``),
  :func:`load_model` (sites and poolings checked before the weights load),
  :func:`cache_config` (a :class:`probe.cache.CacheConfig`).

Nothing heavy is imported here (``probe --help`` stays fast): the loaders import torch and
transformers when they run.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="probe hello")
>>> model_args(p)
>>> data_args(p)
>>> p.parse_args(["--limit", "8"]).model
'smollm2-135m'
"""

from __future__ import annotations

import argparse

__all__ = ["cache_args", "cache_config", "check_before_loading", "data_args", "load_data",
           "load_model", "model_args", "poolings", "positive_int", "storage_args"]


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def model_args(p: argparse.ArgumentParser) -> None:
    """Add the ``model`` group: ``--model``, ``--device``, ``--dtype``, chat template, placement."""
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


def data_args(p: argparse.ArgumentParser) -> None:
    """Add the ``data`` group: ``--dataset``, user-file columns, ``--split``, ``--limit``."""
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
    g.add_argument("--limit", type=positive_int, default=None,
                   help="use at most N rows: whole groups, the target's classes in proportion, "
                        "fixed seed 0 (so reruns reuse the store)")


def cache_args(p: argparse.ArgumentParser) -> None:
    """Add the ``caching`` group: ``--sites``, ``--pooling``, batch size, store dtype, cache dir."""
    g = p.add_argument_group("caching")
    g.add_argument("--sites", default="hook_embed blocks.*.hook_resid_post",
                   help="site patterns, space-separated: blocks.*.hook_resid_post, "
                        "blocks.0-11.hook_mlp_out, blocks.5.attn.hook_z, blocks.*.mlp.hook_post, "
                        "hook_embed; short forms resid_post, attn_out, ... (default: %(default)s)")
    g.add_argument("--pooling", default="last,content-mean",
                   help="comma-separated: last, mean, content-mean, content-last, token "
                        "(default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=32,
                   help="texts per forward pass (default: %(default)s)")
    g.add_argument("--store-dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype on disk; values beyond float16's range stop the run with a "
                        "pointer to bfloat16 / float32, never stored as inf; bfloat16 is kept as "
                        "its uint16 bits and read back as exact float32 (default: %(default)s)")
    g.add_argument("--padding-side", default=None, choices=["left", "right"],
                   help="default: the tokenizer's")
    g.add_argument("--max-length", type=positive_int, default=None,
                   help="refuse texts longer than this many tokens (default: the model's "
                        "context, max_position_embeddings)")
    g.add_argument("--truncate", action="store_true",
                   help="cut texts longer than --max-length / the model's context to fit (the "
                        "end of the text goes; the chat template is kept) instead of refusing them")
    g.add_argument("--cache-dir", default=None,
                   help="root for stores (default: $EMOPROBE_CACHE or ./cache)")


def storage_args(p: argparse.ArgumentParser) -> None:
    """Add ``--storage-options`` (fsspec options of an object-store URL)."""
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec options for a store URL (s3://, gs://, ...), e.g. "
                        "'{\"endpoint_url\": \"http://minio:9000\"}' (default: "
                        "$EMOPROBE_STORAGE_OPTIONS); never written to run records")


def poolings(args) -> tuple[str, ...]:
    """``--pooling`` as a tuple of names."""
    return tuple(p.strip() for p in args.pooling.split(",") if p.strip())


def load_data(args):
    """The dataset, cut to ``--limit`` (stratified); for a sweep, checked against ``--folds``."""
    from probe.capture import CaptureError
    from probe.data import load_dataset

    ds = load_dataset(args.dataset, text_column=args.text_column, label_column=args.label_column,
                      group_column=args.group_column, id_column=args.id_column, split=args.split)
    if hasattr(args, "pooling") and "token" in poolings(args) and "target_word" not in ds.frame:
        raise CaptureError(f"--pooling token reads each row's target word, but dataset "
                           f"{ds.name!r} has no 'target_word' column; choose other poolings")
    target = getattr(args, "target", None)
    limited = ds.limit(args.limit, target=target)
    if len(limited) < len(ds) and getattr(args, "fold_fallback", None) == "error":
        _check_limit(ds, limited, args.limit, target or ds.default_target, args.folds)
    return limited


def _check_limit(ds, limited, limit: int, target: str, n_folds: int) -> None:
    """Refuse a ``--limit`` too small for the folds, naming the smallest one that works."""
    from probe.data.schema import smallest_working_limit
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


def check_before_loading(args) -> None:
    """Sites, layers and poolings against the model's config: seconds, not a model load.

    Commands without ``--sites``/``--pooling`` (e.g. ``probe conflict``) skip what they lack.
    """
    from probe.capture import check_poolings
    from probe.models import known_n_layers
    from probe.sites import parse_sites

    if getattr(args, "pooling", None) is not None:
        check_poolings(poolings(args))
    if getattr(args, "sites", None) is None:
        return
    n_layers = known_n_layers(args.model, allow_download=args.allow_download)
    if n_layers is not None:
        parse_sites(args.sites, n_layers=n_layers)


def load_model(args):
    """Check the arguments against the model's config, then load it (``model`` group)."""
    from probe.models import ModelError, load_model

    if args.system_prompt is not None and not args.chat_template:
        raise ModelError("--system-prompt needs the chat template; drop --no-chat-template")
    check_before_loading(args)
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


def cache_config(args):
    """The :class:`probe.cache.CacheConfig` of the ``caching`` (and ``model``) arguments."""
    from probe.cache import CacheConfig

    return CacheConfig(sites=args.sites, poolings=poolings(args),
                       batch_size=args.batch_size, store_dtype=args.store_dtype,
                       padding_side=args.padding_side, system_prompt=args.system_prompt,
                       max_length=args.max_length, truncate=getattr(args, "truncate", False))
