"""Big models on one node: spread a model over GPUs, CPU memory and disk (accelerate).

``load_model(..., device_map="auto", max_memory=...)`` hands placement to accelerate: blocks
are assigned to GPUs in order, then to CPU memory, then offloaded to disk, each block whole.
The hook layer needs nothing special: torch hooks wrap accelerate's per-module device moves,
a hook's value is on the device of the block that produced it, and every hook that combines
tensors (the pooling of :mod:`probe.capture`, ``resid_mid``, the ready-made interventions) moves
its own operands to the value's device. Inputs go to the device of the input embeddings.

>>> parse_max_memory("0=20GiB,1=20GiB,cpu=64GiB")
{0: '20GiB', 1: '20GiB', 'cpu': '64GiB'}
"""

from __future__ import annotations

from pathlib import Path

import torch

from probe.errors import EmoprobeError
from probe.io import emoprobe_home

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class PlacementError(EmoprobeError, ValueError):
    """A device map or memory budget cannot be used as given."""


def parse_max_memory(text: str | dict | None) -> dict | None:
    """``"0=20GiB,cpu=64GiB"`` -> ``{0: "20GiB", "cpu": "64GiB"}`` (GPU indices as ints)."""
    if text is None or isinstance(text, dict):
        return text
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise PlacementError(f"--max-memory takes DEVICE=SIZE pairs such as "
                                 f"'0=20GiB,cpu=64GiB', not {part!r}")
        key = key.strip()
        out[int(key) if key.isdigit() else key] = value.strip()
    return out


def device_map_kwargs(device_map, max_memory, offload_folder, alias: str) -> dict:
    """``from_pretrained`` keyword arguments for a device map (empty when there is none)."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise PlacementError("--max-memory / --offload-folder need --device-map "
                                 f"({', '.join(DEVICE_MAPS)})")
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise PlacementError(f"--device-map {device_map!r}: choose {', '.join(DEVICE_MAPS)} "
                             "(or pass a dict module -> device in Python)")
    folder = Path(offload_folder) if offload_folder else emoprobe_home() / "offload" / alias
    return {"device_map": device_map, "max_memory": parse_max_memory(max_memory),
            "offload_folder": str(folder)}


def input_device(model) -> torch.device:
    """Where a dispatched model's inputs go: the input embeddings' execution device."""
    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    dev = emb.weight.device
    return torch.device("cpu") if dev.type == "meta" else dev


def placement(model) -> dict[str, str] | None:
    """The module -> device map of a dispatched model (None when it sits on one device)."""
    mapping = getattr(model, "hf_device_map", None)
    return {k: str(v) for k, v in mapping.items()} if mapping else None
