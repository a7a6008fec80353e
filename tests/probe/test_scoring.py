"""Batched label scoring equals the one-forward-per-label loop, for every family and SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.scoring import (
    Scores,
    ScoringError,
    score_candidates,
    score_candidates_naive,
    tokenize_candidates,
)
from probe.behaviour.templates import TEMPLATES
from probe.models import load_model
from tests.tiny import CORPUS, FAMILIES

# float32 end to end: ~1e-7 relative per operation, a few hundred operations deep; left padding
# and a copied KV cache change the summation order, never the maths.
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tiny_dir):
    return load_model(str(tiny_dir / request.param), device="cpu", dtype="float32")


def _prompts(lm, n=5, chat=True):
    template = TEMPLATES["emotion"][2]  # has an answer prefix: candidates follow words
    classes = ("anger", "sadness", "joy")
    texts = [CORPUS[i] + " " * i for i in range(n)]  # different lengths: real left padding
    strings = [template.prompt_text(lm.tokenizer, t, classes, chat_template=chat) for t in texts]
    return [lm.tokenizer(s, add_special_tokens=not chat)["input_ids"] for s in strings]


def test_batched_equals_naive_on_every_family(lm, one_thread):
    prompts = _prompts(lm)
    cands = tokenize_candidates(lm.tokenizer, [" anger", " sadness", " joy", " surprised me",
                                               " x"])
    assert len({len(c) for c in cands}) > 1, "the test needs candidates of several lengths"
    fast = score_candidates(lm, prompts, cands, batch_size=3)
    slow = score_candidates_naive(lm, prompts, cands)
    np.testing.assert_allclose(fast.logprob, slow.logprob, **TOL)
    np.testing.assert_array_equal(fast.n_tokens, slow.n_tokens)
    np.testing.assert_allclose(fast.mean, slow.logprob / slow.n_tokens, **TOL)


def test_per_prompt_candidates_and_row_budget(tiny_llama, one_thread):
    prompts = _prompts(tiny_llama, n=4, chat=False)
    tok = tiny_llama.tokenizer
    cands = [tokenize_candidates(tok, s) for s in
             ([" yes", " no"], [" the bus", " we won", " noon"], [" a"], [" someone stole", " b"])]
    fast = score_candidates(tiny_llama, prompts, cands, batch_size=4, max_rows=3)
    slow = score_candidates_naive(tiny_llama, prompts, cands)
    assert fast.logprob.shape == (4, 3)
    assert np.isnan(fast.logprob[2, 1:]).all() and (fast.n_tokens[2, 1:] == 0).all()
    np.testing.assert_allclose(fast.logprob, slow.logprob, **TOL)


def test_scoring_leaves_the_model_as_it_was(tiny_llama):
    ids = torch.tensor([_prompts(tiny_llama, n=1)[0]])
    with torch.no_grad():
        before = tiny_llama.model(ids).logits
    score_candidates(tiny_llama, _prompts(tiny_llama, n=3), [[5, 6], [7]])
    with torch.no_grad():
        after = tiny_llama.model(ids).logits
    assert torch.equal(before, after)  # the same forward on the same model: bit-identical


def test_probabilities_of_single_tokens_sum_to_one(tiny_llama):
    """Scoring every vocabulary token as a one-token candidate covers the whole distribution."""
    prompts = _prompts(tiny_llama, n=2)
    vocab = [[t] for t in range(len(tiny_llama.tokenizer))]
    s = score_candidates(tiny_llama, prompts, vocab, batch_size=2, max_rows=1024)
    np.testing.assert_allclose(np.exp(s.logprob).sum(1), 1.0, rtol=1e-4)


def test_bad_inputs_are_named(tiny_llama):
    with pytest.raises(ScoringError, match="no prompts"):
        score_candidates(tiny_llama, [], [[1]])
    with pytest.raises(ScoringError, match="at least one candidate"):
        score_candidates(tiny_llama, [[1, 2]], [[[1], []]])
    with pytest.raises(ScoringError, match="tokenizes to nothing"):
        tokenize_candidates(tiny_llama.tokenizer, ["", "a"])
    with pytest.raises(ScoringError, match="unknown scoring variant"):
        Scores(np.zeros((1, 1)), np.ones((1, 1), int)).variant("max")


@pytest.mark.slow
def test_smollm2_real_items_batched_equals_naive(one_thread):
    from probe.behaviour.recognition import encode_prompts
    from probe.data import load_dataset

    lm = load_model("smollm2-135m")
    data = load_dataset("emotion-scenarios").select(list(range(4)))
    classes = data.classes("emotion")
    template = TEMPLATES["emotion"][0]  # capitalised words at the reply start: 1-3 tokens
    prompts = encode_prompts(lm, template, data.texts, classes)
    cands = tokenize_candidates(lm.tokenizer, template.candidates(classes, after_text=False))
    assert max(map(len, cands)) > 1
    fast = score_candidates(lm, prompts, cands, batch_size=4)
    slow = score_candidates_naive(lm, prompts, cands)
    np.testing.assert_allclose(fast.logprob, slow.logprob, **TOL)


def test_a_shared_prefix_is_run_once_and_changes_no_score(lm, one_thread):
    """Prompts that open alike (a system turn, a template's first words): the opening runs once,
    every batch continues a copy of its cache, and the scores equal the naive loop's."""
    from probe.scoring import SharedPrefix

    opening = lm.tokenizer("Read this and say the emotion.",
                           add_special_tokens=False)["input_ids"]
    prompts = [opening + p for p in _prompts(lm, n=5, chat=False)]
    assert max(map(len, prompts)) < 128  # the tiny models' context
    prefix = SharedPrefix.of(lm, prompts)
    # full-attention families share; sliding-window ones (Mistral, Gemma 2/3) may keep a window
    if lm.model.config.model_type in ("llama", "qwen2", "qwen3", "gpt2"):
        assert prefix is not None, lm.model.config.model_type
    if prefix is not None:
        assert prefix.length >= len(opening)
        assert all(p[:prefix.length] == prompts[0][:prefix.length] for p in prompts)
    cands = tokenize_candidates(lm.tokenizer, [" anger", " sadness", " surprised me"])
    shared = score_candidates(lm, prompts, cands, batch_size=2)
    alone = score_candidates(lm, prompts, cands, batch_size=2, share_prefix=False)
    slow = score_candidates_naive(lm, prompts, cands)
    np.testing.assert_allclose(shared.logprob, slow.logprob, **TOL)
    np.testing.assert_allclose(shared.logprob, alone.logprob, **TOL)
    # order of batching (by length or as given) changes nothing either
    given = score_candidates(lm, prompts, cands, batch_size=2, sort_by_length=False)
    np.testing.assert_allclose(given.logprob, slow.logprob, **TOL)
