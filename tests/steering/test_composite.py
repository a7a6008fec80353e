"""The composite, the collapse gates and the judge roles on hand-made texts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steering.eval.composite import (
    CollapseConfig,
    JudgeRoles,
    collapse_report,
    composite,
    concept_scores,
    cross_distinct,
    harmonic,
    judge_sources,
    opening_share,
    phrase_share,
    suppression_scores,
    wrong_way_share,
)
from steering.expression import contrast
from steering.judges.emotion import JudgeError
from tests.tolerance import assert_close


def test_harmonic_is_zero_when_any_part_is_zero():
    h = harmonic(np.array([1.0, 0.5, 0.0]), np.array([1.0, 0.5, 1.0]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(h, [1.0, 3 / (2 + 2 + 1), 0.0])


def test_composite_parts():
    frame = pd.DataFrame({"relevance": [1.0, 0.5, 2.0, np.nan], "perplexity": [10.0, 40.0, 10.0, 10.0],
                          "passed": [True, True, False, True]})
    out = composite(frame, np.array([1.0, 1.0, 1.0, 1.0]), ref_perplexity=10.0, ref_relevance=1.0)
    np.testing.assert_allclose(out["relevance_part"], [1.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(out["fluency_part"], [1.0, 0.5, 0.0, 1.0])   # ratio 4 -> 2/4
    np.testing.assert_allclose(out["composite"], [1.0, 3 / (1 + 2 + 2), 0.0, 0.0])
    with pytest.raises(JudgeError, match="positive"):
        composite(frame, np.ones(4), ref_perplexity=10.0, ref_relevance=0.0)


def test_template_collapse_and_loops_are_caught():
    varied = ["The fridge pumps heat out of the box.", "Leaves lose chlorophyll in autumn.",
              "A leap year has 366 days.", "Librarians sort and lend books."]
    template = ["I'm not sure what to say about fridges.", "I'm not sure what to say, leaves.",
                "I'm not sure what to say here.", "Librarians sort and lend books."]
    assert opening_share(varied) == 0.0 and opening_share(template) == 0.75
    assert not collapse_report(varied)["collapsed"]
    assert collapse_report(template)["collapsed"]
    same = ["wonderful wonderful fabulous day"] * 4
    assert cross_distinct(same) < cross_distinct(varied) == 1.0
    assert collapse_report(same, config=CollapseConfig(max_opening_share=1.0))["collapsed"]


def test_a_template_past_the_opening_is_caught_by_the_phrase_gate():
    varied = ["The fridge pumps heat out of the box.", "Leaves lose chlorophyll in autumn.",
              "A leap year has 366 days.", "Librarians sort and lend books."]
    # openings differ, the same four words follow: what steering from the third token on can do
    late = ["The fridge, oh no, what if it breaks?", "Leaves fall. Oh no, what if winter",
            "A leap year: oh no, what if I forget", "Librarians sort and lend books."]
    assert opening_share(late) == 0.0 and phrase_share(late) == 0.75
    assert phrase_share(varied) == 0.0 and phrase_share([]) == 0.0
    assert not collapse_report(late)["collapsed"]                    # off by default: reported
    assert collapse_report(late)["phrase_share"] == 0.75
    gate = CollapseConfig(max_phrase_share=0.5)
    assert collapse_report(late, config=gate)["collapsed"]
    assert not collapse_report(varied, config=gate)["collapsed"]


def test_wrong_way_share():
    assert wrong_way_share(np.array([0.5, 0.1, 0.9, 0.2]), np.array([0.2, 0.3, 0.9, 0.1])) == 0.25
    with pytest.raises(JudgeError):
        wrong_way_share(np.ones(3), np.ones(2))


def test_selection_judge_never_reports(judge, lexicon):
    roles = dict(fitted_on={"classifier": judge_sources(judge), "lexicon": judge_sources(lexicon)})
    JudgeRoles(selection=("select", object()), report={"classifier": judge, "lexicon": lexicon}, **roles)
    with pytest.raises(JudgeError, match="also a reporting judge"):
        JudgeRoles(selection=("classifier", judge), report={"classifier": judge, "lexicon": lexicon}, **roles)
    with pytest.raises(JudgeError, match="also a reporting judge"):   # same object, another name
        JudgeRoles(selection=("select", judge), report={"classifier": judge}, **roles)
    with pytest.raises(JudgeError, match="fitted on"):
        JudgeRoles(selection=("select", lexicon), report={"classifier": judge}, **roles,
                   trained_on={"goemotions"})
    assert judge_sources(judge) == {"goemotions"}


def test_concept_scores_are_target_probabilities(judge):
    texts = ["I am furious, this is outrageous and I hate it!", "What a lovely, happy day!"]
    p = concept_scores(judge, texts, ["anger", "anger"])
    assert p[0] > p[1] and ((p >= 0) & (p <= 1)).all()


def test_suppression_composite_rewards_calm_but_not_broken_replies(judge):
    texts = ["I am furious, this is outrageous and I hate it!", "Here is how to reset the router."]
    away = suppression_scores(judge, texts, ["anger", "anger"])
    assert_close(away, 1.0 - concept_scores(judge, texts, ["anger", "anger"]))
    assert away[1] > away[0] and ((away >= 0) & (away <= 1)).all()

    class Labels:   # a judge without probabilities (e.g. the lexicon): 1 - the indicator
        def predict(self, replies):
            return ["anger", "neutral", "neutral", "neutral"]

    c = suppression_scores(Labels(), ["a", "b", "c", "d"], ["anger"] * 4)
    np.testing.assert_array_equal(c, [0.0, 1.0, 1.0, 1.0])
    # still 0 when fluency (gate failed) or relevance (0) is 0: broken text is not calm
    frame = pd.DataFrame({"relevance": [1.0, 1.0, 0.0, 1.0], "perplexity": [10.0] * 4,
                          "passed": [True, False, True, True]})
    out = composite(frame, c, ref_perplexity=10.0, ref_relevance=1.0)
    np.testing.assert_array_equal(out["composite"].to_numpy() > 0, [False, False, False, True])
    assert_close(out["composite"].iloc[3], 1.0)


def test_contrast_recovers_planted_directions_and_cancels_groups():
    rng = np.random.default_rng(0)
    emotions = ["anger", "sadness", "fear"]
    planted = {e: rng.normal(size=(1, 16)) for e in emotions}
    rows, labels, groups = [], [], []
    for g in range(30):
        offset = rng.normal(scale=5.0, size=(1, 16))   # what a prompt's replies share
        for e in emotions:
            rows.append(offset + planted[e] + rng.normal(scale=0.1, size=(1, 16)))
            labels.append(e)
            groups.append(f"p{g}")
    X = np.stack(rows)
    got = contrast(X, labels, emotions, groups)
    for e in emotions:
        want = planted[e] - np.mean([planted[o] for o in emotions if o != e], 0)
        cos = float((got[e] * want).sum() / np.linalg.norm(got[e]) / np.linalg.norm(want))
        assert cos > 0.99, (e, cos)
