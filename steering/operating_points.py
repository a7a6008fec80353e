"""Shipped operating points: how to steer a model towards an emotion when the user says nothing.

``probe steer --emotion fear "How was your day?"`` (no ``--strength`` / ``--layers``) looks up
the operating point of the loaded model and emotion in ``steering/operating_points.json``:

.. code-block:: json

    {"format": 1,
     "models": {"smollm2-135m": {
         "weight_fingerprint": "...",
         "emotions": {"fear": {
             "method": "context-agnostic", "site": "resid_post", "layers": [10, ..., 19],
             "pooling": "last", "scale": 2.0, "strength": "rms", "mode": "add",
             "positions": "last-prompt+generated",
             "generate": {"repetition_penalty": 1.05, "no_repeat_ngram_size": 3},
             "provisional": true, "source": "how it was chosen"}}}}}

An entry marked ``provisional`` comes from a quick look, not from ``probe steer-eval``'s
protocol; ``steer-eval`` replaces entries with what it selects (``write_operating_point``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from steering.vector import SteeringError, SteeringVector

FORMAT = 1
_REQUIRED = ("method", "site", "layers", "scale", "strength", "mode", "positions")


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """Where and how strongly to steer one model towards one emotion."""

    model: str
    emotion: str
    method: str
    site: str
    layers: tuple[int, ...]
    scale: float
    strength: str = "rms"
    mode: str = "add"
    positions: str = "last-prompt+generated"
    pooling: str = "last"
    generate: dict = field(default_factory=dict)
    provisional: bool = True
    source: str = ""
    #: A shipped vector file (stem under ``steering/artifacts/vectors/``) for trained vectors,
    #: whose directions cannot be recomputed from a store; None: compute ``method`` directions.
    vector: str | None = None
    #: The prompt + steering mode (``probe steer --with-prompt``): ``{"system_prompt",
    #: "user_suffix", "scale"}``, the scale selected *with* the prompt; None: not offered.
    prompt: dict | None = None

    def describe(self) -> str:
        lo, hi = min(self.layers), max(self.layers)
        tag = " (provisional)" if self.provisional else ""
        return (f"{self.emotion}: {self.method} direction, {self.mode} x{self.scale:g} "
                f"{'RMS' if self.strength == 'rms' else self.strength} at {self.site} layers "
                f"{lo}-{hi}, positions {self.positions}{tag}")


VECTOR_DIR = Path(__file__).with_name("artifacts") / "vectors"


def point_vector(point: OperatingPoint, lm=None, *, folder: str | os.PathLike | None = None):
    """The shipped :class:`~steering.vector.SteeringVector` of ``point`` (None if it has none).

    Checked against ``lm`` (same weights) when given.
    """
    if point.vector is None:
        return None
    base = Path(folder) if folder is not None else VECTOR_DIR
    path = base / f"{point.vector}.safetensors"
    if not path.is_file():
        raise SteeringError(f"the operating point of {point.emotion} names the vector file {path}, "
                            "which is missing: reinstall emoprobe, or pass --vector/--method")
    return SteeringVector.load(path, lm, match="exact" if lm is not None else "none")


def prompt_mode(point: OperatingPoint | None, emotion: str, prompts: list[str]
                ) -> tuple[list[str], str | None, float]:
    """``(prompts with the user suffix, system prompt, scale)`` of the prompt + steering mode."""
    if point is None or not point.prompt:
        raise SteeringError(f"no prompt + steering mode is shipped for {emotion}; drop --with-prompt")
    suffix = point.prompt.get("user_suffix", "")
    return [p + suffix for p in prompts], point.prompt.get("system_prompt"), float(point.prompt["scale"])


def default_path() -> Path:
    return Path(__file__).with_name("operating_points.json")


def load_operating_points(path: str | os.PathLike | None = None) -> dict:
    """The whole table (checked): ``{"format": 1, "models": {alias: {...}}}``."""
    path = Path(path) if path is not None else default_path()
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise SteeringError(f"no operating-point table at {path}") from None
    except json.JSONDecodeError as exc:
        raise SteeringError(f"{path} is not valid JSON: {exc}") from None
    if table.get("format") != FORMAT or not isinstance(table.get("models"), dict):
        raise SteeringError(f"{path}: expected {{'format': {FORMAT}, 'models': {{...}}}}")
    for model, entry in table["models"].items():
        for emotion, point in entry.get("emotions", {}).items():
            missing = [k for k in _REQUIRED if k not in point]
            if missing:
                raise SteeringError(f"{path}: {model}/{emotion} lacks {missing}")
    return table


def operating_point(model: str, emotion: str, *, path: str | os.PathLike | None = None) -> OperatingPoint:
    """The shipped operating point of ``model`` (alias) for ``emotion``."""
    table = load_operating_points(path)
    entry = table["models"].get(model)
    if entry is None:
        raise SteeringError(f"no shipped operating point for model {model!r} (there are for "
                            f"{sorted(table['models'])}); pass --strength and --layers")
    point = entry.get("emotions", {}).get(emotion)
    if point is None:
        raise SteeringError(f"no operating point for emotion {emotion!r} on {model}; known: "
                            f"{sorted(entry.get('emotions', {}))}")
    known = set(OperatingPoint.__dataclass_fields__)
    fields = {k: v for k, v in point.items() if k in known}
    return OperatingPoint(model=model, emotion=emotion, **{**fields, "layers": tuple(point["layers"])})


#: An absolute path (POSIX or Windows) inside a text: from its root up to the next separator.
_ABSOLUTE = re.compile(r"(?<![\w./~-])(?:~|[A-Za-z]:\\|/)(?:[^\s`'\"]*[/\\])?([^\s`'\"/\\]+)")


def portable(text: str) -> str:
    """``text`` with every absolute path cut to its last component in angle brackets
    (``/home/me/judges/strong_judge`` -> ``<strong_judge>``), so what is shipped
    records no machine's folders, only names a reader can map to their own."""
    return _ABSOLUTE.sub(lambda m: f"<{m.group(1)}>", text)


def write_operating_point(point: OperatingPoint, *, weight_fingerprint: str | None = None,
                          path: str | os.PathLike | None = None) -> Path:
    """Add or replace one entry (atomically); for ``steer-eval`` to record what it selected."""
    path = Path(path) if path is not None else default_path()
    table = load_operating_points(path) if path.is_file() else {"format": FORMAT, "models": {}}
    entry = table["models"].setdefault(point.model, {"emotions": {}})
    if weight_fingerprint is not None:
        entry["weight_fingerprint"] = weight_fingerprint
    record = {k: v for k, v in asdict(point).items() if k not in ("model", "emotion")}
    record["layers"] = list(point.layers)
    record["source"] = portable(point.source)
    entry.setdefault("emotions", {})[point.emotion] = record
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, path)
    return path
