"""Prompt templates: several phrasings per task, candidates as the answer would be written."""

from __future__ import annotations

import pytest

from probe.behaviour.templates import (
    DEFAULT_TEMPLATES,
    RAW_ANSWER_CUE,
    SCALES,
    TEMPLATES,
    TemplateError,
    scale_for,
    select_templates,
    task_kind,
    with_dialogue_context,
)

CLASSES = ("anger", "sadness", "happiness")


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_task_has_three_scored_phrasings_and_a_generated_one(kind):
    templates = TEMPLATES[kind]
    names = [t.name for t in templates]
    assert len(set(names)) == len(names)
    assert sum(t.mode == "score" for t in templates) >= 3
    assert sum(t.mode == "generate" for t in templates) == 1
    assert len({t.question for t in templates if t.mode == "score"}) >= 3  # really different


def test_candidates_follow_the_answer_position():
    one_word, options, completion, letters, _ = TEMPLATES["emotion"]
    assert one_word.candidates(CLASSES, after_text=False) == ["Anger", "Sadness", "Happiness"]
    assert completion.answers_follow_text(chat_template=True)  # after "... is"
    assert not one_word.answers_follow_text(chat_template=True)
    assert one_word.answers_follow_text(chat_template=False)  # raw text: after "Answer:"
    assert completion.candidates(CLASSES, after_text=True) == [" anger", " sadness", " happiness"]
    assert letters.candidates(CLASSES, after_text=False) == ["A", "B", "C"]
    rating = TEMPLATES["rating"][0]
    assert rating.candidates(("1", "2", "3", "4", "5"), after_text=False) == list("12345")
    with pytest.raises(TemplateError, match="at most 26"):
        letters.candidates([f"c{i}" for i in range(27)], after_text=False)


def test_messages_carry_text_options_and_scale(tiny_llama):
    _, options, completion, letters, _ = TEMPLATES["emotion"]
    msg = options.user_message("I lost my keys.", CLASSES)
    assert "I lost my keys." in msg and "anger, sadness, happiness" in msg
    assert "A. anger\nB. sadness\nC. happiness" in letters.user_message("x", CLASSES)
    rating = TEMPLATES["rating"][0].user_message("x", (), SCALES["A"])
    assert "very calm" in rating and "very excited" in rating
    chat = completion.prompt_text(tiny_llama.tokenizer, "I lost my keys.", CLASSES,
                                  chat_template=True, system_prompt="Be brief.")
    assert chat.endswith("<|assistant|>" + completion.answer_prefix)
    assert "Be brief." in chat and "I lost my keys." in chat
    raw = completion.prompt_text(tiny_llama.tokenizer, "I lost my keys.", CLASSES,
                                 chat_template=False)
    assert raw.endswith(RAW_ANSWER_CUE + " " + completion.answer_prefix)


def test_task_kinds_and_selection():
    assert task_kind("V", "continuous") == "rating"
    assert task_kind("valence", "label") == "valence"
    assert task_kind("sentiment", "label") == "valence"
    assert task_kind("ekman", "label") == "emotion"
    with pytest.raises(TemplateError, match="multi-label"):
        task_kind("emotions", "multilabel")
    assert [t.name for t in select_templates("emotion", ["letters", "one-word"])] == [
        "letters", "one-word"]
    with pytest.raises(TemplateError, match="unknown template 'nope'.*one-word.*or all"):
        select_templates("valence", ["nope"])
    # probe behave's default: two templates per task (fewer passes); "all" gives every one
    for kind in ("emotion", "valence", "rating"):
        default = [t.name for t in select_templates(kind, ["default"])]
        assert default == list(DEFAULT_TEMPLATES[kind]) and len(default) == 2
        every = [t.name for t in TEMPLATES[kind]]
        assert [t.name for t in select_templates(kind, ["all"])] == every
        assert all(t.mode == "score" for t in select_templates(kind, ["default"]))
    assert scale_for("V") is SCALES["V"] and "X" in scale_for("X").question


def test_dialogue_context_comes_from_earlier_utterances(shared_data):
    from probe.data import load_dataset

    meld = load_dataset(shared_data / "meld", split="dev")
    frame = meld.frame
    row = frame[frame["utterance"] == 4].iloc[0]
    texts = with_dialogue_context(frame, [row["id"]], n_previous=3)
    text = texts[row["id"]]
    same = frame[frame["group"] == row["group"]].set_index("utterance")
    shown = [f"{same.loc[u, 'speaker']}: {same.loc[u, 'text']}" for u in (1, 2, 3)]
    positions = [text.index(s) for s in shown]
    assert positions == sorted(positions)  # in dialogue order
    assert f"{same.loc[0, 'speaker']}: {same.loc[0, 'text']}" not in text  # only 3 previous
    assert text.endswith(f'Now {row["speaker"]} says: "{row["text"]}"')
    first = frame[frame["utterance"] == 0].iloc[0]
    assert with_dialogue_context(frame, [first["id"]])[first["id"]].startswith("Now ")
    with pytest.raises(TemplateError, match="dialogue context needs"):
        with_dialogue_context(frame.drop(columns="speaker"), [row["id"]])
