"""The neutral prompts steering is evaluated on (``datasets/steering_prompts``, shipped).

80 emotionally neutral user turns written for emoprobe, 20 of each kind (``question``,
``request``, ``small_talk``, ``instruction``), with a fixed split: ``tune`` (choose a steering
factor, a prompt, a threshold) and ``test`` (report), 10 + 10 per kind. See the CARD.md.

>>> [len(load_prompts(s)) for s in ("tune", "test")]
[40, 40]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from probe.errors import EmoprobeError

Split = Literal["tune", "test"]
KINDS = ("question", "request", "small_talk", "instruction")
_PACKAGE_DIR = Path(__file__).resolve().parents[2]


class PromptsError(EmoprobeError, ValueError):
    """The prompt set is missing or malformed."""


@dataclass(frozen=True, kw_only=True)
class NeutralPrompt:
    """One prompt: ``id`` (``<kind>-NN``), ``text``, ``kind`` and ``split``."""

    id: str
    text: str
    kind: str
    split: str


def prompts_path() -> Path:
    """``prompts.jsonl``: in the wheel (``probe/_datasets``) or in a source checkout."""
    from probe.data.loaders import shipped_file

    found = shipped_file("steering_prompts", "prompts.jsonl")
    if found is not None:
        return found
    raise PromptsError(f"steering_prompts/prompts.jsonl is missing from this installation "
                       f"(looked under {_PACKAGE_DIR}); reinstall emoprobe or pass a path")


def load_prompts(split: Split | None = None, path: str | Path | None = None) -> list[NeutralPrompt]:
    """The prompts of ``split`` (``None``: all), in file order; checks every line."""
    if split not in (None, "tune", "test"):
        raise PromptsError(f"unknown split {split!r}; choose 'tune', 'test' or None (all)")
    file = Path(path) if path is not None else prompts_path()
    out, seen = [], set()
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            p = NeutralPrompt(id=str(obj["id"]), text=str(obj["text"]), kind=obj["kind"],
                              split=obj["split"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PromptsError(f"{file}:{lineno}: not a prompt ({exc!r}); expected JSON with "
                               "id, text, kind, split") from None
        if p.kind not in KINDS or p.split not in ("tune", "test") or not p.text.strip() \
                or p.id in seen:
            raise PromptsError(f"{file}:{lineno}: prompt {p.id!r} needs a unique id, non-empty "
                               f"text, kind in {KINDS} and split 'tune' or 'test'")
        seen.add(p.id)
        out.append(p)
    if not out:
        raise PromptsError(f"{file}: no prompts")
    return [p for p in out if split is None or p.split == split]
