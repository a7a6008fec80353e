"""Free generation and the parser that maps a reply to a class (coverage reported).

:func:`generate` continues prompts greedily, batched with left padding (``generate`` derives
position ids from the mask). :func:`parse_answer` finds the earliest class name or synonym in
a reply (``"I think the person is scared."`` -> ``fear``); a reply that names none is
*unparsed* and counts against coverage, never as a guess. Ratings parse the first digit 1-5.

>>> parse_answer("The person feels scared and alone.", ("anger", "fear", "sadness"))
'fear'
>>> parse_answer("It is hard to say.", ("anger", "fear")) is None
True
>>> parse_rating("I'd say 4 out of 5.")
'4'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from probe.capture import pad_batch

#: Words that name each emotion concept (lowercase). A class is matched by its own name and by
#: the words of its concept; classes are mapped to concepts by :data:`CLASS_CONCEPTS`.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "anger": ("anger", "angry", "mad", "furious", "annoyed", "annoyance", "irritated",
              "irritation", "rage", "outraged", "frustrated", "frustration", "resentment"),
    "sadness": ("sadness", "sad", "unhappy", "unhappiness", "sorrow", "grief", "depressed",
                "depression", "disappointed", "disappointment", "heartbroken", "melancholy",
                "loneliness", "lonely"),
    "joy": ("joy", "joyful", "happiness", "happy", "glad", "delighted", "delight", "pleased",
            "cheerful", "excited", "excitement", "elated", "relief", "relieved", "content",
            "contentment", "gratitude", "grateful", "pride", "proud", "amusement"),
    "fear": ("fear", "afraid", "scared", "fearful", "anxious", "anxiety", "terrified",
             "worried", "worry", "nervous", "nervousness", "panic", "dread"),
    "surprise": ("surprise", "surprised", "shocked", "shock", "astonished", "astonishment",
                 "amazed", "amazement", "unexpected"),
    "disgust": ("disgust", "disgusted", "disgusting", "gross", "revolted", "repulsed",
                "revulsion", "repulsion"),
    "love": ("love", "loving", "affection", "affectionate", "romantic", "adoration", "tender"),
    "neutral": ("neutral", "no emotion", "no particular emotion", "indifferent", "neutrality"),
    "positive": ("positive",),
    "negative": ("negative",),
}
CLASS_CONCEPTS = {"happiness": "joy", "happy": "joy", "sad": "sadness", "angry": "anger",
                  "fearful": "fear", "surprised": "surprise", "disgusted": "disgust"}


def class_words(classes: Sequence[str]) -> dict[str, str]:
    """``{word: class}`` for every class name and the synonyms of its concept.

    When two classes share a concept (e.g. ``joy`` and ``happiness`` in one label set), each
    keeps its own name and the first keeps the shared synonyms.
    """
    words: dict[str, str] = {c.lower(): c for c in classes}
    for c in classes:
        concept = CLASS_CONCEPTS.get(c.lower(), c.lower())
        for w in SYNONYMS.get(concept, ()):
            words.setdefault(w, c)
    return words


def parse_answer(reply: str, classes: Sequence[str]) -> str | None:
    """The class named earliest in ``reply`` (longest word on ties), or None."""
    words = class_words(classes)
    pattern = r"(?<![a-z])(" + "|".join(
        re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")(?![a-z])"
    m = re.search(pattern, reply.lower())
    return words[m.group(1)] if m else None


def parse_rating(reply: str, levels: Sequence[str] = ("1", "2", "3", "4", "5")) -> str | None:
    """The first standalone rating digit in ``reply``, or None."""
    m = re.search(r"(?<![\d.])(" + "|".join(map(re.escape, levels)) + r")(?!\d|\.\d)", reply)
    return m.group(1) if m else None


@torch.inference_mode()
def generate(lm, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 8,
             batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens.

    Args:
        lm: A :class:`probe.models.LoadedModel`.
        prompts: Token ids of each prompt.
        max_new_tokens: Tokens generated per prompt (at most).
        batch_size: Prompts per batch (left-padded).
        progress: Show a progress bar.
    """
    from tqdm.auto import tqdm

    tok = lm.tokenizer
    stops = [t for t in {tok.eos_token_id, tok.pad_token_id} if t is not None]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # little padding
    out: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch",
                      disable=not progress, dynamic_ncols=True):
        idx = order[start:start + batch_size]
        inputs = pad_batch([prompts[i] for i in idx], tok.pad_token_id, "left", lm.device)
        inputs.pop("position_ids")  # generate derives them from the mask, step by step
        new = lm.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=tok.pad_token_id, eos_token_id=stops,
                                temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(idx):
            out[i] = tok.decode(new[row, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return out
