"""Zero-shot recognition: the items table, keyed by sample id, and its summary."""

from __future__ import annotations

import numpy as np
import pytest

from probe.behaviour.recognition import (
    RecognitionConfig,
    item_texts,
    probabilities,
    recognise,
    summarise,
    usable_rows,
)
from probe.data.schema import DatasetError, EmotionDataset
from tests.tiny import CORPUS


@pytest.fixture(scope="module")
def labelled():
    labels = ["sadness", "joy", "neutral", "anger", "", "joy"]  # one row without a label
    rows = [{"id": f"r{i}", "text": t, "label": labels[i % 6] or None, "group": f"g{i % 12}"}
            for i, t in enumerate(CORPUS)]
    return EmotionDataset.from_records("toy", rows)


@pytest.fixture(scope="module")
def items(tiny_llama, labelled):
    config = RecognitionConfig(max_new_tokens=4, batch_size=5)
    return recognise(tiny_llama, labelled, config=config)


def test_items_are_keyed_by_sample_id(items, labelled):
    keep = labelled.frame["label"].notna().to_numpy()
    assert items.attrs["kind"] == "emotion"
    for _, df in items.groupby(["template", "variant"]):
        assert df["id"].tolist() == labelled.frame["id"][keep].tolist()  # dataset order
        assert df["group"].tolist() == labelled.frame["group"][keep].tolist()
    templates = set(items["template"])
    assert templates == {"one-word", "options", "completion", "letters", "generate"}


def test_answers_are_argmax_of_their_distribution(items):
    classes = items.attrs["classes"]
    scored = items[items["variant"] != "generate"]
    p = probabilities(scored, classes)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)
    assert (np.asarray(classes)[p.argmax(1)] == scored["answer"]).all()
    assert (scored["correct"] == (scored["answer"] == scored["gold"])).all()
    assert ((scored["mass"] > 0) & (scored["mass"] <= 1 + 1e-9)).all()


def test_generation_is_parsed_or_counted_as_unparsed(items):
    gen = items[items["variant"] == "generate"]
    assert gen["reply"].map(lambda r: isinstance(r, str)).all()
    unparsed = gen["answer"].isna()
    assert (gen.loc[unparsed, "correct"] == 0).all()
    assert probabilities(gen[unparsed], items.attrs["classes"]).size == 0 or np.isnan(
        probabilities(gen[unparsed], items.attrs["classes"])).all()


def test_summary_has_cis_and_coverage(items):
    s = summarise(items, n_boot=200)
    acc = s[s["metric"] == "accuracy"]
    assert len(acc) == items.groupby(["template", "variant"]).ngroups
    eps = 1e-12
    assert ((acc["ci_low"] <= acc["value"] + eps) & (acc["value"] <= acc["ci_high"] + eps)).all()
    cov = s[(s["metric"] == "coverage")].set_index("template")["value"]
    assert (cov.drop("generate") == 1).all() and 0 <= cov["generate"] <= 1
    for (t, v), df in items.groupby(["template", "variant"]):
        value = s[(s.template == t) & (s.variant == v) & (s.metric == "accuracy")]["value"]
        assert value.iloc[0] == pytest.approx(df["correct"].mean())


def test_ratings_take_the_expected_value(tiny_llama):
    rows = [{"id": f"r{i}", "text": t, "V": 1.0 + (i % 5), "group": f"g{i % 8}"}
            for i, t in enumerate(CORPUS)]
    data = EmotionDataset.from_records("toy-ratings", rows, targets={"V": "continuous"})
    items = recognise(tiny_llama, data, config=RecognitionConfig(
        templates=("rating", "rating-completion"), batch_size=8))
    assert items.attrs["kind"] == "rating" and set(items["variant"]) == {"expected", "argmax"}
    exp = items[items["variant"] == "expected"]
    p = probabilities(exp, ["1", "2", "3", "4", "5"])
    np.testing.assert_allclose(exp["value"], p @ np.arange(1, 6), rtol=1e-12)
    assert exp["value"].between(1, 5).all()
    arg = items[items["variant"] == "argmax"]
    assert set(arg["value"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    s = summarise(items, n_boot=100)
    assert {"pearson_r", "r2", "coverage", "label_mass"} <= set(s["metric"])


def test_usable_rows_and_bad_targets(labelled, tiny_llama):
    assert len(usable_rows(labelled, "label")) == 20
    empty = EmotionDataset.from_records("e", [{"id": "a", "text": "x", "label": None},
                                              {"id": "b", "text": "y", "label": None}])
    with pytest.raises(DatasetError, match="no row"):
        recognise(tiny_llama, empty)
    with pytest.raises(DatasetError, match="no dialogue columns"):
        recognise(tiny_llama, labelled, config=RecognitionConfig(context="dialogue"))


def test_dialogue_context_uses_the_full_dataset(tiny_llama):
    rows = [{"id": f"d{d}-u{u}", "text": f"line {u} of {d}", "group": f"d{d}", "utterance": u,
             "speaker": "Ann" if u % 2 else "Bob", "label": "joy" if d % 2 else "anger"}
            for d in range(3) for u in range(4)]
    full = EmotionDataset.from_records("dialogues", rows)
    subset = full.select(np.arange(len(rows)) % 4 == 3)  # last utterances only
    texts, used = item_texts(subset, np.arange(3), RecognitionConfig(), full)
    assert used and all(f"Bob: line 2 of {d}" in t and f"line 1 of {d}" in t
                        for d, t in enumerate(texts))
    alone, _ = item_texts(subset, np.arange(3), RecognitionConfig(), None)
    assert "Earlier" not in alone[0]  # a subset alone has no earlier lines to show
    plain, used = item_texts(subset, np.arange(3), RecognitionConfig(context="none"), full)
    assert not used and plain == [f"line 3 of {d}" for d in range(3)]
    items = recognise(tiny_llama, subset, full=full, config=RecognitionConfig(
        templates=("letters",)))
    assert items.attrs["context"]
    assert set(items["variant"]) == {"sum", "calibrated"}
    for _, df in items.groupby("variant"):
        assert df["id"].tolist() == [f"d{d}-u3" for d in range(3)]


def test_calibration_removes_the_content_free_preference(tiny_llama, labelled):
    """``calibrated`` = softmax(log p(label | item) - log p(label | "N/A")), per template."""
    from probe.behaviour.recognition import CONTENT_FREE, encode_prompts
    from probe.scoring import score_candidates, tokenize_candidates
    from probe.behaviour.templates import select_templates

    items = recognise(tiny_llama, labelled, config=RecognitionConfig(templates=("options",)))
    classes = items.attrs["classes"]
    template = select_templates("emotion", ["options"])[0]
    cands = tokenize_candidates(tiny_llama.tokenizer, template.candidates(classes,
                                                                          after_text=False))
    free = score_candidates(tiny_llama, encode_prompts(tiny_llama, template, [CONTENT_FREE],
                                                       classes), cands).logprob
    raw = np.log(probabilities(items[items["variant"] == "sum"], classes))
    cal = probabilities(items[items["variant"] == "calibrated"], classes)
    expected = np.exp(raw - free)
    np.testing.assert_allclose(cal, expected / expected.sum(1, keepdims=True), rtol=1e-6)
