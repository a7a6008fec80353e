"""Where the project is: the checkout a command or notebook runs in, whatever its folder.

A notebook runs with ``notebooks/`` as its working directory; a user may ``cd`` into ``docs/``.
Stores should still land in (and be found in) the project's one ``cache/``, not a new
``notebooks/cache/``. :func:`project_root` finds the checkout by walking up from the working
directory to the ``pyproject.toml`` of emoprobe; :func:`cache_root` is where stores go.

>>> cache_root().name
'cache'
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

PROJECT = "emoprobe"


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The emoprobe checkout holding ``start`` (default: the working directory), or None."""
    here = Path(start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                name = tomllib.loads(pyproject.read_text(encoding="utf-8")).get(
                    "project", {}).get("name")
            except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
                continue
            if name == PROJECT:
                return folder
    return None


def cache_root() -> Path:
    """``$EMOPROBE_CACHE``; else the checkout's ``cache/`` when run inside one (relative when
    the working directory is the checkout itself); else ``./cache``."""
    env = os.environ.get("EMOPROBE_CACHE")
    if env:
        return Path(env).expanduser()
    root = project_root()
    if root is None or root == Path.cwd().absolute():
        return Path("cache")
    return root / "cache"
