"""AtP*'s QK fix recomputes attention exactly on the families it covers and refuses others."""

from __future__ import annotations

import pytest

from circuits.attribution import attribute
from circuits.baselines import ZeroBaseline
from circuits.metrics import direction
from circuits.qk import QKFixError
from tests.circuits.conftest import TEXTS, direction_for


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_recomputed_attention_reproduces_the_heads(family_lm, family):
    """qk_fix checks A @ V == hook_z on every call; GQA: 4 query heads over 2 KV heads."""
    lm = family_lm(family)
    batch = lm.batch(TEXTS[:3])
    metric = direction(direction_for(lm), layer=1, lm=lm)
    attr = attribute(lm, batch, metric, ZeroBaseline(), types=("queries", "keys"),
                     estimator="atp*", graddrop=False)
    keys = [g for g in attr.groups if g.type == "keys"]
    assert keys[0].n_units == 2 and attr.per_row[keys[0]].shape == (3, 2)
    assert all(attr.per_row[g].abs().sum() > 0 for g in attr.groups)


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_uncovered_attention_is_refused(family_lm, family):
    lm = family_lm(family)
    metric = direction(direction_for(lm), layer=1, lm=lm)
    with pytest.raises(QKFixError, match="use estimator 'atp'"):
        attribute(lm, lm.batch(TEXTS[:2]), metric, ZeroBaseline(), types=("queries",),
                  estimator="atp*")
