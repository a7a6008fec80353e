"""Tensor artifacts on disk: safetensors files written atomically and readable like the results
beside them.

``safetensors``' ``save_file`` (and ``save_pretrained``, which uses it) creates its file with
mode 0600, so vectors, probes, judges and the converted model were private while the CSV/JSON
next to them were 0644. :func:`save_safetensors` is the one writer every artifact uses; it
gives the file the mode a plain ``open()`` would (0644 under the usual umask 022).

>>> save_safetensors({"w": np.zeros((2, 3), dtype=np.float32)}, "runs/x/w.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from probe.io import atomic_write, default_mode


def make_readable(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every file under a folder) the usual mode for new files."""
    path = Path(path)
    mode = default_mode()
    for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        os.chmod(file, mode)


def save_safetensors(tensors: Mapping, path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (NumPy arrays or torch tensors) to ``path`` atomically, mode 0644.

    Serialised in memory (artifacts are vectors, probes and judges, not model weights) and
    written through :func:`probe.io.atomic_write`, so a reader never sees a torn file.
    """
    path = Path(path)
    meta = dict(metadata) if metadata is not None else None
    if any(type(v).__module__.startswith("torch") for v in tensors.values()):
        from safetensors.torch import save  # torch only when the tensors are torch's
    else:
        from safetensors.numpy import save

        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(path, save(dict(tensors), metadata=meta))
    return path
