"""Prompt templates for zero-shot recognition: several phrasings per task, reported separately.

A :class:`Template` turns a stimulus into the user's message (and optionally the first words of
the assistant's reply, ``answer_prefix``) and names the candidate answers that label scoring
compares. Prompt sensitivity is a finding, not noise: every template is scored on its own.

Tasks (:data:`TaskKind`):

``emotion``  which emotion a text expresses (classes: the dataset's emotion labels)
``valence``  positive / negative / neutral (SEV valence, MELD sentiment)
``rating``   a 1-5 rating of a continuous target (EmoBank V, A, D); see :class:`Scale`

Candidates are written the way the answer would appear: capitalised at the start of the
assistant's reply (``"Anger"``), lowercase with a leading space after words (``" anger"``, after an
``answer_prefix`` or in raw-text prompts), letters for the lettered multiple choice, digits for
ratings. They are tokenized on their own and appended to the prompt's tokens.

>>> t = TEMPLATES["emotion"][0]
>>> t.name, t.candidates(("anger", "joy"), after_text=False)
('one-word', ['Anger', 'Joy'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from probe.errors import EmoprobeError
from probe.tokens import render

TaskKind = Literal["emotion", "valence", "rating"]
Mode = Literal["score", "generate"]
Answers = Literal["words", "letters", "digits"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RAW_ANSWER_CUE = "\n\nAnswer:"


class TemplateError(EmoprobeError, ValueError):
    """A template cannot be applied as asked (unknown name, too many options, ...)."""


@dataclass(frozen=True, kw_only=True)
class Scale:
    """How to ask for a 1-5 rating of one continuous target."""

    target: str
    question: str
    low: str
    high: str


SCALES: dict[str, Scale] = {
    "V": Scale(target="V", question="how negative or positive is the feeling in this text",
               low="very negative", high="very positive"),
    "A": Scale(target="A", question="how calm or excited is the feeling in this text",
               low="very calm", high="very excited"),
    "D": Scale(target="D", question="how much in control does the writer feel",
               low="completely controlled by others", high="completely in control"),
}


def scale_for(target: str) -> Scale:
    """The rating question of a continuous target (a generic one for targets we do not know)."""
    return SCALES.get(target) or Scale(target=target, question=f"how high is the {target} of "
                                       "this text", low="very low", high="very high")


@dataclass(frozen=True, kw_only=True)
class Template:
    """One phrasing of one task.

    Attributes:
        name: Short id, unique within a task (a column of the results).
        kind: The task it phrases.
        question: The user's message; fields ``{text}``, ``{options}`` (comma-separated class
            names), ``{lettered}`` (one ``A. name`` line per class), and for ratings
            ``{question}``, ``{low}``, ``{high}``.
        answer_prefix: First words of the assistant's reply, after which the candidates follow.
        answers: ``"words"`` (class names), ``"letters"`` (A, B, ...) or ``"digits"`` (1-5).
        mode: ``"score"`` (label scoring) or ``"generate"`` (free generation + parser).
    """

    name: str
    kind: TaskKind
    question: str
    answer_prefix: str = ""
    answers: Answers = "words"
    mode: Mode = "score"

    def user_message(self, text: str, classes: Sequence[str], scale: Scale | None = None) -> str:
        """The user's turn for one stimulus."""
        fields = {"text": text, "options": ", ".join(classes),
                  "lettered": "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(classes))}
        if scale is not None:
            fields.update(question=scale.question, low=scale.low, high=scale.high)
        return self.question.format(**fields)

    def candidates(self, classes: Sequence[str], *, after_text: bool) -> list[str]:
        """Candidate answer strings, in class order (``after_text``: they follow words, so
        they carry a leading space and words stay lowercase)."""
        if self.answers == "letters":
            if len(classes) > len(LETTERS):
                raise TemplateError(f"template {self.name!r} letters at most {len(LETTERS)} "
                                    f"options; this task has {len(classes)}")
            names = list(LETTERS[:len(classes)])
        elif self.answers == "digits":
            names = [str(c) for c in classes]
        else:
            names = [c if after_text else c[:1].upper() + c[1:] for c in classes]
        return [" " + c if after_text else c for c in names]

    def prompt_text(self, tokenizer, text: str, classes: Sequence[str], *, chat_template: bool,
                    system_prompt: str | None = None, scale: Scale | None = None) -> str:
        """The whole prompt string, ending where the answer starts."""
        message = self.user_message(text, classes, scale)
        if chat_template:
            rendered, _ = render(tokenizer, message, chat_template=True,
                                 system_prompt=system_prompt)
            return rendered + self.answer_prefix
        prefix = f" {self.answer_prefix}" if self.answer_prefix else ""
        return message + RAW_ANSWER_CUE + prefix

    def answers_follow_text(self, chat_template: bool) -> bool:
        """Whether candidates follow words on the same line (then they take a leading space)."""
        return bool(self.answer_prefix) or not chat_template


_E, _V, _R = "emotion", "valence", "rating"
TEMPLATES: dict[str, tuple[Template, ...]] = {
    _E: (
        Template(name="one-word", kind=_E, question="{text}\n\nWhich emotion does this text "
                 "express? Answer with one word."),
        Template(name="options", kind=_E, question="Text: {text}\n\nWhich emotion does the text "
                 "express? Choose one of: {options}.\nAnswer with the emotion only."),
        Template(name="completion", kind=_E, question="{text}\n\nDescribe the emotion in this "
                 "text.", answer_prefix="The emotion expressed in this text is"),
        Template(name="letters", kind=_E, question="Text: {text}\n\nWhich emotion does the text "
                 "express?\n{lettered}\nAnswer with the letter only.", answers="letters"),
        Template(name="generate", kind=_E, question="{text}\n\nWhich emotion does this text "
                 "express? Answer with one word.", mode="generate"),
    ),
    _V: (
        Template(name="one-word", kind=_V, question="{text}\n\nIs the feeling in this text "
                 "positive, negative or neutral? Answer with one word."),
        Template(name="options", kind=_V, question="Text: {text}\n\nWhat is the sentiment of the "
                 "text? Choose one of: {options}.\nAnswer with the sentiment only."),
        Template(name="completion", kind=_V, question="{text}\n\nDescribe the sentiment of this "
                 "text.", answer_prefix="The sentiment of this text is"),
        Template(name="letters", kind=_V, question="Text: {text}\n\nWhat is the sentiment of the "
                 "text?\n{lettered}\nAnswer with the letter only.", answers="letters"),
        Template(name="generate", kind=_V, question="{text}\n\nIs the feeling in this text "
                 "positive, negative or neutral? Answer with one word.", mode="generate"),
    ),
    _R: (
        Template(name="rating", kind=_R, question="{text}\n\nOn a scale from 1 ({low}) to 5 "
                 "({high}), {question}? Answer with a single number.", answers="digits"),
        Template(name="rating-completion", kind=_R, question="{text}\n\nRate {question}, from 1 "
                 "({low}) to 5 ({high}).", answer_prefix="Rating:", answers="digits"),
        Template(name="rating-scale", kind=_R, question="Text: {text}\n\nQuestion: {question}?\n"
                 "1 = {low}\n2\n3 = neither\n4\n5 = {high}\nAnswer with the number only.",
                 answers="digits"),
        Template(name="generate", kind=_R, question="{text}\n\nOn a scale from 1 ({low}) to 5 "
                 "({high}), {question}? Answer with a single number.", answers="digits",
                 mode="generate"),
    ),
}
RATING_LEVELS = ("1", "2", "3", "4", "5")
#: What ``probe behave`` asks with unless ``--templates`` says otherwise (``all``: every template
#: of the task). Two phrasings, so prompt sensitivity still shows: ``completion`` was the best
#: template on five of the six datasets in docs/behaviour.md and ``options`` names the classes;
#: for ratings the two that read best. Each template is a full pass over the rows (the
#: ``generate`` one costs as much again in decoding): on 100 rows all five took 484 s where
#: these two took 190 s (``python benchmarks/bench_behave.py``; docs/behaviour.md).
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    _E: ("completion", "options"),
    _V: ("completion", "options"),
    _R: ("rating-scale", "rating"),
}


