"""Selection and report tables of steering.eval.trained on hand-made judged frames."""

from __future__ import annotations

import numpy as np
import pandas as pd

from steering.eval.trained import baseline_arms, paired, report_rows, score_arms, select_scale
from steering.judges.gate import text_signals
from tests.tolerance import assert_close

WORDS = frozenset("the a fridge keeps food cold leaves turn red in autumn bees make honey from "
                  "nectar i am so angry about this we won".split())


def _frame(condition, replies, *, target="anger", labels=None, ppl=10.0, concept=None):
    n = len(replies)
    f = pd.DataFrame({"condition": condition, "prompt_id": [f"p{i}" for i in range(n)],
                      "reply": replies, "target": target,
                      "label:judge": labels if labels is not None else ["neutral"] * n,
                      "passed": True, "echo": False, "perplexity": ppl, "relevance": 1.0})
    f["signals"] = text_signals(replies, WORDS)
    c = np.asarray(concept if concept is not None else [0.1] * n, float)
    f["concept:judge"] = c
    f["composite:judge"] = c
    return f


VARIED = ["the fridge keeps food cold", "leaves turn red in autumn", "bees make honey from nectar",
          "we won the final", "i am so angry about this"]
TEMPLATE = ["i am so angry about the fridge", "i am so angry about leaves", "i am so angry about bees",
            "i am so angry about the final", "we won"]


def test_selection_skips_collapse_and_perplexity_and_takes_the_best_composite():
    frame = pd.concat([
        _frame("a@1", VARIED, concept=[0.3] * 5),
        _frame("a@2", TEMPLATE, concept=[0.9] * 5),            # best composite, but a template
        _frame("b@1", VARIED, concept=[0.8] * 5, ppl=30.0),    # ratio 3 > 2
        _frame("b@0.5", VARIED, concept=[0.5] * 5)], ignore_index=True)
    best, table = select_scale(frame, judge="judge", ref_perplexity=10.0)
    assert best == "b@0.5"
    t = table.set_index("condition")
    assert t.loc["a@2", "collapsed"] and not t.loc["a@2", "eligible"]
    assert not t.loc["b@1", "eligible"] and t.loc["b@1", "ppl_ratio"] == 3.0


def test_expression_rule_takes_the_most_expressive_eligible_point():
    import pytest

    from steering.eval.trained import rank_table
    angry = ["anger"] * 4 + ["neutral"]
    frame = pd.concat([
        _frame("faint@0.5", VARIED, concept=[0.8] * 5),                     # best composite
        _frame("strong@1", VARIED, labels=angry, concept=[0.9, 0.9, 0.9, 0.9, 0.0]),
        _frame("tie@1", VARIED, labels=angry, concept=[0.4] * 5),            # same rate, lower composite
        _frame("louder@2", VARIED, labels=["anger"] * 5, concept=[1.0] * 5, ppl=30.0)],  # ratio 3
        ignore_index=True)
    best, table = select_scale(frame, judge="judge", ref_perplexity=10.0)
    assert best == "faint@0.5"
    best, _ = select_scale(frame, judge="judge", ref_perplexity=10.0, rank="expression")
    assert best == "strong@1"                      # 0.8 expressed; the tie goes to the composite
    assert list(rank_table(table, "expression")["condition"])[:3] == ["louder@2", "strong@1", "tie@1"]
    with pytest.raises(ValueError, match="selection rule"):
        rank_table(table, "judge")


def test_report_rows_and_paired_differences():
    base = _frame("unsteered", VARIED, concept=[0.2] * 5)
    steered = _frame("steered", VARIED, labels=["anger"] * 4 + ["neutral"],
                     concept=[0.9, 0.9, 0.9, 0.9, 0.1])
    frame = pd.concat([base, steered], ignore_index=True)
    rows = report_rows(frame, judges=["judge"], unsteered=base, ref_perplexity=10.0,
                       ref_relevance=1.0, n_boot=200)
    r = {x["condition"]: x for x in rows}
    assert r["steered"]["expression"] == 0.8 and r["unsteered"]["expression"] == 0.0
    assert r["steered"]["ci_low"] <= 0.8 <= r["steered"]["ci_high"]
    assert r["steered"]["wrong_way"] == 0.2          # one prompt went from 0.2 to 0.1
    d = paired(frame, "steered", "unsteered", judge="judge", n_boot=200)
    assert d["diff"] == 0.8 and d["n_prompts"] == 5 and d["ci_low"] <= 0.8 <= d["ci_high"]


def test_baseline_arms():
    arms = {a.condition: a for a in baseline_arms("anger")}
    assert arms["prompt-user"].user_suffix == " Respond in a very angry way."
    assert "angry" in arms["prompt-designed"].system_prompt
    assert "prompt-designed+steered" not in arms


def test_add_composites_scores_a_frame_judged_earlier():
    from steering.eval.trained import add_composites
    from tests.tolerance import assert_close

    class Judge:   # a judge without probabilities: its label's indicator is the concept
        def predict(self, texts):
            return ["anger" if "angry" in t else "neutral" for t in texts]

    f = _frame("unsteered", VARIED, ppl=[10.0, 10.0, 40.0, 10.0, 10.0]).drop(
        columns=["concept:judge", "composite:judge"])
    f.loc[1, "passed"] = False
    out = add_composites(f, concept_judges={"j": Judge()}, ref_perplexity=10.0, ref_relevance=1.0)
    assert list(out["concept:j"]) == [0, 0, 0, 0, 1]
    assert list(out["composite:j"]) == [0, 0, 0, 0, 1]           # harmonic mean: 0 if any part is 0
    assert_close(out["fluency_part"], [1, 0, 0.5, 1, 1])       # gate failed; 2 x ref / perplexity


