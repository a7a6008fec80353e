"""The shipped neutral prompt set: size, balance, fixed split, and its loader's errors."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from steering.eval.prompts import KINDS, PromptsError, load_prompts


def test_prompt_set_is_balanced_and_split_in_halves():
    every = load_prompts()
    assert len(every) >= 60 and len({p.text for p in every}) == len(every)
    assert Counter(p.kind for p in every) == {k: 20 for k in KINDS}
    tune, test = load_prompts("tune"), load_prompts("test")
    assert len(tune) == len(test) == len(every) // 2
    assert not {p.id for p in tune} & {p.id for p in test}
    for half in (tune, test):
        assert Counter(p.kind for p in half) == {k: 10 for k in KINDS}


def test_prompts_are_neutral_by_both_judges(judge, lexicon):
    texts = [p.text for p in load_prompts()]
    said = Counter(judge.predict(texts))
    assert said["neutral"] / len(texts) >= 0.85, said
    assert Counter(lexicon.predict(texts))["neutral"] / len(texts) >= 0.5  # NRC is noisy


def _content(text):
    stop = {"a", "an", "the", "of", "to", "in", "on", "at", "for", "and", "or", "is", "are", "do",
            "does", "how", "what", "why", "which", "you", "your", "i", "me", "my", "this", "that",
            "these", "with", "it", "be", "into", "from", "by"}
    return set(re.findall(r"[a-z]+", text.lower())) - stop


def test_training_prompts_are_balanced_neutral_and_apart_from_the_evaluation(judge, lexicon):
    train, evaluation = load_prompts("train"), load_prompts()
    assert len(train) == 96 and Counter(p.kind for p in train) == {k: 24 for k in KINDS}
    assert {p.split for p in train} == {"train"} and len({p.text for p in train}) == 96
    assert not {p.id for p in train} & {p.id for p in evaluation}
    # no training prompt is a tune or test prompt, nor a near copy of one (content words)
    worst = max(len(_content(t.text) & _content(e.text)) / len(_content(t.text) | _content(e.text))
                for t in train for e in evaluation)
    assert worst < 0.4, worst
    texts = [p.text for p in train]
    assert Counter(judge.predict(texts))["neutral"] / len(texts) >= 0.85
    assert Counter(lexicon.predict(texts))["neutral"] / len(texts) >= 0.5


def test_loader_errors(tmp_path):
    with pytest.raises(PromptsError, match="unknown split"):
        load_prompts("validation")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "q-1", "text": "hi", "kind": "question", "split": "tune"}\n'
                   '{"id": "q-1", "text": "hi again", "kind": "question", "split": "test"}\n')
    with pytest.raises(PromptsError, match=r"p.jsonl:2: .*unique id"):
        load_prompts(path=bad)
    bad.write_text("not json\n")
    with pytest.raises(PromptsError, match=r"p.jsonl:1: not a prompt"):
        load_prompts(path=bad)
