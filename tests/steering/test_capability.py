"""The multiple-choice capability set: well-formed, balanced, scored by log-likelihood."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from steering.eval.capability import (
    KINDS, CapabilityError, MCItem, evaluate_capability, load_items, option_scores)
from steering.scoring import token_logprobs
from tests.tolerance import assert_close


def test_item_set_is_well_formed_and_balanced():
    items = load_items()
    assert len(items) >= 100
    assert Counter(it.kind for it in items) == {k: 40 for k in KINDS}
    positions = Counter(it.answer for it in items)
    assert len(positions) == 3 and min(positions.values()) >= 30  # the answer is not always A
    assert all(2 <= len(it.options) <= 4 for it in items)
    assert all(it.passage for it in items if it.kind == "reading")
    assert len({(it.passage, it.question) for it in items}) == len(items)


def test_prompts():
    it = MCItem(id="x", kind="reading", question="Where?", options=("here", "there"), answer=0,
                passage="Tom is here.")
    assert it.prompt("letter") == ("Tom is here.\n\nWhere?\nA. here\nB. there\n"
                                   "Answer with the letter of the correct option only.")
    assert it.prompt("text") == "Tom is here.\n\nWhere?"


@pytest.mark.parametrize("scoring", ["letter", "text"])
def test_scores_on_a_tiny_model(tiny_llama, scoring, one_thread):
    items = load_items()[::20]
    scores = option_scores(tiny_llama, items, scoring=scoring, batch_size=2)
    assert [len(s) for s in scores] == [len(it.options) for it in items]
    assert all(np.all(s < 0) for s in scores)
    res = evaluate_capability(tiny_llama, items, scoring=scoring, n_boot=200)
    assert res.n == len(items) and res.ci_low <= res.accuracy <= res.ci_high
    assert res.chance == pytest.approx(np.mean([1 / len(it.options) for it in items]))


def test_text_scoring_is_the_options_loglik_after_the_stem(tiny_llama):
    it = MCItem(id="a", kind="arithmetic", question="What is 2 + 3?", options=("5", "6"),
                answer=0, answer_stem="2 + 3 is")
    (got,) = option_scores(tiny_llama, [it], scoring="text")
    full = token_logprobs(tiny_llama, [it.prompt("text")] * 2, ["2 + 3 is 5", "2 + 3 is 6"])
    stem = len(tiny_llama.tokenizer("2 + 3 is", add_special_tokens=False)["input_ids"])
    assert_close(got, [float(lp[stem:].sum()) for lp in full])  # summed log-probs: scaled


def test_loader_errors(tmp_path):
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"id": "a", "kind": "arithmetic", "question": "1+1?", "options": ["2"], '
                   '"answer": 0}\n')
    with pytest.raises(CapabilityError, match=r"items.jsonl:1: .*2-4"):
        load_items(bad)
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(CapabilityError, match=r"items.jsonl:1: not a valid item"):
        load_items(bad)
    with pytest.raises(CapabilityError, match="unknown scoring"):
        option_scores(None, [], scoring="guess")


@pytest.mark.slow
def test_smollm2_is_well_above_chance(smollm, one_thread):
    items = [it for k in KINDS for it in [x for x in load_items() if x.kind == k][:8]]
    res = evaluate_capability(smollm, items, n_boot=200)
    assert res.accuracy >= res.chance + 0.2, res
