"""Capability damage: a small multiple-choice task set scored by log-likelihood, batched.

``datasets/capability_mc/items.jsonl`` (shipped as ``probe/_datasets/capability_mc``) holds
arithmetic, common-sense and reading-comprehension items with 2-4 options each. Two scorings:

``letter``  the options are listed as A., B., C. ... in the user turn; the answer is the letter
            with the highest log-probability as the first reply token (one forward per item).
``text``    the options are not shown; the reply starts with the item's ``answer_stem`` (e.g.
            ``"2 + 3 is"``; empty for most items) and each option is scored by the total
            log-probability of its tokens after it (cloze scoring).

Run it unsteered for the baseline and under each steering setting (inside the steering context)
to measure damage; :func:`evaluate_capability` reports accuracy with a bootstrap CI and chance.

>>> items = load_items()
>>> len(items) >= 100
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from probe.errors import EmoprobeError
from probe.scoring import score_candidates
from steering.scoring import continuation_ids, option_logprobs, prompt_ids

Scoring = Literal["letter", "text"]
KINDS = ("arithmetic", "common_sense", "reading")
LETTERS = "ABCD"
_PACKAGE_DIR = Path(__file__).resolve().parents[2]


class CapabilityError(EmoprobeError, ValueError):
    """The task set is malformed or cannot be scored as asked."""


@dataclass(frozen=True, kw_only=True)
class MCItem:
    """One multiple-choice item; ``answer`` indexes ``options``."""

    id: str
    kind: str
    question: str
    options: tuple[str, ...]
    answer: int
    passage: str | None = None
    answer_stem: str = ""

    def prompt(self, scoring: Scoring) -> str:
        """The user turn for ``scoring``."""
        head = f"{self.passage}\n\n" if self.passage else ""
        if scoring == "text":
            return f"{head}{self.question}"
        listed = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(self.options))
        return (f"{head}{self.question}\n{listed}\n"
                "Answer with the letter of the correct option only.")


def items_path() -> Path:
    """``items.jsonl``: in the wheel (``probe/_datasets``) or in a source checkout."""
    from probe.data.loaders import shipped_file

    found = shipped_file("capability_mc", "items.jsonl")
    if found is not None:
        return found
    raise CapabilityError(f"capability_mc/items.jsonl is missing from this installation (looked "
                          f"under {_PACKAGE_DIR}); reinstall emoprobe or pass a path")


def load_items(path: str | Path | None = None) -> list[MCItem]:
    """Read and check the task set (JSONL: id, kind, question, options, answer[, passage])."""
    file = Path(path) if path is not None else items_path()
    items, seen = [], set()
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            obj = json.loads(line)
            item = MCItem(id=str(obj["id"]), kind=obj["kind"], question=obj["question"],
                          options=tuple(obj["options"]), answer=int(obj["answer"]),
                          passage=obj.get("passage"), answer_stem=obj.get("answer_stem", ""))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CapabilityError(f"{where}: not a valid item ({exc!r}); expected JSON with id, "
                                  "kind, question, options, answer") from None
        if item.kind not in KINDS or not 2 <= len(item.options) <= len(LETTERS) \
                or not 0 <= item.answer < len(item.options) or item.id in seen \
                or len(set(item.options)) != len(item.options) or not all(item.options):
            raise CapabilityError(f"{where}: item {item.id!r} needs a kind in {KINDS}, 2-4 "
                                  "distinct non-empty options, an answer index among them and "
                                  "a unique id")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise CapabilityError(f"{file}: no items")
    return items


def option_scores(lm, items: Sequence[MCItem], *, scoring: Scoring = "text",
                  batch_size: int = 16) -> list[np.ndarray]:
    """Per item, one score per option (higher = preferred); see the module docstring."""
    if scoring == "letter":
        letters = [list(LETTERS[:len(it.options)]) for it in items]
        return option_logprobs(lm, [it.prompt("letter") for it in items], letters,
                               batch_size=batch_size)
    if scoring != "text":
        raise CapabilityError(f"unknown scoring {scoring!r}; choose 'letter' or 'text'")
    ids = prompt_ids(lm, [it.prompt("text") for it in items])
    stems = continuation_ids(lm, [it.answer_stem for it in items])
    options = [continuation_ids(lm, [f" {o}" if it.answer_stem else o for o in it.options])
               for it in items]
    return score_candidates(lm, [p + s for p, s in zip(ids, stems)], options,
                            batch_size=batch_size).rows()


@dataclass(frozen=True, kw_only=True)
class CapabilityResult:
    """Accuracy on the task set, its bootstrap CI, chance, and per-kind accuracy."""

    scoring: str
    accuracy: float
    ci_low: float
    ci_high: float
    chance: float
    by_kind: dict[str, float]
    n: int
    correct: tuple[bool, ...]


def evaluate_capability(lm, items: Sequence[MCItem] | None = None, *, scoring: Scoring = "text",
                        batch_size: int = 16, n_boot: int = 2000,
                        seed: int = 0) -> CapabilityResult:
    """Score every item; accuracy (95% bootstrap CI over items) against chance (mean 1/options)."""
    items = list(items) if items is not None else load_items()
    scores = option_scores(lm, items, scoring=scoring, batch_size=batch_size)
    correct = np.array([int(np.argmax(s)) == it.answer for s, it in zip(scores, items)])
    idx = np.random.default_rng(seed).integers(0, len(items), size=(n_boot, len(items)))
    lo, hi = np.quantile(correct[idx].mean(axis=1), [0.025, 0.975])
    kinds = [it.kind for it in items]
    by_kind = {k: float(correct[[x == k for x in kinds]].mean()) for k in KINDS if k in kinds}
    return CapabilityResult(scoring=scoring, accuracy=float(correct.mean()), ci_low=float(lo),
                            ci_high=float(hi), chance=float(np.mean([1 / len(it.options)
                                                                     for it in items])),
                            by_kind=by_kind, n=len(items), correct=tuple(bool(c) for c in correct))
