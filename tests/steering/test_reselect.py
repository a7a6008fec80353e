"""benchmarks/reselect.py: pooling earlier runs' tune replies and choosing among them again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reselect():
    spec = importlib.util.spec_from_file_location("reselect", ROOT / "benchmarks" / "reselect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class WordJudge:
    """A judge reading 'afraid' as fear, anything else as neutral."""

    classes = ("fear", "neutral")
    words = frozenset(("i", "am", "afraid", "of", "the", "dark", "bees", "make", "honey", "from",
                       "nectar", "it", "is", "sunny", "today"))

    def predict_proba(self, texts):
        return np.array([[0.9, 0.1] if "afraid" in t else [0.2, 0.8] for t in texts])

    def predict(self, texts):
        return [self.classes[int(np.argmax(p))] for p in self.predict_proba(texts)]


def test_parse_pool(reselect):
    assert reselect.parse_pool("t20, t22:opening:10") == [
        ("t20", "last-prompt+generated"), ("t22", "opening:10")]
    with pytest.raises(SystemExit, match="names no run"):
        reselect.parse_pool(" , ")


def test_first_picks_reads_the_label_after_the_run(reselect):  # eval_trained_steering's, shared
    table = pd.DataFrame({
        "condition": ["t1/designed+a@0.5", "t2/a@1", "t1/prompt-designed", "t2/b@2"],
        "composite": [0.9, 0.5, 0.95, 0.8], "expression": [1.0, 0.6, 1.0, 0.7],
        "eligible": [True, True, True, False]})
    # a prefixed prompt + steering point is no steering-alone candidate (the bug this guards),
    # the designed prompt alone is neither, and an ineligible point is never chosen
    assert reselect.first_picks(table, "composite") == ("t2/a@1", "t1/designed+a@0.5")
    assert reselect.first_picks(table, "expression") == ("t2/a@1", "t1/designed+a@0.5")
    assert reselect.first_picks(table[table["condition"] == "t2/b@2"], "composite") == (None, None)


def _run(root: Path, run: str, replies: dict[str, list[str]], table_from=None):
    d = root / f"{run}-fear"
    d.mkdir()
    rows = [{"arm": 0, "condition": c, "prompt_id": f"p{i}", "prompt": "Tell me about bees.",
             "reply": r, "target": "fear", "passed": True, "reason": np.nan, "perplexity": 3.0,
             "echo": False, "relevance": 0.6}
            for c, rs in replies.items() for i, r in enumerate(rs)]
    pd.DataFrame(rows).to_csv(d / "fear-tune-replies.csv", index=False)
    (d / "refs.json").write_text(json.dumps({"tune": [3.0, 0.6], "test": [3.0, 0.6]}))
    return d


def test_pooled_tune_checks_the_replies_reproduce_the_run(reselect, tmp_path):
    from steering.eval.composite import CollapseConfig
    from steering.eval.trained import add_composites, select_scale

    judge = WordJudge()
    texts = {"a@1": ["I am afraid of the dark.", "Bees make honey from nectar.",
                     "It is sunny today, I am afraid.", "Bees make honey."],
             "b@1": ["Bees make honey from nectar.", "It is sunny today.",
                     "I am afraid of bees.", "Honey is made from nectar."]}
    d = _run(tmp_path, "t1", texts)
    f = pd.read_csv(d / "fear-tune-replies.csv")
    f = add_composites(f, concept_judges={"select": judge}, ref_perplexity=3.0, ref_relevance=0.6)
    f["label:select"] = judge.predict(list(f["reply"]))
    from steering.judges.gate import text_signals
    f["signals"] = text_signals(list(f["reply"]), judge.words, perplexity=list(f["perplexity"]),
                                reference_perplexity=3.0)
    _, table = select_scale(f, judge="select", ref_perplexity=3.0, collapse=CollapseConfig())
    table.to_csv(d / "fear-tune.csv", index=False)

    pooled, refs = reselect.pooled_tune(tmp_path, [("t1", "opening:10")], [], "fear", judge)
    assert refs == (3.0, 0.6)
    assert sorted(pooled["condition"].unique()) == ["t1/a@1", "t1/b@1"]
    assert len(pooled) == 8

    # replies that are not the ones the run scored (another vector's) are refused
    other = pd.read_csv(d / "fear-tune-replies.csv")
    other.loc[other["condition"] == "a@1", "reply"] = "Bees make honey from nectar."
    other.to_csv(d / "fear-tune-replies.csv", index=False)
    with pytest.raises(SystemExit, match="do not reproduce"):
        reselect.pooled_tune(tmp_path, [("t1", "opening:10")], [], "fear", judge)
    # and a candidate whose replies no run kept is named
    other[other["condition"] == "b@1"].to_csv(d / "fear-tune-replies.csv", index=False)
    with pytest.raises(SystemExit, match=r"no tune replies for \['a@1'\]"):
        reselect.pooled_tune(tmp_path, [("t1", "opening:10")], [], "fear", judge)
