"""Free generation (left-padded, batched) and the reply parser."""

from __future__ import annotations

import pytest
import torch

from probe.behaviour.generation import class_words, generate, parse_answer, parse_rating
from tests.tiny import CORPUS

EKMAN = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


@pytest.mark.parametrize("reply, expected", [
    ("Joy.", "joy"),
    ("The person feels scared, maybe angry too.", "fear"),  # earliest mention wins
    ("I'd say they are furious", "anger"),
    ("Unhappy, clearly.", "sadness"),  # not "happy" inside "unhappy"
    ("This is madness", None),  # not "mad" inside "madness"
    ("There is no emotion here.", "neutral"),
    ("Hard to tell from one line.", None),
    ("DISGUSTED", "disgust"),
])
def test_parse_answer(reply, expected):
    assert parse_answer(reply, EKMAN) == expected


def test_class_names_map_to_shared_concepts():
    words = class_words(("happiness", "sadness", "neutral"))
    assert words["happy"] == "happiness" and words["joyful"] == "happiness"
    assert words["happiness"] == "happiness"
    both = class_words(("joy", "happiness"))  # two names of one concept keep their own names
    assert both["joy"] == "joy" and both["happiness"] == "happiness"
    assert parse_answer("positive overall", ("positive", "negative", "neutral")) == "positive"


@pytest.mark.parametrize("reply, expected", [
    ("4", "4"), ("I would rate it 2 out of 5.", "2"), ("Rating: 5", "5"), ("3.5", None),
    ("10", None), ("none", None)])
def test_parse_rating(reply, expected):
    assert parse_rating(reply) == expected


@torch.inference_mode()
def _greedy_unpadded(lm, ids, steps):
    """Reference: greedy decoding of one prompt, no padding; also each step's top-2 margin."""
    ids, out, margins = list(ids), [], []
    for _ in range(steps):
        logits = lm.model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 2).values
        margins.append(float(top[0] - top[1]))
        nxt = int(logits.argmax())
        out.append(nxt)
        ids.append(nxt)
        if nxt in (lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id):
            break
    return out, margins


def test_batched_generation_follows_greedy_decoding(tiny_dir, one_thread):
    """Left padding with positions from the mask: batched greedy equals unpadded greedy (up to a
    near tie, after which float noise may pick the other token)."""
    from probe.models import load_model

    for family in ("llama", "gpt2"):  # GPT-2 is the family where default positions break
        lm = load_model(str(tiny_dir / family), device="cpu", dtype="float32")
        prompts = [lm.tokenizer(t)["input_ids"] for t in CORPUS[:4]]
        got = generate(lm, prompts, max_new_tokens=4, batch_size=4)
        for p, text in zip(prompts, got):
            ref, margins = _greedy_unpadded(lm, p, 4)
            sure = next((i for i, m in enumerate(margins) if m < 1e-3), len(ref))
            expected = lm.tokenizer.decode(ref[:sure], skip_special_tokens=True)
            assert text.startswith(expected), (family, text, expected)
            assert sure > 0
