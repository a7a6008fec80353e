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
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

import probe
from probe.capture import DEFAULT_POOLINGS, check_poolings, iter_blocks
from probe.data.schema import EmotionDataset
from probe.sites import DEFAULT_SITES, STORE_KINDS, Site, parse_sites
from probe.store import (
    MATCH_KEYS,
    STORE_DTYPES,
    ActivationStore,
    StoreError,
    VariableSpec,
    _env_cache_root,
    progress_keys,
    variable_specs,
)
from probe.tokens import encode


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """How to cache: sites, poolings, batching and storage.

    ``block_size`` (rows committed at a time) defaults to :func:`block_size_for`; batch size,
    block size and padding side fix which rows share a forward pass, so a store only resumes
    under the same values (they are part of the store's provenance key).
    """

    sites: str = DEFAULT_SITES
    poolings: tuple[str, ...] = DEFAULT_POOLINGS
    batch_size: int = 32
    block_size: int | None = None
    store_dtype: Literal["float16", "float32"] = "float16"
    padding_side: Literal["left", "right"] | None = None
    system_prompt: str | None = None
    max_length: int | None = None


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
        "batch_size": config.batch_size,
        "padding_side": config.padding_side or lm.tokenizer.padding_side,
        "toolkit_version": probe.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def default_store_path(lm, dataset: EmotionDataset, config: CacheConfig, root: Path | None = None) -> Path:
    """``cache/<model>/<dataset>-<key>.zarr``; the key hashes what must match to resume."""
    prov = provenance(lm, dataset, config)
    key = hashlib.sha256(json.dumps([prov[k] for k in MATCH_KEYS], default=str).encode())
    root = Path(root).expanduser() if root is not None else _env_cache_root()
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
                host = {name: (layers, t.cpu().numpy()) for name, (layers, t) in arrays.items()}
                for name, (_, values) in host.items():
                    _check_finite(name, values, first, self.dtype)
                self.store.write_block(first, host)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc


def _check_finite(name: str, values: np.ndarray, first: int, dtype: str) -> None:
    finite = np.isfinite(values)
    if finite.all():
        return
    n_inf, n_nan = int(np.isinf(values).sum()), int(np.isnan(values).sum())
    rows = np.flatnonzero(~finite.reshape(values.shape[0], -1).all(axis=1)) + first
    hint = (" float16 holds |x| <= 65504: rerun with --store-dtype float32 (inf here means the "
            "model's activations exceed it)" if dtype == "float16" else
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
        The store's absolute path.
    """
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
    encoded = encode(lm.tokenizer, dataset.texts, chat_template=lm.chat_template,
                     system_prompt=config.system_prompt, max_length=config.max_length,
                     target_words=(dataset.frame["target_word"].tolist()
                                   if "token" in poolings and "target_word" in dataset.frame else None))
    check_poolings(poolings, encoded)
    path = (Path(out).expanduser() if out is not None
            else default_store_path(lm, dataset, config)).absolute()
    specs = variable_specs(lm, sites)
    with ActivationStore.open_for_writing(path, provenance=provenance(lm, dataset, config),
                                          dataset=dataset) as store:
        for spec in specs:
            store.ensure_variable(spec)
        todo = _pending(specs, store.progress(), len(dataset))
        if todo:
            _run(lm, encoded, store, todo, sites, config, progress)
        store.finalize()
    return path


def _pending(specs: list[VariableSpec], progress: dict[str, int], n: int) -> list[VariableSpec]:
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
    dtype = torch.float16 if config.store_dtype == "float16" else torch.float32
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
