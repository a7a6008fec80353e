"""Stories the model writes about a character feeling an emotion, the emotion word withheld.

Anthropic's recipe (2026): ask the model for short stories in which a character feels each
emotion without naming it, and read the emotion vectors from those stories (from the 50th token
on). Prompts cross the emotion with a few settings so greedy decoding still gives distinct
stories; decoding is greedy (reproducible) with a repetition penalty against loops.

A story that uses the emotion word anyway (or a form of it: :func:`forbidden_words`) is
dropped and counted, never silently kept. Stories are cached as ``stories.jsonl`` in the run
folder; ``--stories FILE`` reuses such a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from steering.geometry.features import GeometryError

SETTINGS = (
    "at work",
    "at a family dinner",
    "on a long train journey",
    "at school",
    "in a hospital waiting room",
    "at home on a rainy evening",
    "with an old friend",
    "in a busy city street",
    "at a wedding",
    "on the first day of a new job",
)
PROMPT = (
    "Write a short story of about six sentences about a character {setting} who feels "
    "{emotion}. Show the feeling through what the character does, thinks and notices. "
    'Never use the word "{emotion}" or any form of it.'
)
#: Word forms a story may not contain besides the label itself (matched as word prefixes).
FORMS = {
    "admiration": ("admir",),
    "amusement": ("amus",),
    "anger": ("anger", "angr"),
    "annoyance": ("annoy",),
    "approval": ("approv",),
    "caring": ("caring",),
    "confusion": ("confus",),
    "curiosity": ("curios", "curious"),
    "desire": ("desir",),
    "disappointment": ("disappoint",),
    "disapproval": ("disapprov",),
    "disgust": ("disgust",),
    "embarrassment": ("embarrass",),
    "excitement": ("excit",),
    "fear": ("fear", "afraid", "scared"),
    "gratitude": ("gratitud", "grateful"),
    "grief": ("grief", "griev"),
    "joy": ("joy",),
    "love": ("love", "loving"),
    "nervousness": ("nervous",),
    "optimism": ("optimis",),
    "pride": ("pride", "proud"),
    "realization": ("realiz", "realis"),
    "relief": ("relie",),
    "remorse": ("remorse",),
    "sadness": ("sad",),
    "surprise": ("surpris",),
    "happiness": ("happ",),
    "neutral": (),
}


@dataclass(frozen=True)
class Story:
    emotion: str
    setting: str
    prompt: str
    text: str
    withheld: bool  # True: no form of the emotion word in the text


def forbidden_words(emotion: str) -> tuple[str, ...]:
    """Word prefixes that name ``emotion`` (its label plus :data:`FORMS`)."""
    e = emotion.lower()
    return tuple(dict.fromkeys((e, *FORMS.get(e, ()))))


def names_emotion(text: str, emotion: str) -> bool:
    """Whether ``text`` contains a word starting with a form of ``emotion``."""
    pattern = r"\b(?:" + "|".join(map(re.escape, forbidden_words(emotion))) + r")"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def story_prompts(emotions: Sequence[str], per_emotion: int) -> list[tuple[str, str, str]]:
    """``(emotion, setting, prompt)`` for each emotion and its first ``per_emotion`` settings."""
    if not 1 <= per_emotion <= len(SETTINGS):
        raise GeometryError(f"stories per emotion must be 1-{len(SETTINGS)}, got {per_emotion}")
    return [
        (e, s, PROMPT.format(setting=s, emotion=e))
        for e in emotions
        for s in SETTINGS[:per_emotion]
    ]


def write_stories(
    lm,
    emotions: Sequence[str],
    *,
    per_emotion: int = 2,
    max_new_tokens: int = 160,
    batch_size: int = 32,
    log: Callable[[str], None] | None = None,
) -> list[Story]:
    """Generate the stories (greedy, repetition penalty 1.1, no repeated 3-grams)."""
    todo = story_prompts(emotions, per_emotion)
    out: list[Story] = []
    for b in range(0, len(todo), batch_size):
        part = todo[b : b + batch_size]
        texts = lm.generate(
            [p for _, _, p in part],
            max_new_tokens=max_new_tokens,
            repetition_penalty=1.1,
            no_repeat_ngram_size=3,
        )
        out += [Story(e, s, p, t, not names_emotion(t, e)) for (e, s, p), t in zip(part, texts)]
        if log:
            log(f"stories: {len(out)}/{len(todo)}")
    return out


def save_stories(stories: Sequence[Story], path: Path, writer: Callable[[Path, str], None]) -> None:
    writer(path, "".join(json.dumps(s.__dict__) + "\n" for s in stories))


def load_stories(path: str | Path) -> list[Story]:
    path = Path(path)
    if not path.is_file():
        raise GeometryError(f"stories file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(
                Story(
                    rec["emotion"],
                    rec.get("setting", ""),
                    rec.get("prompt", ""),
                    rec["text"],
                    not names_emotion(rec["text"], rec["emotion"]),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise GeometryError(
                f"{path}:{n}: expected a JSON object with 'emotion' and 'text' ({exc})"
            ) from None
    if not out:
        raise GeometryError(f"{path} holds no stories")
    return out
