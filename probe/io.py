"""Files a command writes: atomic writes, run folders, the ``run.json`` command line.

Every command that measures writes a run folder (``runs/<model>/<name>-<time>/``) holding its
tables, figures and a ``run.json`` (written last: a folder without one is unfinished). These
helpers are the one home of the pieces every such command needs:

>>> import json, tempfile
>>> out = run_folder(None, "smollm2-135m", "demo", root=tempfile.mkdtemp())
>>> out.parent.name
'smollm2-135m'
>>> out.mkdir(parents=True)
>>> run = {"command": command_line(["sweep", "--dataset", "my data.csv"])}
>>> atomic_write(out / "run.json", json.dumps({**run, "environment": environment()},
...                                           default=json_default))
>>> json.loads((out / "run.json").read_text())["command"]
"probe sweep --dataset 'my data.csv'"
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import shlex
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "command_line", "default_mode", "emoprobe_home", "environment",
           "json_default", "run_folder"]


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` all at once: a temporary file beside it, then a rename.

    A reader never sees half a file, and an interrupted write leaves the old file (or none).
    The file gets the usual mode (0644 under umask 022), not ``mkstemp``'s private 0600.
    Text is written as UTF-8 with newlines as given.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_mode() -> int:
    """The mode ``open()`` gives a new file here: 0666 less the process umask (0644 usually)."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def command_line(argv: Sequence[str], prog: str = "probe") -> str:
    """The command as typed, shell-quoted so that it can be pasted back into a shell.

    ``argv`` is what ``probe.cli.main`` stores as ``args.argv`` (secrets already redacted).
    """
    return " ".join([prog, *(shlex.quote(str(a)) for a in argv)])


def run_folder(out: str | os.PathLike | None, model: str, name: str, *,
               root: str | os.PathLike = "runs") -> Path:
    """``out`` when given, else ``<root>/<model>/<name>-<YYYYmmdd-HHMMSS>`` (not created)."""
    if out is not None:
        return Path(out)
    return Path(root) / model / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def emoprobe_home() -> Path:
    """Where emoprobe keeps its own files (converted weights, offload): ``$EMOPROBE_HOME``, else
    ``~/.cache/emoprobe``."""
    return Path(os.environ.get("EMOPROBE_HOME", Path.home() / ".cache" / "emoprobe"))


def environment() -> dict[str, str | None]:
    """Provenance for ``run.json``: timestamp and emoprobe/python/torch/transformers versions."""
    from probe import __version__

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "emoprobe": __version__, "python": platform.python_version(),
            "torch": version("torch"), "transformers": version("transformers"),
            "platform": platform.platform()}


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: paths, NumPy scalars, sets and dataclasses."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):  # NumPy scalars
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")
