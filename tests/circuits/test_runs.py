"""Forward helpers: starting at a later block, compute accounting."""

from __future__ import annotations

import pytest
import torch

from circuits.metrics import direction
from circuits.runs import Compute, can_skip, forward_metric
from probe.forward import run_with_cache
from probe.sites import Site
from tests.circuits.conftest import TEXTS, direction_for


def test_a_forward_from_a_cached_block_input_equals_the_full_forward(llama):
    batch = llama.batch(TEXTS[:3])
    metric = direction(direction_for(llama), layer=2, lm=llama)
    _, cache = run_with_cache(llama, batch, [Site("hook_resid_pre", 1)])
    full = forward_metric(llama, batch, metric)
    late = forward_metric(llama, batch, metric, start=1, resid=cache[Site("hook_resid_pre", 1)])
    torch.testing.assert_close(late, full, rtol=1e-5, atol=1e-5)
    assert len(llama.arch.layers(llama.model)) == 3  # the block list is restored
    with pytest.raises(ValueError, match="needs that block's input"):
        forward_metric(llama, batch, metric, start=1)


def test_which_families_may_start_late(family_lm):
    assert can_skip(family_lm("llama")) and can_skip(family_lm("qwen2"))
    assert not can_skip(family_lm("gemma2")) and not can_skip(family_lm("gpt2"))


def test_compute_adds_up():
    c = Compute(forward_passes=1, forward_row_blocks=10, backward_passes=1, backward_row_blocks=10,
                seconds=1.0)
    c.add(Compute(forward_passes=2, forward_row_blocks=5, seconds=0.5))
    assert c.cost == 15 + 20 and c.forward_passes == 3 and c.as_dict()["seconds"] == 1.5
