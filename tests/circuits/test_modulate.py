"""Circuit modulation touches the circuit's units only, is exact where the math is linear,
and leaves no trace."""

from __future__ import annotations

import pytest
import torch

from circuits.components import Component
from circuits.metrics import direction
from circuits.modulate import ModulationError, component_offsets, modulation_hooks
from probe.forward import run_with_cache
from probe.sites import Site
from tests.circuits.conftest import TEXTS, direction_for

CIRCUIT = [Component.parse("blocks.1.attn.hook_z[2]"), Component.parse("blocks.2.mlp.hook_post[5]"),
           Component.parse("blocks.2.mlp.hook_post[40]")]


def test_scale_changes_only_the_circuits_units(llama):
    batch = llama.batch(TEXTS[:3])
    site = Site("mlp.hook_post", 2)
    _, clean = run_with_cache(llama, batch, [site])
    seen = {}
    hooks = modulation_hooks(llama, CIRCUIT, factor=2.5, mode="scale", positions="all")
    with torch.no_grad(), llama.hooks({site: [hooks[site], lambda v, ctx: seen.setdefault("v", v)]}):
        llama.logits(batch)
    real = batch.attention_mask.bool()
    diff = (seen["v"] - clean[site])[real]
    assert diff[:, [5, 40]].abs().max() > 0
    torch.testing.assert_close(seen["v"][real][:, [5, 40]], 2.5 * clean[site][real][:, [5, 40]])
    mask = torch.ones(diff.shape[-1], dtype=torch.bool)
    mask[[5, 40]] = False
    assert torch.equal(diff[:, mask], torch.zeros_like(diff[:, mask]))


def test_add_moves_a_linear_metric_by_exactly_the_offsets(llama64):
    lm = llama64
    v = direction_for(lm)
    metric = direction(v, layer=2, lm=lm)
    neurons = CIRCUIT[1:]
    offsets = component_offsets(lm, neurons, lm.batch(TEXTS[:2]), lm.batch(TEXTS[2:6]))
    batch = lm.batch(TEXTS[3:5])
    _, before = run_with_cache(lm, batch, metric.sites)
    with lm.hooks(modulation_hooks(lm, neurons, strength=3.0, offsets=offsets, positions="last")):
        _, after = run_with_cache(lm, batch, metric.sites)
    w = lm.arch.layers(lm.model)[2].mlp.down_proj.weight  # [d_model, d_mlp]
    expect = sum(3.0 * offsets[c] * (w[:, c.unit] @ (v / v.norm())) for c in neurons)
    torch.testing.assert_close(metric(after, batch) - metric(before, batch),
                               expect.expand(2).to(torch.float64), rtol=1e-9, atol=1e-9)


def test_unit_factor_and_removal_leave_no_trace(llama):
    batch = llama.batch(TEXTS[:2])
    with torch.no_grad():
        ref = llama.logits(batch)
        with llama.hooks(modulation_hooks(llama, CIRCUIT, factor=1.0, mode="scale")):
            same = llama.logits(batch)
        with llama.hooks(modulation_hooks(llama, CIRCUIT, factor=3.0, mode="scale")):
            moved = llama.logits(batch)
        after = llama.logits(batch)
    assert torch.equal(ref, same) and torch.equal(ref, after) and not torch.equal(ref, moved)


def test_bad_requests(llama):
    with pytest.raises(ModulationError, match="needs offsets"):
        modulation_hooks(llama, CIRCUIT, strength=1.0)
    with pytest.raises(ModulationError, match="only heads, neurons"):
        modulation_hooks(llama, [Component.parse("blocks.0.hook_resid_pre@-1")], factor=2.0,
                         mode="scale")
    with pytest.raises(ModulationError, match="takes a factor"):
        modulation_hooks(llama, CIRCUIT, strength=1.0, mode="scale")  # the old spelling of x2
    with pytest.raises(ModulationError, match="takes a strength"):
        modulation_hooks(llama, CIRCUIT, factor=2.0, offsets={})
    with pytest.raises(ModulationError, match="empty"):
        modulation_hooks(llama, [], factor=2.0, mode="scale")
