"""Perplexity and relevance under the unsteered model; regimes of a steering setting."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from steering.judges.fluency import (
    RegimeConfig, classify_regime, fluency_signals, perplexity, reference_perplexity, relevance)
from steering.judges.gate import text_signals
from steering.scoring import token_logprobs

WORDS = frozenset("the a is of and to in it cat sat on mat dog ran park sun warm today".split())


def test_perplexity_is_exp_mean_nll(tiny_llama, one_thread):
    prompts, replies = ["hello", "the meeting"], ["We won the final!", ""]
    ppl = perplexity(tiny_llama, prompts, replies, batch_size=2)
    lp = token_logprobs(tiny_llama, prompts[:1], replies[:1])[0]
    assert ppl[0] == pytest.approx(math.exp(-float(lp.mean())), rel=1e-5)
    assert math.isnan(ppl[1])  # empty reply: no tokens, no perplexity


def test_fluency_signals_fill_perplexity_and_ratio(tiny_llama, one_thread):
    sig = fluency_signals(tiny_llama, ["hi", "hi"], ["the cat sat", "the dog ran"], WORDS,
                          reference_perplexity=10.0)
    ppl = perplexity(tiny_llama, ["hi", "hi"], ["the cat sat", "the dog ran"])
    assert [s.perplexity for s in sig] == pytest.approx(list(ppl))
    assert [s.ppl_ratio for s in sig] == pytest.approx(list(ppl / 10.0))


def test_reference_perplexity_ignores_nan():
    assert reference_perplexity([2.0, float("nan"), 4.0, 3.0]) == 3.0
    with pytest.raises(ValueError, match="no finite perplexity"):
        reference_perplexity([float("nan")])


def _signals(texts, ppl):
    return text_signals(texts, WORDS, perplexity=[ppl] * len(texts))


def test_regimes():
    fluent = ["the cat sat on the mat", "the dog ran in the park", "the sun is warm today"]
    works = classify_regime(_signals(fluent, 5.0), reference=4.0)
    assert works.regime == "works" and works.ppl_ratio == pytest.approx(1.25)
    loops = ["the cat " * 20, "sat on " * 20, "the mat"]
    collapse = classify_regime(_signals(loops, 1.2), reference=4.0)
    assert collapse.regime == "repetitive collapse" and collapse.loop_share == pytest.approx(2 / 3)
    degraded = classify_regime(_signals(fluent, 40.0), reference=4.0)
    assert degraded.regime == "degraded" and degraded.loop_share == 0
    cfg = RegimeConfig(degraded_ratio=20.0)
    assert classify_regime(_signals(fluent, 40.0), reference=4.0, config=cfg).regime == "works"
    no_ppl = [dataclasses.replace(s, perplexity=float("nan")) for s in _signals(fluent, 1.0)]
    assert classify_regime(no_ppl, reference=4.0).ppl_ratio == math.inf
    with pytest.raises(ValueError, match="no replies"):
        classify_regime([], reference=4.0)


@pytest.mark.slow
def test_relevance_rewards_the_reply_to_its_own_prompt(smollm, one_thread):
    prompts = ["What is the capital of France?", "How do bees make honey?",
               "Explain how to boil an egg."]
    replies = ["The capital of France is Paris.",
               "Bees collect nectar from flowers and store it in the hive, where it thickens "
               "into honey.",
               "Put the egg in boiling water and cook it for about eight minutes."]
    matched = relevance(smollm, prompts, replies)
    swapped = relevance(smollm, prompts[1:] + prompts[:1], replies)
    assert np.all(matched > 0) and np.all(matched > swapped + 0.2), (matched, swapped)


def test_real_loops_are_a_collapse_whatever_check_fails_first(judge, steered_fixtures):
    # "howeverhowever..." fails "no language" first; the regime still sees the loop in it.
    loops = [f["reply"] for f in steered_fixtures if f["reply"].startswith("howeverhowever")]
    sig = text_signals(loops, judge.words, perplexity=[3.0] * len(loops))
    assert loops and classify_regime(sig, reference=2.0).regime == "repetitive collapse"
