"""Reply and option log-likelihoods: batched equals one row at a time, equals a plain forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.scoring import ScoringError, score_candidates_naive
from steering.scoring import (
    continuation_ids, greedy_replies, option_logprobs, prompt_ids, token_logprobs)
from tests.tolerance import assert_close

PROMPTS = ["I lost my keys again today.", "We won the final!", "The meeting is at noon.", ""]
REPLIES = ["The bus left without me.", "Everyone is cheering in the street.", "",
           "Someone stole my bike."]
TOL = 1e-4  # float32 log-probs of different batch shapes


def reference(lm, prompt, reply, **kw):
    """Log-probs from one unpadded forward of the whole sequence, full logits."""
    pre = prompt_ids(lm, [prompt], **kw)[0]
    cont = continuation_ids(lm, [reply])[0]
    with torch.no_grad():
        logits = lm.model(torch.tensor([pre + cont])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    if not cont:
        return torch.zeros(0)
    return torch.stack([lp[len(pre) - 1 + k, t] for k, t in enumerate(cont)])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_equals_reference(tiny_dir, family, one_thread):
    from probe.models import load_model

    lm = load_model(str(tiny_dir / family), device="cpu", dtype="float32")
    kw = {"chat_template": False} if family == "gpt2" else {}
    if family == "gpt2":
        lm.tokenizer.chat_template = None
    got = token_logprobs(lm, PROMPTS, REPLIES, batch_size=3, **kw)
    for p, r, g in zip(PROMPTS, REPLIES, got):
        ref = reference(lm, p, r, **kw)
        assert g.shape == ref.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, ref, atol=TOL, rtol=0)
    assert len(got[2]) == 0  # empty reply


def test_option_logprobs_equal_summed_token_logprobs(tiny_llama, one_thread):
    options = [["The bus", "A long and winding answer here", "No"], ["Yes"], ["We won", "Lost"],
               ["x", "y", "z", "Someone stole my bike."]]
    got = option_logprobs(tiny_llama, PROMPTS, options, batch_size=2)
    for p, opts, g in zip(PROMPTS, options, got):
        ref = [float(token_logprobs(tiny_llama, [p], [o])[0].sum()) for o in opts]
        np.testing.assert_allclose(g, ref, atol=TOL * 10, rtol=0)


def test_option_logprobs_are_the_label_scorer_of_probe(tiny_llama, one_thread):
    """One label scorer: steering's options go through probe.scoring.score_candidates, whose
    reference is one plain forward per (prompt, option); the chat template's shared system turn
    is run once (shared prefix) and prompts have different numbers of options."""
    prompts = ["I lost my keys again today.", "We won the final!", "Noon."]
    options = [["Anger", "Sad", "A long and winding answer"], ["Joy"], ["x", "Someone stole it."]]
    got = option_logprobs(tiny_llama, prompts, options, system_prompt="Name the emotion.",
                          batch_size=2)
    ids = prompt_ids(tiny_llama, prompts, system_prompt="Name the emotion.")
    ref = score_candidates_naive(tiny_llama, ids, [continuation_ids(tiny_llama, o) for o in options])
    assert [len(g) for g in got] == [3, 1, 2]
    for g, r in zip(got, ref.rows()):
        assert_close(g, r)
    assert option_logprobs(tiny_llama, [], []) == []


def test_prompt_uses_chat_template_and_system_prompt(tiny_llama):
    plain = prompt_ids(tiny_llama, ["hello"])[0]
    system = prompt_ids(tiny_llama, ["hello"], system_prompt="be brief")[0]
    text = tiny_llama.tokenizer.decode(system)
    assert "<|system|>be brief" in text and text.endswith("<|assistant|>")
    assert len(system) > len(plain)
    bos = tiny_llama.tokenizer.bos_token_id
    assert prompt_ids(tiny_llama, [""], chat_template=False)[0] == [bos]


def test_errors_say_what_to_fix(tiny_llama, tiny_dir):
    with pytest.raises(ScoringError, match="2 prompts but 1 replies"):
        token_logprobs(tiny_llama, ["a", "b"], ["c"])
    with pytest.raises(ScoringError, match="option 1 of prompt 0 is empty"):
        option_logprobs(tiny_llama, ["a"], [["x", ""]])
    with pytest.raises(ScoringError, match="system_prompt needs the chat template"):
        prompt_ids(tiny_llama, ["a"], chat_template=False, system_prompt="s")
    from probe.models import load_model

    gpt2 = load_model(str(tiny_dir / "gpt2"), device="cpu", dtype="float32")
    gpt2.tokenizer.chat_template = None
    with pytest.raises(ScoringError, match="no chat template"):
        prompt_ids(gpt2, ["a"], chat_template=True)


def test_greedy_replies_keep_input_order(tiny_llama, one_thread):
    batched = greedy_replies(tiny_llama, PROMPTS[:3], max_new_tokens=4, batch_size=2)
    single = [greedy_replies(tiny_llama, [p], max_new_tokens=4)[0] for p in PROMPTS[:3]]
    assert len(batched) == 3 and all(isinstance(r, str) for r in batched)
    # Greedy choices can flip on near-ties between batch shapes; most must agree.
    assert sum(a == b for a, b in zip(batched, single)) >= 2


@pytest.mark.slow
def test_smollm2_batched_equals_single(smollm, one_thread):
    prompts = ["What is the capital of France?", "Tell me a joke.", "hi"]
    replies = ["The capital of France is Paris.", "Why did the chicken cross the road?", "Hello!"]
    batched = token_logprobs(smollm, prompts, replies, batch_size=3)
    for p, r, b in zip(prompts, replies, batched):
        torch.testing.assert_close(b, token_logprobs(smollm, [p], [r])[0], atol=TOL, rtol=0)