def task_kind(target: str, target_kind: str) -> TaskKind:
    """``rating`` for continuous targets, ``valence`` for valence/sentiment, else ``emotion``."""
    if target_kind == "continuous":
        return "rating"
    if target_kind == "multilabel":
        raise TemplateError(f"target {target!r} is multi-label; choose a single-label target "
                            "(GoEmotions: ekman or label)")
    return "valence" if target.lower() in ("valence", "sentiment", "polarity") else "emotion"


def select_templates(kind: TaskKind, names: Sequence[str] | None = None) -> list[Template]:
    """The templates of a task: all of them (``names`` None, empty or ``["all"]``), the
    defaults of ``probe behave`` (``["default"]``, :data:`DEFAULT_TEMPLATES`), or those named
    (in the order given)."""
    table = {t.name: t for t in TEMPLATES[kind]}
    if names and list(names) == ["default"]:
        names = DEFAULT_TEMPLATES[kind]
    if not names or list(names) == ["all"]:
        return list(table.values())
    unknown = [n for n in names if n not in table]
    if unknown:
        raise TemplateError(f"unknown template {unknown[0]!r} for the {kind} task; choose from "
                            f"{', '.join(table)} (or all, or default: "
                            f"{','.join(DEFAULT_TEMPLATES[kind])})")
    return [table[n] for n in names]


def with_dialogue_context(frame: pd.DataFrame, ids: Sequence[str], n_previous: int = 3
                          ) -> dict[str, str]:
    """Texts of dialogue rows with the previous utterances of their dialogue as context.

    Needs the dataset's ``group`` (the dialogue), ``utterance`` (its order) and ``speaker``
    columns (MELD has them). ``frame`` should be the whole dataset, not a ``--limit`` subset, so
    that the context of a kept row is complete.

    Returns:
        ``{id: text}`` for ``ids``; a row without earlier utterances keeps its context empty.
    """
    need = {"group", "utterance", "speaker", "text", "id"}
    if not need <= set(frame.columns):
        raise TemplateError(f"dialogue context needs the columns {sorted(need)}; this dataset "
                            f"has {sorted(frame.columns)}")
    by_dialogue: Mapping = {g: rows.sort_values("utterance") for g, rows in frame.groupby("group")}
    index = frame.set_index("id")
    out = {}
    for i in ids:
        row = index.loc[i]
        rows = by_dialogue[row["group"]]
        earlier = rows[rows["utterance"] < row["utterance"]].tail(n_previous)
        lines = [f"{r.speaker}: {r.text}" for r in earlier.itertuples()]
        context = ("Earlier in the conversation:\n" + "\n".join(lines) + "\n\n") if lines else ""
        out[i] = f"{context}Now {row['speaker']} says: \"{row['text']}\""
    return out