class _Judge:
    """P(anger) is 0.9 for a reply with "angry" in it, else 0.1."""

    classes = ("anger", "neutral")

    def predict_proba(self, replies):
        p = np.array([0.9 if "angry" in r else 0.1 for r in replies])
        return np.stack([p, 1 - p], axis=1)


class _Scorer:
    def __init__(self, frames):
        self.frames = frames

    def frame(self, prompts, arms, *, relevance, targets=None, texts=None):
        return pd.concat([self.frames[a] for a in arms], ignore_index=True)


def test_score_arms_away_scores_one_minus_the_target_and_counts_angrier_prompts_as_wrong_way():
    base = _frame("unsteered", VARIED)                     # one angry reply of five
    calmer = _frame("steered", VARIED[:4] + ["we won the final again"])
    angrier = _frame("worse", ["i am so angry now"] + VARIED[1:])
    scorer = _Scorer({"unsteered": base, "steered": calmer, "worse": angrier})
    f = score_arms(scorer, None, ["unsteered", "steered", "worse"], concept_judges={"judge": _Judge()},
                   ref_perplexity=10.0, ref_relevance=1.0, away=True)
    towards = score_arms(scorer, None, ["unsteered"], concept_judges={"judge": _Judge()},
                         ref_perplexity=10.0, ref_relevance=1.0)
    assert_close(f.loc[f["condition"] == "unsteered", "concept:judge"].to_numpy(),
                 1.0 - towards["concept:judge"].to_numpy())
    assert_close(f.loc[f["condition"] == "steered", "concept:judge"].to_numpy(), [0.9] * 5)
    rows = report_rows(f, judges=["judge"], unsteered=f[f["condition"] == "unsteered"],
                       ref_perplexity=10.0, ref_relevance=1.0, n_boot=200)
    r = {x["condition"]: x for x in rows}
    assert r["steered"]["wrong_way"] == 0.0 and r["worse"]["wrong_way"] == 0.2
    assert r["steered"]["composite"] > r["unsteered"]["composite"]


def test_score_arms_reuse_keeps_the_replies_of_arms_scored_before(tmp_path, monkeypatch):
    """``reuse=CSV``: an arm whose condition the file holds for every prompt keeps its replies
    (in the prompts' order, "NA" and "" kept as text); the others, and every arm without a
    file, are generated; every reply is judged again."""
    from types import SimpleNamespace

    import steering.eval.trained as T
    from steering.eval.grid import Arm

    prompts = [SimpleNamespace(id="p0", text="How do bees make honey?"),
               SimpleNamespace(id="p1", text="What is a leap year?")]
    arms = [Arm(condition=c, emotion="anger") for c in ("a@1", "b@1", "d@1")]
    pd.DataFrame({"arm": [0, 0, 1, 2, 2], "condition": ["a@1", "a@1", "b@1", "c@1", "c@1"],
                  "prompt_id": ["p1", "p0", "p0", "p0", "p1"],
                  "reply": ["NA", "", "b0", "c0", "c1"], "target": "anger"}
                 ).to_csv(tmp_path / "r.csv", index=False)
    assert T.cached_replies(tmp_path / "r.csv", prompts, ["a@1", "b@1", "c@1", "d@1"]) == {
        "a@1": ["", "NA"], "c@1": ["c0", "c1"]}   # b@1 lacks p1; d@1 is not there
    assert T.cached_replies(tmp_path / "none.csv", prompts, ["a@1"]) == {}
    made, seen = [], {}
    monkeypatch.setattr(T, "generate_arms", lambda lm, texts, new, **kw: made.append(
        [a.condition for a in new]) or [[f"{a.condition} {t}" for t in texts] for a in new])

    class Recorder:
        lm, decoding, batch_size, log = None, None, 8, None

        def frame(self, prompts, arms, *, relevance, targets=None, texts=None):
            seen["texts"] = texts
            return pd.concat([_frame(a.condition, ["the fridge keeps food cold"] * len(prompts))
                              for a in arms], ignore_index=True)

    score_arms(Recorder(), prompts, arms, concept_judges={"judge": _Judge()}, ref_perplexity=10.0,
               ref_relevance=1.0, reuse=tmp_path / "r.csv")
    assert made == [["b@1", "d@1"]]
    assert seen["texts"] == [["", "NA"], ["b@1 How do bees make honey?", "b@1 What is a leap year?"],
                             ["d@1 How do bees make honey?", "d@1 What is a leap year?"]]
    made.clear()
    score_arms(Recorder(), prompts, arms, concept_judges={"judge": _Judge()}, ref_perplexity=10.0,
               ref_relevance=1.0, reuse=tmp_path / "none.csv")
    assert made == [["a@1", "b@1", "d@1"]]
    score_arms(Recorder(), prompts, arms, concept_judges={"judge": _Judge()}, ref_perplexity=10.0,
               ref_relevance=1.0)   # without reuse the scorer generates, as before
    assert seen["texts"] is None and len(made) == 1
