"""The neutral prompts steering is evaluated on (``datasets/steering_prompts``, shipped).

80 emotionally neutral user turns written for emoprobe, 20 of each kind (``question``,
``request``, ``small_talk``, ``instruction``), with a fixed split: ``tune`` (choose a steering
factor, a prompt, a threshold) and ``test`` (report), 10 + 10 per kind. See the CARD.md.
``train.jsonl`` holds 96 more of the same kinds (24 each, split ``train``) for *training*
steering vectors on prompts like the ones steering is judged on, never used to select or report
(each shares at most a third of its content words with any tune or test prompt: tested).

>>> [len(load_prompts(s)) for s in ("tune", "test", "train")]
[40, 40, 96]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from probe.errors import EmoprobeError

Split = Literal["tune", "test", "train"]
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


def prompts_path(name: str = "prompts.jsonl") -> Path:
    """``prompts.jsonl`` (or ``train.jsonl``): in the wheel (``probe/_datasets``) or in a source
    checkout."""
    from probe.data.loaders import shipped_file

    found = shipped_file("steering_prompts", name)
    if found is not None:
        return found
    raise PromptsError(f"steering_prompts/{name} is missing from this installation "
                       f"(looked under {_PACKAGE_DIR}); reinstall emoprobe or pass a path")


def load_prompts(split: Split | None = None, path: str | Path | None = None) -> list[NeutralPrompt]:
    """The prompts of ``split`` (``None``: tune and test), in file order; checks every line.
    ``"train"`` reads ``train.jsonl`` (prompts for training vectors, never for selecting or
    reporting)."""
    if split not in (None, "tune", "test", "train"):
        raise PromptsError(f"unknown split {split!r}; choose 'tune', 'test', 'train' or None "
                           "(tune and test)")
    file = Path(path) if path is not None else prompts_path(
        "train.jsonl" if split == "train" else "prompts.jsonl")
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
        if p.kind not in KINDS or p.split not in ("tune", "test", "train") or not p.text.strip() \
                or p.id in seen:
            raise PromptsError(f"{file}:{lineno}: prompt {p.id!r} needs a unique id, non-empty "
                               f"text, kind in {KINDS} and split 'tune', 'test' or 'train'")
        seen.add(p.id)
        out.append(p)
    if not out:
        raise PromptsError(f"{file}: no prompts")
    return [p for p in out if split is None or p.split == split]
