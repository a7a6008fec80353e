"""System-prompt personas: cross-fitted shifts along probe and mean-difference directions."""

from __future__ import annotations

import numpy as np
import pytest

from probe.behaviour.sysprompt import (
    PERSONAS,
    ShiftConfig,
    answer_shift,
    representation_shift,
    valence_contrast,
)
from probe.evaluate import EvalConfig
from probe.stats import ProbeError
from tests.probe.behaviour_fakes import fake_store, items_table

CLASSES = ["anger", "happiness", "neutral", "sadness"]
CFG = ShiftConfig(eval=EvalConfig(n_bootstrap=200, control=False, lexical=False))


def _stores(n=160, d=10, seed=0):
    """Baseline with class structure at layer 1; 'cheerful' = baseline pushed along
    happiness-minus-sadness; 'same' = the baseline itself; layer 0 is pure noise."""
    rng = np.random.default_rng(seed)
    y = np.array(CLASSES)[np.arange(n) % 4]
    groups = [f"g{i // 2}" for i in range(n)]
    X = rng.normal(size=(n, 2, 1, d))
    X[:, 1, 0, :4] += 3 * np.eye(4)[np.arange(n) % 4]
    push = np.zeros((2, d))
    push[:, 1], push[:, 3] = 1.5, -1.5  # happiness up, sadness down, at both layers
    return {"none": fake_store(X, y, groups), "same": fake_store(X.copy(), y, groups),
            "cheerful": fake_store(X + push[None, :, None], y, groups),
            "gloomy": fake_store(X - push[None, :, None], y, groups)}


@pytest.fixture(scope="module")
def shift():
    return representation_shift(_stores(), config=CFG)


def _value(t, **kw):
    m = np.ones(len(t), bool)
    for k, v in kw.items():
        m &= (t[k] == v).to_numpy(bool)
    assert m.sum() == 1, kw
    return t[m].iloc[0]


def test_a_push_along_valence_is_measured(shift, one_thread):
    assert shift.attrs["contrast"] == ("happiness", "sadness")
    for direction in ("probe-logit", "mean-difference", "probe-probability"):
        r = _value(shift, persona="cheerful", direction=direction, layer=1,
                   **{"class": "happiness-sadness"})
        assert r["ci_low"] > 0, direction
    down = _value(shift, persona="cheerful", direction="mean-difference", layer=1,
                  **{"class": "sadness"})
    assert down["ci_high"] < 0


def test_the_same_prompt_moves_nothing(shift):
    same = shift[shift["persona"] == "same"]
    np.testing.assert_allclose(same[["value", "ci_low", "ci_high"]].to_numpy(float), 0,
                               atol=1e-5)  # float32 probes read identical rows


def test_probe_logits_are_class_centred(shift):
    r = shift[(shift["persona"] == "cheerful") & (shift["direction"] == "probe-logit")
              & shift["class"].isin(CLASSES)]
    sums = r.groupby(["layer", "pooling"])["value"].sum()
    # float32 log-probabilities: the rounding of a sum scales with the values summed
    np.testing.assert_allclose(sums, 0, atol=1e-5 * max(1.0, r["value"].abs().max()))


def test_stores_must_hold_the_same_items():
    stores = _stores()
    other = stores["same"].assign_coords(sample=[f"x{i}" for i in range(160)])
    with pytest.raises(ProbeError, match="other samples"):
        representation_shift({"none": stores["none"], "other": other}, config=CFG)
    with pytest.raises(ProbeError, match="baseline persona 'none'"):
        representation_shift({"same": stores["same"]}, config=CFG)


def test_personas_and_contrast():
    assert PERSONAS["none"] is None
    assert {"cheerful", "gloomy", "calm"} <= set(PERSONAS)
    assert "You are" not in PERSONAS["instruction"]  # the instruction-style one
    assert valence_contrast(("joy", "sadness", "fear")) == ("joy", "sadness")
    assert valence_contrast(("positive", "neutral", "negative")) == ("positive", "negative")
    assert valence_contrast(("surprise", "disgust")) is None


def test_answer_shift_is_paired():
    ids, groups = [f"s{i}" for i in range(40)], [f"g{i // 2}" for i in range(40)]
    gold = ["joy", "sadness"] * 20
    base = items_table(ids, groups, gold, gold, ["joy", "sadness"])  # always right
    cheer = items_table(ids, groups, gold, ["joy"] * 40, ["joy", "sadness"])  # always joy
    out = answer_shift({"none": base, "cheerful": cheer}, n_boot=100)
    joy = out[(out.persona == "cheerful") & (out.metric == "share_shift") & (out["class"] == "joy")]
    assert joy["value"].iloc[0] == pytest.approx(0.5)
    acc = out[(out.persona == "cheerful") & (out.metric == "accuracy_shift")]
    assert acc["value"].iloc[0] == pytest.approx(-0.5)
    assert acc["ci_high"].iloc[0] < 0
    assert not ((out.persona == "none") & out.metric.str.endswith("_shift")).any()


def test_personas_with_one_frame_are_contrasted_directly(shift):
    """cheerful-vs-gloomy = (cheerful - none) - (gloomy - none), item by item."""
    key = {"direction": "mean-difference", "layer": 1, "class": "happiness-sadness"}
    both = _value(shift, persona="cheerful-vs-gloomy", **key)
    up, down = _value(shift, persona="cheerful", **key), _value(shift, persona="gloomy", **key)
    assert both["value"] == pytest.approx(up["value"] - down["value"])
    assert down["ci_high"] < 0 < up["ci_low"] and both["ci_low"] > up["ci_high"]
