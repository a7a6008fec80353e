"""Fluency and relevance of replies under the unsteered model, and the regime of a setting.

* :func:`perplexity`: ``exp(-mean log p)`` of each reply given its prompt (chat template, the
  reply as the assistant turn), with the model *unsteered* (a plain forward).
* :func:`relevance`: how much the prompt raises the reply's likelihood, in nats per token:
  ``mean log p(reply | prompt) - mean log p(reply | empty user turn)``. Near 0: the reply could
  answer anything; a fluent on-topic reply scores well above 0.
* :func:`fluency_signals`: the gate's signals (:mod:`steering.judges.gate`) with perplexity and its
  ratio to the unsteered replies' median perplexity filled in.
* :func:`classify_regime`: one steering setting's replies -> ``works`` / ``repetitive collapse``
  / ``degraded`` from their perplexity ratio and repetition (thresholds: :class:`RegimeConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from steering.judges.gate import (
    GateConfig,
    GateResult,
    TextSignals,
    failed_checks,
    gate,
    text_signals,
)
from steering.scoring import token_logprobs

Regime = Literal["works", "repetitive collapse", "degraded"]
LOOP_REASONS = ("loop", "repetitive", "char loop")


def _mean_logprob(lps) -> np.ndarray:
    return np.array([float(lp.mean()) if len(lp) else math.nan for lp in lps])


def perplexity(lm, prompts: Sequence[str], replies: Sequence[str], *,
               chat_template: bool | None = None, system_prompt: str | None = None,
               batch_size: int = 16) -> np.ndarray:
    """Perplexity of each reply given its prompt under ``lm`` as loaded (NaN for empty replies)."""
    lps = token_logprobs(lm, prompts, replies, chat_template=chat_template,
                         system_prompt=system_prompt, batch_size=batch_size)
    return np.exp(-_mean_logprob(lps))


def relevance(lm, prompts: Sequence[str], replies: Sequence[str], *, baseline_prompt: str = "",
              chat_template: bool | None = None, batch_size: int = 16) -> np.ndarray:
    """Mean per-token log-likelihood gain of each reply from its prompt (nats/token)."""
    with_prompt = token_logprobs(lm, prompts, replies, chat_template=chat_template,
                                 batch_size=batch_size)
    without = token_logprobs(lm, [baseline_prompt] * len(replies), replies,
                             chat_template=chat_template, batch_size=batch_size)
    return _mean_logprob(with_prompt) - _mean_logprob(without)


def fluency_signals(lm, prompts: Sequence[str], replies: Sequence[str], words, *,
                    reference_perplexity: float | None = None, batch_size: int = 16,
                    chat_template: bool | None = None) -> list[TextSignals]:
    """:func:`steering.judges.gate.text_signals` with each reply's perplexity (and ratio) filled in.

    Args:
        lm: the **unsteered** model (remove steering hooks before calling this).
        prompts: the prompt of each reply.
        replies: the replies to judge.
        words: English word list (``ClassifierJudge.load().words``).
        reference_perplexity: median perplexity of unsteered replies to the same prompts
            (:func:`reference_perplexity`); enables the gate's ratio check.
        batch_size: rows per forward.
        chat_template: see :func:`steering.scoring.prompt_ids`.
    """
    ppl = perplexity(lm, prompts, replies, chat_template=chat_template, batch_size=batch_size)
    return text_signals(replies, words, perplexity=ppl, reference_perplexity=reference_perplexity)


def reference_perplexity(perplexities: Sequence[float]) -> float:
    """Median perplexity of the unsteered replies (the reference for ratios); NaNs ignored."""
    vals = np.asarray(perplexities, dtype=float)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        raise ValueError("no finite perplexity to take a reference from (all replies empty?)")
    return float(np.median(vals))


@dataclass(frozen=True, kw_only=True)
class RegimeConfig:
    """Thresholds that name a setting's regime (where they come from: docs/judges.md).

    ``repetitive collapse`` when at least ``collapse_share`` of the replies fail one of the
    gate's repetition checks (``loop``, ``repetitive``, ``char loop``); else ``degraded`` when the median perplexity ratio reaches ``degraded_ratio`` or
    at least ``degraded_fail_share`` of the replies fail the gate; else ``works``.
    """

    collapse_share: float = 0.5
    degraded_ratio: float = 3.0
    degraded_fail_share: float = 0.5


@dataclass(frozen=True, kw_only=True)
class RegimeReport:
    """A setting's regime and the numbers that decided it."""

    regime: Regime
    ppl_ratio: float
    loop_share: float
    fail_share: float
    n: int


def classify_regime(signals: Sequence[TextSignals], results: Sequence[GateResult] | None = None,
                    *, reference: float, config: RegimeConfig = RegimeConfig(),
                    gate_config: GateConfig = GateConfig()) -> RegimeReport:
    """Classify one steering setting from its replies' signals (with perplexity filled in)."""
    if not signals:
        raise ValueError("no replies in this setting")
    results = list(results) if results is not None else gate(signals, gate_config)
    ppl = np.array([s.perplexity for s in signals], dtype=float)
    finite = ppl[np.isfinite(ppl)]
    ratio = float(np.median(finite) / reference) if len(finite) else math.inf
    loop = float(np.mean([bool(set(failed_checks(s, gate_config)) & set(LOOP_REASONS))
                          for s in signals]))
    fail = float(np.mean([not r.passed for r in results]))
    if loop >= config.collapse_share:
        regime: Regime = "repetitive collapse"
    elif ratio >= config.degraded_ratio or fail >= config.degraded_fail_share:
        regime = "degraded"
    else:
        regime = "works"
    return RegimeReport(regime=regime, ppl_ratio=ratio, loop_share=loop, fail_share=fail,
                        n=len(signals))
