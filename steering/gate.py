"""The fluency gate: a degenerate reply (empty, gibberish, loops, no language) expresses nothing.

Signals per text (:func:`text_signals`, no model needed) plus, when given, the reply's perplexity
under the unsteered model and its ratio to the unsteered replies' median perplexity
(:mod:`steering.fluency`). A reply passes only if every check passes; the first failing check is
its ``reason``. Checks (thresholds in :class:`GateConfig`; where they come from: docs/judges.md):

``empty``           no word at all (empty, whitespace, only symbols or digits)
``no language``     too few of its words are English words (word list of the shipped judge)
``symbol soup``     too few of its non-space characters are letters
``loop``            a token sequence of ``max_repeat`` or more tokens occurs twice (overlaps
                    allowed, so a loop of period p repeated k times scores (k-1)p)
``repetitive``      too few distinct token bigrams (texts of 12+ tokens)
``char loop``       compresses too well (zlib; texts of 80+ characters)
``perplexity``      implausible under the unsteered model (absolute ceiling)
``perplexity ratio`` much less plausible than the unsteered replies to the same prompts

>>> from steering.judges import ClassifierJudge
>>> words = ClassifierJudge.load().words
>>> [r.reason for r in gate(text_signals(["Sure! Paris is the capital of France.",
...                                      "Mort,\\n\\n(\\n\\nganner\\n\\n roam"], words))]
[None, 'no language']
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_SUFFIXES = ("'s", "s", "es", "ed", "d", "ing", "ly", "er", "est")


class GateError(ValueError):
    """The gate cannot judge the texts as given."""


@dataclass(frozen=True, kw_only=True)
class TextSignals:
    """What the gate reads about one text (``perplexity``/``ppl_ratio`` are NaN when unknown)."""

    n_words: int
    n_tokens: int
    word_share: float
    alpha_share: float
    distinct_1: float
    distinct_2: float
    longest_repeat: int
    compress_ratio: float
    n_chars: int
    perplexity: float = math.nan
    ppl_ratio: float = math.nan


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """Thresholds of the gate (see the module docstring; measured in docs/judges.md)."""

    min_word_share: float = 0.8
    min_alpha_share: float = 0.75
    max_repeat: int = 10
    min_distinct_2: float = 0.75
    min_tokens_for_distinct: int = 12
    min_compress_ratio: float = 0.35
    min_chars_for_compress: int = 80
    max_perplexity: float = 200.0
    max_ppl_ratio: float = 6.0


@dataclass(frozen=True)
class GateResult:
    """``passed`` and, if not, the first failing check."""

    passed: bool
    reason: str | None


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams (1.0 for texts shorter than n)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def longest_repeat(tokens: Sequence[str]) -> int:
    """Length of the longest token sequence that occurs at least twice (overlaps allowed)."""
    n, best = len(tokens), 0
    for shift in range(1, n):  # compare the sequence with itself shifted: O(n^2), n is small
        run = 0
        for i in range(n - shift):
            run = run + 1 if tokens[i] == tokens[i + shift] else 0
            best = max(best, run)
    return best


def _known(word: str, words: frozenset[str]) -> bool:
    if word in words:
        return True
    return any(word.endswith(s) and len(word) > len(s) + 2 and word[:-len(s)] in words
               for s in _SUFFIXES)


def text_signals(texts: Sequence[str], words: frozenset[str] | set[str],
                 perplexity: Sequence[float] | None = None,
                 reference_perplexity: float | None = None) -> list[TextSignals]:
    """Signals of every text; ``words`` is an English word list (e.g. ``judge.words``).

    Args:
        texts: the replies.
        words: lower-case English words.
        perplexity: per reply, from :func:`steering.fluency.perplexity` (optional).
        reference_perplexity: median perplexity of the unsteered replies to the same prompts;
            gives ``ppl_ratio``.
    """
    if isinstance(texts, str):
        raise GateError("pass a list of texts, not a single string")
    if not words:
        raise GateError("the word list is empty; pass ClassifierJudge.load().words")
    if perplexity is not None and len(perplexity) != len(texts):
        raise GateError(f"{len(perplexity)} perplexities for {len(texts)} texts")
    out = []
    for i, text in enumerate(texts):
        low = text.lower()
        found = _WORD.findall(low)
        tokens = _TOKEN.findall(low)
        nonspace = [c for c in text if not c.isspace()]
        raw = text.encode("utf-8")
        ppl = float(perplexity[i]) if perplexity is not None else math.nan
        out.append(TextSignals(
            n_words=len(found), n_tokens=len(tokens),
            word_share=sum(_known(w, words) for w in found) / len(found) if found else 0.0,
            alpha_share=sum(c.isalpha() for c in nonspace) / len(nonspace) if nonspace else 0.0,
            distinct_1=distinct_n(tokens, 1), distinct_2=distinct_n(tokens, 2),
            longest_repeat=longest_repeat(tokens),
            compress_ratio=len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0,
            n_chars=len(text), perplexity=ppl,
            ppl_ratio=ppl / reference_perplexity if reference_perplexity else math.nan))
    return out


def _reason(s: TextSignals, cfg: GateConfig) -> str | None:
    checks = (
        ("empty", s.n_words == 0),
        ("no language", s.word_share < cfg.min_word_share),
        ("symbol soup", s.alpha_share < cfg.min_alpha_share),
        ("loop", s.longest_repeat >= cfg.max_repeat),
        ("repetitive", s.n_tokens >= cfg.min_tokens_for_distinct
         and s.distinct_2 < cfg.min_distinct_2),
        ("char loop", s.n_chars >= cfg.min_chars_for_compress
         and s.compress_ratio < cfg.min_compress_ratio),
        ("perplexity", s.perplexity > cfg.max_perplexity),  # NaN compares False: skipped
        ("perplexity ratio", s.ppl_ratio > cfg.max_ppl_ratio),
    )
    return next((name for name, failed in checks if failed), None)


def gate(signals: Sequence[TextSignals], config: GateConfig = GateConfig()) -> list[GateResult]:
    """Pass/fail per text, with the first failing check as the reason."""
    return [GateResult(r is None, r) for r in (_reason(s, config) for s in signals)]


def passed(results: Sequence[GateResult]) -> np.ndarray:
    """The gate's verdicts as a boolean array (for :func:`steering.judges.expression_scores`)."""
    return np.array([r.passed for r in results], dtype=bool)
