"""An optional third judge: a local chat model asked which emotion a text expresses.

The text goes into a fixed prompt (:data:`JUDGE_PROMPT`); each of the seven labels is scored by
its log-likelihood as the start of the judge model's reply
(:func:`steering.scoring.option_logprobs`), so there are no parse failures. With
``calibrate=True`` the log-likelihoods the same prompt gives the labels for content-free texts
are subtracted first (contextual calibration, Zhao et al. 2021): small models otherwise answer
one label for everything. :meth:`LLMJudge.generate_labels` asks for a free reply and parses it
(:func:`parse_label`), returning ``None`` where no label is found.

Any local Hugging Face chat model can judge (``load_model("qwen2.5-7b-instruct")``); it should not
be the steered model itself. On a CPU only the embedded 135M model is available: see
docs/judges.md for what it is worth (little).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from steering.judges.emotion import LABELS, JudgeError
from steering.scoring import greedy_replies, option_logprobs

JUDGE_SYSTEM = "You are a careful annotator of emotions in text."
JUDGE_PROMPT = (
    "Which emotion does the following text express?\n\nText: \"{text}\"\n\n"
    "Answer with one word: anger, sadness, happiness, fear, surprise, disgust or neutral."
)
CONTENT_FREE = ("N/A", "", "[text]")
SYNONYMS = {
    "anger": "anger", "angry": "anger", "annoyed": "anger", "furious": "anger",
    "sadness": "sadness", "sad": "sadness", "grief": "sadness",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "joyful": "happiness",
    "fear": "fear", "afraid": "fear", "scared": "fear", "fearful": "fear", "anxious": "fear",
    "surprise": "surprise", "surprised": "surprise", "amazed": "surprise",
    "disgust": "disgust", "disgusted": "disgust", "disgusting": "disgust",
    "neutral": "neutral", "none": "neutral",
}


def parse_label(reply: str) -> str | None:
    """The first label (or a listed synonym) named in a free reply; ``None`` if there is none."""
    for word in re.findall(r"[a-z]+", reply.lower()):
        if word in SYNONYMS:
            return SYNONYMS[word]
    return None


@dataclass(eq=False)
class LLMJudge:
    """A chat model as emotion judge, scored by label log-likelihood.

    Args:
        lm: a :class:`probe.models.LoadedModel` with a chat template.
        calibrate: subtract the labels' log-likelihoods on content-free texts.
        capitalize: score ``"Anger"`` rather than ``"anger"`` (lower case did better with
            SmolLM2 on SEV half A: docs/judges.md).
        max_chars: texts are cut to this many characters (the prompt stays bounded).
        batch_size: prompts per forward.
    """

    lm: object
    calibrate: bool = True
    capitalize: bool = False
    max_chars: int = 1200
    batch_size: int = 8
    name: str = "llm"
    _bias: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.lm.has_chat_template:
            raise JudgeError("the LLM judge needs a chat model (its tokenizer has no chat "
                             "template)")

    @property
    def options(self) -> list[str]:
        return [lab.capitalize() if self.capitalize else lab for lab in LABELS]

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [JUDGE_PROMPT.format(text=t.strip()[:self.max_chars]) for t in texts]

    def _raw(self, texts: Sequence[str]) -> np.ndarray:
        scores = option_logprobs(self.lm, self.prompts(texts), [self.options] * len(texts),
                                 chat_template=True, system_prompt=JUDGE_SYSTEM,
                                 batch_size=self.batch_size)
        return np.stack(scores) if scores else np.zeros((0, len(LABELS)))

    def bias(self) -> np.ndarray:
        """Mean label log-likelihoods over the content-free texts (zeros if not calibrating)."""
        if not self.calibrate:
            return np.zeros(len(LABELS))
        if self._bias is None:
            self._bias = self._raw(CONTENT_FREE).mean(axis=0)
        return self._bias

    def label_scores(self, texts: Sequence[str]) -> np.ndarray:
        """(texts, 7) label log-likelihoods (calibrated if asked), columns in LABELS order."""
        if isinstance(texts, str):
            raise JudgeError("pass a list of texts, not a single string")
        return self._raw(texts) - self.bias()

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [LABELS[i] for i in self.label_scores(texts).argmax(axis=1)] if len(texts) else []

    def generate_labels(self, texts: Sequence[str], *, max_new_tokens: int = 8) -> list[str | None]:
        """Free greedy replies to the same prompt, parsed; ``None`` where no label is named."""
        replies = greedy_replies(self.lm, self.prompts(texts), system_prompt=JUDGE_SYSTEM,
                                 chat_template=True, max_new_tokens=max_new_tokens,
                                 batch_size=self.batch_size)
        return [parse_label(r) for r in replies]
