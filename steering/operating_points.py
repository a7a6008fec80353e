"""Operating points: how to steer a model towards an emotion when the user says nothing.

``probe steer --emotion fear "How was your day?"`` (no ``--strength`` / ``--layers``) looks up
the operating point of the loaded model and emotion, first in the user's own table
(``<emoprobe home>/operating_points.json``, where ``probe steer-eval --write-operating-points``
records what it tuned; ``$EMOPROBE_HOME``, else ``~/.cache/emoprobe``), then in the shipped,
read-only defaults ``steering/operating_points.json``:

.. code-block:: json

    {"format": 2,
     "models": {"smollm2-135m": {
         "weight_fingerprint": "...",
         "emotions": {"fear": {
             "method": "context-agnostic", "site": "resid_post", "layers": [10, ..., 19],
             "pooling": "last", "strength": 2.0, "unit": "rms", "mode": "add",
             "positions": "last-prompt+generated",
             "generate": {"repetition_penalty": 1.05, "no_repeat_ngram_size": 3},
             "provisional": true, "source": "how it was chosen"}}}}}

An entry marked ``provisional`` comes from a quick look, not from ``probe steer-eval``'s
protocol; ``steer-eval`` records what it selects in the user's table (``write_operating_point``),
never in the installed package. An emotion's record may carry its own ``weight_fingerprint``
(the weights it was tuned on), which wins over the model's; :func:`fingerprint_warning` says
when it differs from the loaded model's.

``strength``, ``unit`` and ``factor`` mean what they mean in :mod:`probe.interventions` (and on
``probe steer``'s command line). Tables of format 1, written by older versions, named the
strength ``scale`` and the unit ``strength`` (and the prompt mode's strength ``scale``); they
are still read (:func:`upgrade`), and a user table is written back in format 2.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from probe.io import atomic_write, emoprobe_home
from steering.lowrank import load_steering  # a vector or a low-rank (LoReFT) intervention
from steering.vector import SteeringError

FORMAT = 2
_REQUIRED = ("method", "site", "layers", "strength", "unit", "mode", "positions")


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """Where and how strongly to steer one model towards one emotion."""

    model: str
    emotion: str
    method: str
    site: str
    layers: tuple[int, ...]
    strength: float = 0.0
    unit: str = "rms"
    factor: float | None = None
    mode: str = "add"
    positions: str = "last-prompt+generated"
    pooling: str = "last"
    generate: dict = field(default_factory=dict)
    provisional: bool = True
    source: str = ""
    #: A vector file (stem under ``<EMOPROBE_HOME>/vectors/`` or ``steering/artifacts/vectors/``)
    #: for trained vectors, whose directions cannot be recomputed from a store; None: compute
    #: ``method`` directions.
    vector: str | None = None
    #: The prompt + steering mode (``probe steer --with-prompt``): ``{"system_prompt",
    #: "user_suffix", "strength"}``, the strength selected *with* the prompt; None: not offered.
    #: With ``"vector"`` (a stem under ``steering/artifacts/vectors/``) the mode steers that
    #: vector at all of its layers (``"positions"``, default the point's), not the point's own.
    prompt: dict | None = None
    #: The weights it was tuned on (``LoadedModel.fingerprint``); None: not recorded.
    weight_fingerprint: str | None = field(default=None, compare=False)
    #: Which table it came from: "user", "shipped", or the path given to :func:`operating_point`.
    origin: str = field(default="", compare=False)

    def describe(self) -> str:
        lo, hi = min(self.layers), max(self.layers)
        tag = " (provisional)" if self.provisional else ""
        amount = (f"x{self.factor:g}" if self.mode == "scale" else
                  f"x{self.strength:g} {'RMS' if self.unit == 'rms' else self.unit}")
        return (f"{self.emotion}: {self.method} direction, {self.mode} {amount} at {self.site} layers "
                f"{lo}-{hi}, positions {self.positions}{tag}")


VECTOR_DIR = Path(__file__).with_name("artifacts") / "vectors"


def point_vector(point: OperatingPoint, lm=None, *, folder: str | os.PathLike | None = None,
                 with_prompt: bool = False):
    """The shipped :class:`~steering.vector.SteeringVector` (or low-rank intervention) of
    ``point`` (None if it has none).

    ``with_prompt``: the prompt + steering mode's own vector (``prompt["vector"]``) instead.
    Checked against ``lm`` (same weights) when given.
    """
    stem = prompt_vector(point) if with_prompt else point.vector
    if stem is None:
        return None
    if folder is not None:
        path = Path(folder) / f"{stem}.safetensors"
    else:   # the user's own vectors (next to their operating points) before the shipped ones
        path = next((p for p in (user_vector_dir() / f"{stem}.safetensors", VECTOR_DIR / f"{stem}.safetensors")
                     if p.is_file()), VECTOR_DIR / f"{stem}.safetensors")
    if not path.is_file():
        raise SteeringError(f"the operating point of {point.emotion} names the vector file {path}, "
                            "which is missing: reinstall emoprobe, or pass --vector/--method")
    return load_steering(path, lm, match="exact" if lm is not None else "none")


def prompt_vector(point: OperatingPoint | None) -> str | None:
    """The vector file stem the prompt + steering mode steers with (None: the point's own)."""
    return (point.prompt or {}).get("vector") if point is not None else None


def prompt_mode(point: OperatingPoint | None, emotion: str, prompts: list[str]
                ) -> tuple[list[str], str | None, float]:
    """``(prompts with the user suffix, system prompt, strength)`` of the prompt + steering mode."""
    if point is None or not point.prompt:
        raise SteeringError(f"no prompt + steering mode is shipped for {emotion}; drop --with-prompt")
    suffix = point.prompt.get("user_suffix", "")
    return [p + suffix for p in prompts], point.prompt.get("system_prompt"), float(point.prompt["strength"])


def shipped_path() -> Path:
    """The shipped defaults (read-only: nothing writes here)."""
    return Path(__file__).with_name("operating_points.json")


default_path = shipped_path  # the old name


def user_vector_dir() -> Path:
    """Where a user's operating points may keep vector files (``<EMOPROBE_HOME>/vectors``)."""
    return emoprobe_home() / "vectors"


def user_path() -> Path:
    """The user's own table, written by ``probe steer-eval --write-operating-points``."""
    return emoprobe_home() / "operating_points.json"


def upgrade(point: dict) -> dict:
    """One emotion's record of a format-1 table in format 2's words (a new dict).

    Format 1 named the strength ``scale`` and its unit ``strength``; with ``mode="scale"`` its
    ``scale`` was the factor.
    """
    out = {}
    for key, value in point.items():
        if key == "scale":
            out["factor" if point.get("mode") == "scale" else "strength"] = value
        elif key == "strength":
            out["unit"] = value
        elif key == "prompt" and isinstance(value, dict):
            out["prompt"] = {("strength" if k == "scale" else k): v for k, v in value.items()}
        else:
            out[key] = value
    out.setdefault("strength", 0.0)
    out.setdefault("unit", "rms")
    return out


def load_operating_points(path: str | os.PathLike | None = None) -> dict:
    """The whole table (checked), in format 2: ``{"format": 2, "models": {alias: {...}}}``.

    A format-1 table (older versions' user tables) is read and returned upgraded."""
    path = Path(path) if path is not None else shipped_path()
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise SteeringError(f"no operating-point table at {path}") from None
    except json.JSONDecodeError as exc:
        raise SteeringError(f"{path} is not valid JSON: {exc}") from None
    if table.get("format") not in (1, FORMAT) or not isinstance(table.get("models"), dict):
        raise SteeringError(f"{path}: expected {{'format': {FORMAT}, 'models': {{...}}}}")
    if table["format"] == 1:
        for entry in table["models"].values():
            if isinstance(entry.get("emotions"), dict):
                entry["emotions"] = {e: upgrade(p) for e, p in entry["emotions"].items()}
        table["format"] = FORMAT
    for model, entry in table["models"].items():
        for emotion, point in entry.get("emotions", {}).items():
            missing = [k for k in _REQUIRED if k not in point]
            if missing:
                raise SteeringError(f"{path}: {model}/{emotion} lacks {missing}")
    return table


def operating_point(model: str, emotion: str, *, path: str | os.PathLike | None = None) -> OperatingPoint:
    """The operating point of ``model`` (alias) for ``emotion``: from ``path`` when given, else
    from the user's table (:func:`user_path`) when it has one, else from the shipped defaults.
    ``origin`` on the result says which ("user", "shipped" or the path)."""
    if path is not None:
        tables = [(str(path), Path(path))]
    else:
        tables = [("user", user_path())] if user_path().is_file() else []
        tables.append(("shipped", shipped_path()))
    known_models: set[str] = set()
    for origin, where in tables:
        entry = load_operating_points(where)["models"].get(model)
        if entry is None:
            continue
        known_models.add(model)
        point = entry.get("emotions", {}).get(emotion)
        if point is None:
            continue
        known = set(OperatingPoint.__dataclass_fields__) - {"origin"}
        fields = {k: v for k, v in point.items() if k in known}
        fields.setdefault("weight_fingerprint", entry.get("weight_fingerprint"))
        return OperatingPoint(model=model, emotion=emotion, origin=origin,
                              **{**fields, "layers": tuple(point["layers"])})
    names = " or ".join(str(w) for _, w in tables)
    if not known_models:
        models = sorted({m for _, w in tables for m in load_operating_points(w)["models"]})
        raise SteeringError(f"no operating point for model {model!r} in {names} (there are "
                            f"for {models}); pass --strength and --layers")
    emotions = sorted({e for _, w in tables
                       for e in load_operating_points(w)["models"].get(model, {}).get("emotions", {})})
    raise SteeringError(f"no operating point for emotion {emotion!r} on {model} in {names}; "
                        f"known: {emotions}")


def fingerprint_warning(point: OperatingPoint, fingerprint: str | None) -> str | None:
    """Why ``point`` may not fit the loaded weights (``fingerprint``), or None when it was tuned
    on them or either side is unrecorded (nothing to compare)."""
    tuned = point.weight_fingerprint
    if not tuned or not fingerprint or "unknown" in (tuned, fingerprint) or tuned == fingerprint:
        return None
    return (f"the {point.origin or 'chosen'} operating point of {point.model}/{point.emotion} was "
            f"tuned on other weights (fingerprint {tuned}; loaded {fingerprint}); its strength may "
            "not carry over: rerun probe steer-eval --write-operating-points on these weights, "
            "or pass --strength and --layers")


#: An absolute path (POSIX or Windows) inside a text: from its root up to the next separator.
_ABSOLUTE = re.compile(r"(?<![\w./~-])(?:~|[A-Za-z]:\\|/)(?:[^\s`'\"]*[/\\])?([^\s`'\"/\\]+)")


def portable(text: str) -> str:
    """``text`` with every absolute path cut to its last component in angle brackets
    (``/home/me/judges/strong_judge`` -> ``<strong_judge>``), so what is shipped
    records no machine's folders, only names a reader can map to their own."""
    return _ABSOLUTE.sub(lambda m: f"<{m.group(1)}>", text)


def write_operating_point(point: OperatingPoint, *, weight_fingerprint: str | None = None,
                          path: str | os.PathLike | None = None) -> Path:
    """Add or replace one entry (atomically, merged with the table already there) in the user's
    table (:func:`user_path`, or ``path``); for ``steer-eval`` to record what it selected. The
    shipped defaults are never written: ``path`` may not be :func:`shipped_path`."""
    path = Path(path) if path is not None else user_path()
    if path.resolve() == shipped_path().resolve():
        raise SteeringError(f"{path} holds the shipped defaults, which stay read-only; tuned points "
                            f"go to {user_path()} (set $EMOPROBE_HOME to move it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = load_operating_points(path) if path.is_file() else {"format": FORMAT, "models": {}}
    entry = table["models"].setdefault(point.model, {"emotions": {}})
    fingerprint = weight_fingerprint if weight_fingerprint is not None else point.weight_fingerprint
    if fingerprint is not None:
        entry["weight_fingerprint"] = fingerprint
    record = {k: v for k, v in asdict(point).items()
              if k not in ("model", "emotion", "origin", "weight_fingerprint")}
    record["layers"] = list(point.layers)
    record["source"] = portable(point.source)
    if fingerprint is not None:  # per emotion too: other emotions may come from other weights
        record["weight_fingerprint"] = fingerprint
    entry.setdefault("emotions", {})[point.emotion] = record
    atomic_write(path, json.dumps(table, indent=1) + "\n")
    return path
