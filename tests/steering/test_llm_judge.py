"""The LLM judge's prompt, label scoring, calibration and free-reply parsing (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest

from steering.judges.emotion import LABELS, JudgeError
from steering.judges.llm import CONTENT_FREE, JUDGE_PROMPT, JUDGE_SYSTEM, LLMJudge, parse_label
from steering.scoring import token_logprobs
from tests.tolerance import assert_close


def test_prompt_names_every_label_and_holds_the_text():
    for label in LABELS:
        assert label in JUDGE_PROMPT
    judge = LLMJudge.__new__(LLMJudge)  # prompts() needs no model
    judge.max_chars = 10
    (p,) = judge.prompts(["  I am furious about this!  "])
    assert '"I am furio"' in p


@pytest.mark.parametrize("reply,label", [
    ("Anger", "anger"), ("The text expresses joy.", "happiness"), ("fear.", "fear"),
    ("It sounds disgusted", "disgust"), ("None of them", "neutral"), ("Hmm, hard to say", None),
    ("", None), ("SADNESS!", "sadness"),
])
def test_parse_label(reply, label):
    assert parse_label(reply) == label


def test_label_scores_are_label_logliks(tiny_llama, one_thread):
    judge = LLMJudge(tiny_llama, calibrate=False, batch_size=2)
    texts = ["We won the final!", "The meeting is at noon.", "Someone stole my bike."]
    scores = judge.label_scores(texts)
    assert scores.shape == (3, len(LABELS))
    prompts = judge.prompts(texts[:1]) * len(LABELS)
    full = token_logprobs(tiny_llama, prompts, judge.options, system_prompt=JUDGE_SYSTEM)
    assert_close(scores[0], [float(x.sum()) for x in full])  # summed log-probs: scaled
    assert set(judge.predict(texts)) <= set(LABELS)
    assert judge.predict([]) == []


def test_calibration_centres_content_free_texts(tiny_llama, one_thread):
    raw = LLMJudge(tiny_llama, calibrate=False).label_scores(list(CONTENT_FREE))
    cal = LLMJudge(tiny_llama, calibrate=True)
    np.testing.assert_allclose(cal.label_scores(list(CONTENT_FREE)).mean(0), 0,
                               atol=1e-6 * max(1.0, float(np.abs(raw).max())))
    assert_close(cal.bias(), raw.mean(0))


def test_generate_labels_never_raises(tiny_llama, one_thread):
    got = LLMJudge(tiny_llama).generate_labels(["We won!", "Noon."], max_new_tokens=3)
    assert len(got) == 2 and all(g is None or g in LABELS for g in got)


def test_needs_a_chat_model(tiny_dir):
    from probe.models import load_model

    lm = load_model(str(tiny_dir / "gpt2"), device="cpu", dtype="float32")
    lm.tokenizer.chat_template = None
    with pytest.raises(JudgeError, match="chat model"):
        LLMJudge(lm)
    with pytest.raises(JudgeError, match="list of texts"):
        LLMJudge(load_model(str(tiny_dir / "llama"), device="cpu")).label_scores("one text")
