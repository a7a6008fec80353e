"""The fluency gate: degenerate text never passes, normal assistant replies do."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from steering.judges.gate import (
    GateConfig, GateError, distinct_n, gate, longest_repeat, passed, text_signals)
from tests.steering.conftest import FIXTURES
from tests.steering.degenerate import FAMILIES, synthetic


def test_repetition_measures():
    assert distinct_n("a b c d".split(), 1) == 1.0
    assert distinct_n("a a a a".split(), 2) == pytest.approx(1 / 3)
    assert distinct_n(["a"], 2) == 1.0
    assert longest_repeat("x a b c a b c a b c".split()) == 6  # period 3, repeated 3 times
    assert longest_repeat("a b c d".split()) == 0
    assert longest_repeat([]) == 0


def test_every_synthetic_degenerate_family_is_rejected(judge):
    for seed in range(3):
        texts = synthetic(seed)
        results = gate(text_signals([t for _, t in texts], judge.words))
        leaks = [(f, t[:60]) for (f, t), r in zip(texts, results) if r.passed]
        assert not leaks, leaks
    assert {f for f, _ in synthetic(0)} == set(FAMILIES)


def test_reasons_name_the_failure(judge):
    texts = ["", "!!! ??? ...", "qzvb trelk mompf dravsk", "I'm sorry, " * 15,
             "ha" * 80, "Sure! Paris is the capital of France."]
    reasons = [r.reason for r in gate(text_signals(texts, judge.words))]
    assert reasons == ["empty", "empty", "no language", "loop", "no language", None]


def test_perplexity_ceiling_is_applied_only_when_known(judge):
    text = ["the table green quickly seven of running because"]
    assert gate(text_signals(text, judge.words))[0].passed  # word salad: only perplexity sees it
    high = text_signals(text, judge.words, perplexity=[5000.0])
    assert gate(high)[0].reason == "perplexity"
    assert gate(high, GateConfig(max_perplexity=1e9))[0].passed
    ratio = text_signals(["Sure, here it is."], judge.words, perplexity=[30.0],
                         reference_perplexity=3.0)
    assert ratio[0].ppl_ratio == pytest.approx(10.0)
    assert gate(ratio)[0].passed and not gate(ratio, GateConfig(max_ppl_ratio=5.0))[0].passed


def test_errors(judge):
    with pytest.raises(GateError, match="list of texts"):
        text_signals("one text", judge.words)
    with pytest.raises(GateError, match="word list is empty"):
        text_signals(["a"], frozenset())
    with pytest.raises(GateError, match="2 perplexities for 1 texts"):
        text_signals(["a"], judge.words, perplexity=[1.0, 2.0])


def test_real_steered_replies_are_rejected(judge, steered_fixtures):
    # SmolLM2 steered at alpha 4-12 (no-break-space soup, "howeverhowever...", blank replies).
    # These were looked at while the thresholds were set: see docs/judges.md for held-out sets.
    replies = [f["reply"] for f in steered_fixtures]
    results = gate(text_signals(replies, judge.words))
    assert len(replies) >= 20 and not passed(results).any(), [
        (r.reason, t[:50]) for t, r in zip(replies, results) if r.passed]


def test_fluent_text_passes(judge, shared_data):
    from steering.judges.build import load_source

    sev = list(load_source("sev-replies", shared_data).test["text"])  # held-out half B
    rejected = ~passed(gate(text_signals(sev, judge.words)))
    assert rejected.mean() <= 0.01, Counter(r.reason for r in gate(text_signals(sev, judge.words))
                                             if not r.passed)
    rows = [json.loads(x) for x in (FIXTURES / "unsteered_test_half.jsonl").read_text().splitlines()]
    ok = passed(gate(text_signals([r["reply"] for r in rows], judge.words)))
    assert ok.mean() >= 0.95


@pytest.mark.slow
def test_full_gate_with_perplexity(smollm, judge, steered_fixtures, one_thread):
    from steering.judges.fluency import fluency_signals

    salad = "Seven the quickly because green table of running the purple under idea sleeps."
    fluent = ["Bees collect nectar from flowers and turn it into honey inside the hive.",
              "Sure! A map is a drawing of an area that shows where places are."]
    prompts = ["How do bees make honey?", "Give a one-sentence definition of a map."]
    sig = fluency_signals(smollm, [prompts[0]] + prompts, [salad] + fluent, judge.words)
    assert [r.reason for r in gate(sig)] == ["perplexity", None, None]
    few = steered_fixtures[:6]
    sig = fluency_signals(smollm, [f["prompt"] for f in few], [f["reply"] for f in few],
                          judge.words)
    assert not passed(gate(sig)).any()
    assert np.isfinite([s.perplexity for s in sig if s.n_words]).all()
