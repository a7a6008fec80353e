"""EmotionPrompt / NegativePrompt: the shipped task set, paired accuracy, answer-position shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from probe.behaviour import emotionprompt as ep
from probe.data.schema import DatasetError
from tests.probe.behaviour_fakes import fake_store


def test_the_shipped_task_set_is_sound():
    tasks = ep.load_tasks()
    f = tasks.frame
    assert len(f) == 80 and f["id"].is_unique
    assert f["task"].value_counts().min() >= 16 and f["task"].nunique() == 5
    assert all(a in o and len(set(o)) == len(o) >= 2 for a, o in zip(f["answer"], f["options"]))
    # the right answer is not always in the same place
    position = [o.index(a) for a, o in zip(f["answer"], f["options"])]
    assert max(np.bincount(position)) < 0.6 * len(f)
    assert (ep.tasks_path().parent / "CARD.md").is_file()


def test_bad_task_file_is_named(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"id": "a", "task": "t", "question": "q?", "options": ["x"], "answer": "y"}\n')
    with pytest.raises(DatasetError, match="tasks.jsonl:1"):
        ep.load_tasks(bad)


def test_stimuli_are_appended_last():
    msg = ep.with_stimulus("What is 2 + 2?", ["3", "4"], ep.STIMULI["NP01"])
    assert msg.startswith("What is 2 + 2?\nOptions: 3, 4.")
    assert msg.endswith(" You've never been particularly good at this, have you?")
    assert ep.with_stimulus("Q?", ["a"], None).endswith("Answer with one of the options.")
    conds = ep.conditions(["EP02", "NP06"])
    assert list(conds) == ["none", "EP02", "NP06"] and conds["none"] is None
    assert {ep.KIND[k] for k in ep.STIMULI} == {"positive", "negative", "control"}
    with pytest.raises(DatasetError, match="unknown stimulus 'EP99'"):
        ep.conditions(["EP99"])


def test_accuracy_with_and_without_stimuli(tiny_llama, one_thread):
    tasks = ep.load_tasks()
    tasks = tasks.select(np.arange(len(tasks)) % 8 == 0)  # 10 items, every kind
    conds = ep.conditions(["EP02", "control"])
    items = ep.task_accuracy(tiny_llama, tasks, conds, batch_size=10)
    assert len(items) == 3 * len(tasks)
    assert all(a in o for a, o in zip(items["answer"], pd.concat([tasks.frame["options"]] * 3)))
    table = ep.accuracy_table(items, n_boot=100)
    acc = table[(table.task == "(all)") & (table.metric == "accuracy")].set_index("condition")
    shift = table[(table.task == "(all)") & (table.metric == "accuracy_shift")]
    for r in shift.itertuples():
        assert r.value == pytest.approx(acc.loc[r.condition, "value"] - acc.loc["none", "value"])
    raw = ep.prompt_dataset(tasks, conds, raw=True)
    assert len(raw) == 30 and raw.texts[0].endswith("\n\nAnswer:")


def test_representation_shift_along_valence():
    rng = np.random.default_rng(0)
    d, L = 6, 2
    val = np.array(["positive", "negative"] * 30)
    Xd = rng.normal(size=(60, L, 1, d))
    Xd[:, :, 0, 0] += np.where(val == "positive", 2.0, -2.0)[:, None]
    direction = fake_store(Xd, val, [f"g{i}" for i in range(60)], target="valence")
    conds = ["none", "EP02", "NP01"]
    base = rng.normal(size=(10, L, 1, d))
    X = np.concatenate([base, base + np.eye(d)[0], base - 2 * np.eye(d)[0]])
    ids = [f"i{k}:{c}" for c in conds for k in range(10)]
    prompts = fake_store(X, np.repeat(conds, 10), [f"i{k}" for _ in conds for k in range(10)],
                         target="condition", ids=ids)
    shift = ep.representation_shift(prompts, direction, n_boot=50)
    layers, u, sd = ep.valence_directions(direction)
    for c, step in (("EP02", 1.0), ("NP01", -2.0)):
        got = shift[shift.condition == c].sort_values("layer")["value"].to_numpy()
        np.testing.assert_allclose(got, step * u[:, 0] / sd, rtol=1e-5)
    assert (shift[shift.condition == "NP01"]["ci_high"] < 0).all()
