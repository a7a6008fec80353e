"""Cache pooled activations of a dataset into a resumable Zarr store.

Compute and disk writes overlap: the main thread runs forward passes while a writer thread
moves the previous block to the host, checks it, writes it and commits it. Memory stays flat:
at most two blocks are in flight, whatever the dataset size.

Blocks are the unit of commit (and the store's chunking): an interrupted run keeps every block
committed before the interruption. :func:`block_size_for` sizes them so that even a small
dataset is cut into about eight blocks (Ctrl-C keeps most of the work), in whole batches, and
at most 512 rows.

>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> path = cache_activations(lm, load_dataset("emotion-scenarios"), config=CacheConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

import probe
from probe.bf16 import from_bits, to_bits
from probe.capture import DEFAULT_POOLINGS, CaptureError, check_poolings, iter_blocks
from probe.data.schema import EmotionDataset
from probe.models import model_config, model_tokenizer, resolve_model
from probe.objectstore import normalize
from probe.sites import DEFAULT_SITES, STORE_KINDS, Site, parse_sites
from probe.store import (
    LATER_KEYS,
    MATCH_KEYS,
    STORE_DTYPES,
    ActivationStore,
    StoreError,
    VariableSpec,
    _env_cache_root,
    is_complete,
    progress_keys,
    root_attributes,
    variable_specs,
)
from probe.tokens import Encoded, EncodingError, context_limit, encode
from probe.multimodal.encode import layout_coords
from probe.multimodal.processors import is_multimodal_config

#: Dataset columns that hold a row's media (paths), read by multimodal models.
MEDIA_COLUMNS = ("image", "audio")
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """How to cache: sites, poolings, batching and storage.

    Texts longer than ``max_length`` or the model's context (:func:`probe.tokens.context_limit`)
    are refused before any forward pass, or with ``truncate`` cut to fit (see
    :func:`probe.tokens.encode`). ``block_size`` (rows committed at a time) defaults to
    :func:`block_size_for`; batch size,
    block size and padding side fix which rows share a forward pass, so a store only resumes
    under the same values (they are part of the store's provenance key).
    """

    sites: str = DEFAULT_SITES
    poolings: tuple[str, ...] = DEFAULT_POOLINGS
    batch_size: int = 32
    block_size: int | None = None
    store_dtype: Literal["float16", "float32", "bfloat16"] = "float16"
    padding_side: Literal["left", "right"] | None = None
    system_prompt: str | None = None
    max_length: int | None = None
    truncate: bool = False


#: Most rows per block; fewest blocks a dataset is cut into when it is large enough.
MAX_BLOCK_ROWS, MIN_BLOCKS = 512, 8


def block_size_for(n_rows: int, batch_size: int) -> int:
    """Rows per block: about ``n_rows / 8``, in whole batches, at most ~512 rows.

    >>> block_size_for(448, 32), block_size_for(84, 32), block_size_for(50_000, 32)
    (64, 32, 512)
    """
    if n_rows < 1 or batch_size < 1:
        raise StoreError(f"need at least one row and a positive batch size, got {n_rows} rows "
                         f"and --batch-size {batch_size}")
    batches = math.ceil(math.ceil(n_rows / MIN_BLOCKS) / batch_size)
    return batch_size * max(1, min(batches, MAX_BLOCK_ROWS // batch_size))


def _block_size(config: CacheConfig, n_rows: int) -> int:
    return config.block_size or block_size_for(n_rows, config.batch_size)


def provenance(lm, dataset: EmotionDataset, config: CacheConfig) -> dict:
    """Everything that identifies what a store holds (the keys in MATCH_KEYS must match)."""
    return {
        **lm.provenance(),
        "chat_template": lm.chat_template,
        "system_prompt": config.system_prompt if lm.chat_template else None,
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "dataset_hash": dataset.content_hash(),
        "n_samples": len(dataset),
        "poolings": list(config.poolings),
        "store_dtype": config.store_dtype,
        "block_size": _block_size(config, len(dataset)),
        "max_length": config.max_length,
        "truncate": token_limit(lm, config) if config.truncate else None,
        "batch_size": config.batch_size,
        "padding_side": config.padding_side or lm.tokenizer.padding_side,
        "toolkit_version": probe.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def default_store_path(lm, dataset: EmotionDataset, config: CacheConfig, root: Path | None = None) -> Path:
    """``cache/<model>/<dataset>-<key>.zarr``; the key hashes what must match to resume."""
    prov = provenance(lm, dataset, config)
    key = hashlib.sha256(json.dumps([prov.get(k) for k in MATCH_KEYS
                                     if k not in LATER_KEYS or prov.get(k) is not None],
                                    default=str).encode())
    root = Path(root).expanduser() if root is not None else _env_cache_root()
    if re.match(r"[a-zA-Z][\w+.-]+:/", str(root)):  # Path() has mangled "s3://b" into "s3:/b"
        raise StoreError(f"--cache-dir / $EMOPROBE_CACHE must be a local folder, not {root}; give "
                         "an object-store URL as the store itself (--out for probe cache, --store "
                         "for probe sweep)")
    return root.absolute() / lm.spec.alias / f"{dataset.name}-{key.hexdigest()[:10]}.zarr"


class _Writer(threading.Thread):
    """Moves finished blocks to the host, checks them and writes them, in order."""

    def __init__(self, store: ActivationStore, specs: list[VariableSpec], dtype: str) -> None:
        super().__init__(daemon=True, name="emoprobe-writer")
        self.store, self.specs, self.dtype = store, specs, dtype
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None

    def put(self, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure
            try:
                first, arrays = item
                host = {name: (layers, to_host(t, self.dtype))
                        for name, (layers, t) in arrays.items()}
                for name, (_, values) in host.items():
                    _check_finite(name, values, first, self.dtype)
                self.store.write_block(first, host)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc


def to_host(t: torch.Tensor, store_dtype: str) -> np.ndarray:
    """A block on the host as the store holds it (bfloat16 as its uint16 bits, probe.bf16)."""
    return to_bits(t) if store_dtype == "bfloat16" else t.cpu().numpy()


def host_arrays(todo: list[VariableSpec], pooled: dict, store_dtype: str,
                first: int) -> dict[str, tuple]:
    """``{name: (layers, host values)}`` of one block, checked finite (what the writer writes)."""
    dtype = TORCH_DTYPES[store_dtype]
    out = {s.name: (s.layers, to_host(_stack(s, pooled, dtype), store_dtype)) for s in todo}
    for name, (_, values) in out.items():
        _check_finite(name, values, first, store_dtype)
    return out


def _check_finite(name: str, values: np.ndarray, first: int, dtype: str) -> None:
    if dtype == "bfloat16":
        values = from_bits(values)
    finite = np.isfinite(values)
    if finite.all():
        return
    n_inf, n_nan = int(np.isinf(values).sum()), int(np.isnan(values).sum())
    rows = np.flatnonzero(~finite.reshape(values.shape[0], -1).all(axis=1)) + first
    hint = (" float16 holds |x| <= 65504: rerun with --store-dtype float32, or --store-dtype "
            "bfloat16 (float16's size, float32's range; inf here means the model's activations "
            "exceed float16)" if dtype == "float16" else
            " the model itself produced non-finite activations (check --dtype)")
    raise StoreError(f"{name}: {n_inf} inf and {n_nan} NaN values in rows {rows[:5].tolist()}..."
                     f"; nothing of this block was written.{hint}")


def _stack(spec: VariableSpec, pooled: dict[Site, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if spec.layers is None:
        x = pooled[Site(spec.name)]
    else:
        x = torch.stack([pooled[Site(spec.name, layer)] for layer in spec.layers], dim=1)
    x = x.reshape(*x.shape[:-1], *spec.feature_shape)
    return x.to(dtype)


def cache_activations(
    lm,
    dataset: EmotionDataset,
    *,
    config: CacheConfig = CacheConfig(),
    out: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Cache ``config.sites`` of ``dataset`` into a store; resume it if it exists.

    Returns:
        The store's absolute path (or its URL: ``out`` may be an fsspec URL such as
        ``s3://bucket/x.zarr``, see :mod:`probe.objectstore`).
    """
    job = plan_cache(lm, dataset, config, out)
    if cached_already(job):
        return job.path  # nothing to write: no writer lock (another run may hold it)
    with ActivationStore.open_for_writing(job.path, provenance=job.provenance, dataset=dataset,
                                          coords=job.coords) as store:
        for spec in job.specs:
            store.ensure_variable(spec)
        todo = pending_specs(job.specs, store.progress(), len(dataset))
        if todo:
            _run(lm, job.encoded, store, todo, job.sites, job.config, progress)
        store.finalize()
    return job.path


@dataclass(frozen=True)
class CacheJob:
    """What a caching run will do, decided before any forward pass.

    Every worker of a distributed run (:mod:`probe.distributed`) plans the same job.
    """

    path: Path | str  # a local Path, or an object-store URL (probe.objectstore)
    config: CacheConfig  # poolings normalised
    sites: list[Site]
    specs: list[VariableSpec]
    encoded: Encoded
    provenance: dict
    coords: dict[str, np.ndarray]  # per-sample coordinates besides the dataset's columns
    n_rows: int

    @property
    def block_size(self) -> int:
        return int(self.config.block_size)  # resolved by plan_cache (block_size_for)

    @property
    def progress_keys(self) -> list[str]:
        return [k for spec in self.specs for k in progress_keys(spec)]


def cached_already(job: CacheJob) -> bool:
    """True when the store exists, was made with this job's settings and holds every array and
    layer the job asks for; read without the writer lock (commits replace ``zarr.json``
    atomically, so a reader sees a consistent state even while another run writes)."""
    attrs = root_attributes(job.path)
    if attrs is None:
        return False
    prov, progress = attrs.get("emoprobe", {}), dict(attrs.get("progress", {}))
    if any(prov.get(k) != job.provenance.get(k) for k in MATCH_KEYS):
        return False  # the writer path explains the mismatch
    if attrs.get("complete") != is_complete(progress, job.n_rows):
        return False  # a writer died before mirroring completeness: the writer path repairs it
    return not pending_specs(job.specs, progress, job.n_rows)


def plan_cache(lm, dataset: EmotionDataset, config: CacheConfig, out=None) -> CacheJob:
    """Check the config, encode the dataset (images and audio included) and name the store."""
    if config.store_dtype not in STORE_DTYPES:
        raise StoreError(f"--store-dtype must be one of {STORE_DTYPES}")
    if config.batch_size < 1 or (config.block_size is not None and config.block_size < 1):
        raise StoreError("batch_size (--batch-size) and block_size must be positive")
    sites = parse_sites(config.sites, n_layers=lm.n_layers)
    bad = [s for s in sites if s.kind not in STORE_KINDS or s.unit is not None]
    if bad:
        raise StoreError(f"{bad[0]} cannot be cached into a store: stores hold whole sites of kinds "
                         f"{', '.join(STORE_KINDS)} (a head or neuron is a slice of attn.hook_z / "
                         "mlp.hook_post); read other sites with lm.run_with_cache")
    poolings = check_poolings(config.poolings)
    config = CacheConfig(**{**asdict(config), "poolings": poolings,
                            "block_size": _block_size(config, len(dataset))})
    encoded = _encode(lm, dataset, config)
    check_context(lm, encoded, dataset.ids)
    check_poolings(poolings, encoded)
    path = (normalize(out) if out is not None
            else default_store_path(lm, dataset, config).absolute())
    return CacheJob(path=path, config=config, sites=sites, specs=variable_specs(lm, sites),
                    encoded=encoded, provenance=provenance(lm, dataset, config),
                    coords={**layout_coords(encoded), **media_coords(dataset)}, n_rows=len(dataset))


def _encode(lm, dataset: EmotionDataset, config: CacheConfig) -> Encoded:
    """Token ids (and, for a multimodal model, the processor's modality layout) of every row."""
    words = (dataset.frame["target_word"].tolist()
             if "token" in config.poolings and "target_word" in dataset.frame else None)
    media = {col: dataset.frame[col].tolist() for col in MEDIA_COLUMNS if col in dataset.frame}
    if lm.processor is None:
        if media:
            raise CaptureError(f"dataset {dataset.name!r} has an {next(iter(media))!r} column, but "
                               f"model {lm.spec.alias!r} takes text only; use a multimodal model "
                               "(see `probe models`) or drop the column")
        return encode(lm.tokenizer, dataset.texts, chat_template=lm.chat_template,
                      system_prompt=config.system_prompt, target_words=words,
                      max_length=token_limit(lm, config) if config.truncate else config.max_length,
                      truncate=config.truncate)
    from probe.multimodal.encode import encode_multimodal

    return encode_multimodal(lm.processor, dataset.texts, images=media.get("image"),
                             audio=media.get("audio"), chat_template=lm.chat_template,
                             system_prompt=config.system_prompt if lm.chat_template else None,
                             target_words=words, max_length=config.max_length,
                             root=_media_root(dataset))


def token_limit(lm, config: CacheConfig) -> int | None:
    """The most tokens a row may have: ``max_length`` or the model's context, the smaller."""
    limits = [x for x in (config.max_length, context_limit(lm.model.config, lm.tokenizer))
              if x is not None]
    return min(limits) if limits else None


def check_context(lm, encoded: Encoded, ids) -> None:
    """Refuse rows longer than the model's context, naming them (before any forward pass:
    one such row padded into a batch took 7.6 GB and crashed mid-store)."""
    _refuse_long(encoded.lengths, context_limit(lm.model.config, lm.tokenizer), lm.spec.alias,
                 ids)


def check_lengths_early(model: str, dataset: EmotionDataset, config: CacheConfig, *,
                        chat_template: bool = True, allow_download: bool = False) -> None:
    """:func:`check_context` (and ``--max-length``) from the tokenizer and config alone,
    before the model loads; skipped where those are not cheap to read (then
    :func:`plan_cache` checks after loading, still before any forward pass)."""
    cfg = model_config(model, allow_download=allow_download)
    if config.truncate or cfg is None or is_multimodal_config(cfg):
        return
    tok = model_tokenizer(model, allow_download=allow_download)
    if tok is None or not getattr(tok, "is_fast", False):
        return
    template = chat_template and bool(getattr(tok, "chat_template", None))
    enc = encode(tok, dataset.texts, chat_template=template, max_length=config.max_length,
                 system_prompt=config.system_prompt if template else None)
    _refuse_long(enc.lengths, context_limit(cfg, tok), resolve_model(model).alias, dataset.ids)


def _refuse_long(lengths, limit: int | None, alias: str, ids) -> None:
    too_long = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
    if not too_long:
        return
    rows = ", ".join(f"{i} (id {ids[i]!r}, {lengths[i]:,} tokens)" for i in too_long[:5])
    more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
    raise EncodingError(
        f"{len(too_long)} text(s) are longer than {alias}'s context of {limit:,} tokens: "
        f"rows {rows}{more}. Nothing is truncated silently: shorten or drop them, or pass "
        f"--truncate to cut each to {limit:,} tokens (the end of its text)")


def _media_root(dataset: EmotionDataset) -> Path | None:
    src = Path(str(dataset.source)) if dataset.source else None
    if src is None or not src.exists():
        return None
    return src if src.is_dir() else src.parent


def media_coords(dataset: EmotionDataset) -> dict[str, np.ndarray]:
    """The rows' media paths as store coordinates (several per row joined by ``|``)."""
    out = {}
    for col in MEDIA_COLUMNS:
        if col in dataset.frame:
            out[col] = np.asarray(["|".join(map(str, v)) if isinstance(v, (list, tuple))
                                   else "" if v is None or v != v else str(v)
                                   for v in dataset.frame[col]], dtype=str)
    return out


def prepare_store(job: CacheJob, dataset: EmotionDataset) -> None:
    """Create (or reopen) the store and every array of ``job`` (under the store's lock)."""
    with ActivationStore.open_for_writing(job.path, provenance=job.provenance, dataset=dataset,
                                          coords=job.coords) as store:
        for spec in job.specs:
            store.ensure_variable(spec)


def pending_specs(specs: list[VariableSpec], progress: dict[str, int],
                  n: int) -> list[VariableSpec]:
    """The part of each spec (layers) not yet committed to the last row."""
    out = []
    for spec in specs:
        if spec.layers is None:
            if progress.get(spec.name, 0) < n:
                out.append(spec)
            continue
        layers = tuple(layer for layer in spec.layers if progress.get(f"{spec.name}/{layer}", 0) < n)
        if layers:
            out.append(replace(spec, layers=layers))
    return out


def _run(lm, encoded, store, todo, sites, config: CacheConfig, progress: bool) -> None:
    from tqdm.auto import tqdm

    prog = store.progress()
    start = min(prog.get(key, 0) for spec in todo for key in progress_keys(spec))
    capture_sites = [Site(s.name, layer) for s in todo for layer in (s.layers or [None])]
    dtype = TORCH_DTYPES[config.store_dtype]
    writer = _Writer(store, todo, config.store_dtype)
    writer.start()
    bar = tqdm(total=len(encoded), initial=start, unit="text", desc="caching",
               disable=not progress, dynamic_ncols=True)
    try:
        for first, pooled in iter_blocks(
            lm, encoded, capture_sites, config.poolings, batch_size=config.batch_size,
            block_size=config.block_size, start_row=start,
            padding_side=config.padding_side or lm.tokenizer.padding_side, on_batch=bar.update,
        ):
            writer.put((first, {s.name: (s.layers, _stack(s, pooled, dtype)) for s in todo}))
    finally:
        writer.q.put(None)
        writer.join()
        bar.close()
    if writer.error is not None:
        raise writer.error
