"""A store of synthetic activations written through probe.store (no model): class means that
grow with depth plus noise, so probes learn something layer by layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probe.data.schema import EmotionDataset
from probe.store import ActivationStore, VariableSpec


def make_store(path: Path, *, n: int = 600, layers: int = 24, d: int = 256, classes: int = 4,
               poolings=("last", "mean"), block: int = 200, dtype: str = "float32",
               seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rows = [{"id": f"r{i}", "text": f"text {i} word{i % 17}", "label": f"c{y[i]}",
             "group": f"g{i // 4}"} for i in range(n)]
    ds = EmotionDataset.from_records("synthetic", rows)
    prov = {"model": "synthetic", "model_id": "synthetic", "weight_fingerprint": "none",
            "dtype": "float32", "dataset": "synthetic", "dataset_hash": ds.content_hash(),
            "n_samples": n, "chat_template": False, "system_prompt": None,
            "poolings": list(poolings), "store_dtype": dtype, "block_size": block,
            "max_length": None, "batch_size": block, "padding_side": "right",
            "n_layers": layers, "d_model": d}
    scale = np.linspace(0.02, 0.3, layers, dtype=np.float32)[:, None, None]
    means = rng.normal(size=(layers, classes, d)).astype(np.float32) * scale
    spec = VariableSpec("hook_resid_post", tuple(range(layers)), ("d_model",), (d,))
    with ActivationStore.open_for_writing(path, provenance=prov, dataset=ds) as store:
        store.ensure_variable(spec)
        for first in range(0, n, block):
            m = min(block, n - first)
            vals = rng.normal(size=(m, layers, len(poolings), d)).astype(np.float32)
            vals += means[:, y[first:first + m]].transpose(1, 0, 2)[:, :, None, :]
            store.write_block(first, {"hook_resid_post": (spec.layers, vals)})
    return path
