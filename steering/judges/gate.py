"""The fluency gate: a degenerate reply (empty, gibberish, loops, no language) expresses nothing.

Signals per text (:func:`text_signals`, no model needed) plus, when given, the reply's perplexity
under the unsteered model and its ratio to the unsteered replies' median perplexity
(:mod:`steering.judges.fluency`). A reply passes only if every check passes; the first failing check is
its ``reason``. Checks (thresholds in :class:`GateConfig`; where they come from: docs/judges.md):

``empty``           no word at all (empty, whitespace, only symbols, digits or emoji)
``no language``     too few of its words are English words (word list of the shipped judge)
``symbol soup``     too few of its characters other than plain blanks (space, newline, tab) are
                    letters or digits: punctuation, emoji and unusual spaces (no-break spaces,
                    a failure mode of steered models) count against it
``loop``            too many of its token 4-grams already occurred earlier in the text, or a
                    run of ``max_repeat`` tokens occurs twice (overlaps allowed: a loop of
                    period p repeated k times scores (k-1)p)
``repetitive``      too few distinct tokens (``"no no no"``, too short to have 4-grams)
``char loop``       compresses too well (zlib; texts of 80+ characters)
``perplexity``      implausible under the unsteered model (absolute ceiling)
``perplexity ratio`` much less plausible than the unsteered replies to the same prompts (off
                    by default: fluent emotional text is far less likely than the unsteered
                    model's own greedy replies; the ratio serves ``classify_regime``)

>>> from steering.judges.emotion import ClassifierJudge
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

from probe.errors import EmoprobeError

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_BLANKS = frozenset(" \n\r\t")
_SUFFIXES = ("'s", "s", "es", "ed", "d", "ing", "ly", "er", "est")


class GateError(EmoprobeError, ValueError):
    """The gate cannot judge the texts as given."""


@dataclass(frozen=True, kw_only=True)
class TextSignals:
    """What the gate reads about one text (``perplexity``/``ppl_ratio`` are NaN when unknown)."""

    n_words: int
    n_tokens: int
    word_share: float
    alnum_share: float
    distinct_1: float
    distinct_2: float
    repeat_share: float
    longest_repeat: int
    compress_ratio: float
    n_chars: int
    perplexity: float = math.nan
    ppl_ratio: float = math.nan


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """Thresholds of the gate (see the module docstring; measured in docs/judges.md)."""

    min_word_share: float = 0.7
    min_alnum_share: float = 0.7
    max_repeat_share: float = 0.25
    max_repeat: int = 20
    min_distinct_1: float = 0.3
    min_tokens_for_distinct: int = 3
    min_compress_ratio: float = 0.35
    min_chars_for_compress: int = 80
    max_perplexity: float = 100.0
    max_ppl_ratio: float | None = None  # off: a fluent reply in a new style has a high ratio


@dataclass(frozen=True)
class GateResult:
    """``passed`` and, if not, the first failing check."""

    passed: bool
    reason: str | None


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams (1.0 for texts shorter than n)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeat_share(tokens: Sequence[str], n: int = 4) -> float:
    """Share of the text's n-grams that already occurred earlier in it (0 if it has none)."""
    seen, repeated = set(), 0
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        repeated += gram in seen
        seen.add(gram)
    return repeated / (len(tokens) - n + 1) if len(tokens) >= n else 0.0


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
        perplexity: per reply, from :func:`steering.judges.fluency.perplexity` (optional).
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
        nonspace = [c for c in text if c not in _BLANKS]
        raw = text.encode("utf-8")
        ppl = float(perplexity[i]) if perplexity is not None else math.nan
        out.append(TextSignals(
            n_words=len(found), n_tokens=len(tokens),
            word_share=sum(_known(w, words) for w in found) / len(found) if found else 0.0,
            alnum_share=sum(c.isalnum() for c in nonspace) / len(nonspace) if nonspace else 0.0,
            distinct_1=distinct_n(tokens, 1), distinct_2=distinct_n(tokens, 2),
            repeat_share=repeat_share(tokens), longest_repeat=longest_repeat(tokens),
            compress_ratio=len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0,
            n_chars=len(text), perplexity=ppl,
            ppl_ratio=ppl / reference_perplexity if reference_perplexity else math.nan))
    return out


def failed_checks(s: TextSignals, cfg: GateConfig = GateConfig()) -> list[str]:
    """Every check ``s`` fails, in the order of the module docstring (empty: it passes)."""
    checks = (
        ("empty", s.n_words == 0),
        ("no language", s.word_share < cfg.min_word_share),
        ("symbol soup", s.alnum_share < cfg.min_alnum_share),
        ("loop", s.repeat_share >= cfg.max_repeat_share or s.longest_repeat >= cfg.max_repeat),
        ("repetitive", s.n_tokens >= cfg.min_tokens_for_distinct
         and s.distinct_1 < cfg.min_distinct_1),
        ("char loop", s.n_chars >= cfg.min_chars_for_compress
         and s.compress_ratio < cfg.min_compress_ratio),
        ("perplexity", s.perplexity > cfg.max_perplexity),  # NaN compares False: skipped
        ("perplexity ratio", cfg.max_ppl_ratio is not None and s.ppl_ratio > cfg.max_ppl_ratio),
    )
    return [name for name, failed in checks if failed]


def gate(signals: Sequence[TextSignals], config: GateConfig = GateConfig()) -> list[GateResult]:
    """Pass/fail per text, with the first failing check as the reason."""
    return [GateResult(not f, f[0] if f else None)
            for f in (failed_checks(s, config) for s in signals)]


def passed(results: Sequence[GateResult]) -> np.ndarray:
    """The gate's verdicts as a boolean array (for :func:`steering.judges.emotion.expression_scores`)."""
    return np.array([r.passed for r in results], dtype=bool)
