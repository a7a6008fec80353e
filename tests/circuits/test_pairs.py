"""Pairs from emotion-scenarios align token for token, and splits keep scenarios apart."""

from __future__ import annotations

import pytest

from circuits.baselines import position_mask
from circuits.pairs import PairError, make_pairs, split_groups
from probe.data import load_dataset


@pytest.fixture(scope="module")
def scenarios():
    return load_dataset("emotion-scenarios")


def test_length_pairs_align_and_stay_in_their_scenario(llama, scenarios):
    train, _ = split_groups(scenarios)
    pairs = make_pairs(llama, scenarios, label="happiness", groups=train)
    assert len(pairs) + len(pairs.dropped) == len(train)
    assert pairs.clean.lengths == pairs.corrupt.lengths
    assert (position_mask(pairs.clean) == position_mask(pairs.corrupt)).all()
    f = scenarios.frame.set_index("id")
    for c, k, g in zip(pairs.clean_ids, pairs.corrupt_ids, pairs.groups):
        assert f.loc[c, "group"] == f.loc[k, "group"] == g
        assert f.loc[c, "emotion"] == "happiness" != f.loc[k, "emotion"]
    assert (pairs.clean.input_ids != pairs.corrupt.input_ids).any(1).all()


def test_suffix_pairs_keep_every_scenario(llama, scenarios):
    pairs = make_pairs(llama, scenarios, label="sadness", align="suffix", contrast=["neutral"])
    assert len(pairs) == 64 and not pairs.dropped and set(pairs.corrupt_labels) == {"neutral"}
    assert pairs.positions == "suffix"
    target, base = pairs.denoising()
    assert target is pairs.corrupt and base.source is pairs.clean


def test_bad_requests_are_explained(llama, scenarios):
    with pytest.raises(PairError, match="no class"):
        make_pairs(llama, scenarios, label="joy")
    with pytest.raises(PairError, match="contrast"):
        make_pairs(llama, scenarios, label="anger", contrast=["anger"])
    with pytest.raises(PairError, match="align"):
        make_pairs(llama, scenarios, label="anger", align="middle")


def test_split_is_deterministic_and_disjoint(scenarios):
    a, b = split_groups(scenarios, seed=3)
    assert (a, b) == split_groups(scenarios, seed=3) and not set(a) & set(b)
    assert len(a) == len(b) == 32 and split_groups(scenarios, seed=4) != (a, b)


def test_prompts_are_spread_over_scenarios_first():
    """Several rows per scenario (SEV replies): n prompts come from n scenarios, not n / 3; one
    row per scenario (emotion-scenarios): the first n scenarios, as before."""
    from circuits.pipeline import prompts_of
    from probe.data.schema import EmotionDataset

    recs = [{"id": f"{g}-{k}", "text": f"{g} reply {k}", "label": "joy", "group": g}
            for g in ("a", "b", "c", "d") for k in range(3)]
    recs += [{"id": f"{g}-n", "text": f"{g} plain", "label": "neutral", "group": g} for g in "abcd"]
    ds = EmotionDataset.from_records("toy", recs)
    texts, groups = prompts_of(ds, "joy", ["a", "b", "c", "d"], 6, "label")
    assert groups == ["a", "a", "b", "b", "c", "d"]
    assert texts == ["a reply 0", "a reply 1", "b reply 0", "b reply 1", "c reply 0", "d reply 0"]
    texts, groups = prompts_of(ds, "neutral", ["b", "c", "d"], 2, "label")
    assert groups == ["b", "c"] and texts == ["b plain", "c plain"]
