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
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def default_mode() -> int:
    """The mode ``open()`` gives a new file here: 0666 less the process umask."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def make_readable(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every file under a folder) the usual mode for new files."""
    path = Path(path)
    mode = default_mode()
    for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        os.chmod(file, mode)


def save_safetensors(tensors: Mapping, path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (NumPy arrays or torch tensors) to ``path`` atomically, mode 0644.

    Written to a hidden temporary file beside ``path`` and renamed into place, so a reader
    never sees a torn file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    meta = dict(metadata) if metadata is not None else None
    try:
        if any(type(v).__module__.startswith("torch") for v in tensors.values()):
            from safetensors.torch import save_file  # torch only when the tensors are torch's
        else:
            from safetensors.numpy import save_file

            tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(dict(tensors), str(tmp), metadata=meta)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
