"""Batched per-row patching equals patching one component at a time with plain hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.baselines import MeanBaseline, PairBaseline, ZeroBaseline, take
from circuits.components import Component, groups
from circuits.metrics import direction
from circuits.patching import neuron_contributions, patch, sublayer_influence
from probe.forward import run_with_cache
from probe.sites import Site
from tests.circuits.conftest import TEXTS, direction_for
from tests.tiny import CORPUS

TOL = {"rtol": 1e-4, "atol": 1e-5}


def _reference(lm, batch, metric, sources, comp: Component, positions=8):
    """Patch ``comp`` alone through a plain hook on the full model."""
    from circuits.components import group_of, row_mask

    g = group_of(lm, comp, positions=positions)
    units = torch.full((len(batch),), comp.unit)

    def fn(value, ctx):
        m = row_mask(g, units, sources.mask, sources.last, value)
        return torch.where(m, sources(g.site, value), value)

    with torch.no_grad():
        read = {}
        s = metric.sites[0]
        with lm.hooks({g.site: fn, s: lambda v, ctx: read.__setitem__(s, v)}):
            lm.logits(batch)
        patched = metric(read, batch)
        _, cache = run_with_cache(lm, batch, [s])
    return patched - metric(cache, batch)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_batched_patching_equals_one_at_a_time(family_lm, family):
    lm = family_lm(family)
    batch = lm.batch(TEXTS[:3])
    metric = direction(direction_for(lm), layer=2, lm=lm)
    types = ("heads", "neurons", "sublayers", "resid")
    sites = [g.site for g in groups(lm, types, range(3), positions=4)]
    base = MeanBaseline.fit(lm, CORPUS[6:14], sites)
    comps = [Component(Site("attn.hook_z", 1, head=2)), Component(Site("attn.hook_z", 0, head=0)),
             Component(Site("mlp.hook_post", 2, neuron=5)), Component(Site("hook_attn_out", 1)),
             Component(Site("hook_mlp_out", 0)), Component(Site("hook_resid_pre", 2), position=-2),
             Component(Site("hook_resid_pre", 1), position=-1)]
    result = patch(lm, batch, metric, base, comps, rows_per_forward=8, resid_positions=4)
    sources = base.bind(lm, batch, sites)
    for i, c in enumerate(comps):
        ref = _reference(lm, batch, metric, sources, c, positions=4)
        torch.testing.assert_close(result.per_row[i], ref, **TOL)
    assert result.per_row.abs().max() > 1e-4
    if family == "llama":
        assert not result.notes  # started from later blocks, and that was checked
        assert result.compute.forward_row_blocks < len(comps) * len(batch) * 3 + 4 * len(batch) * 3
    else:
        assert result.compute.forward_passes > 0


def test_skipping_early_blocks_changes_nothing(llama):
    batch = llama.batch(TEXTS[:4])
    metric = direction(direction_for(llama, 1), layer=2, lm=llama)
    comps = [Component(Site("attn.hook_z", 2, head=h)) for h in range(4)]
    a = patch(llama, batch, metric, ZeroBaseline(), comps, skip=True)
    b = patch(llama, batch, metric, ZeroBaseline(), comps, skip=False)
    torch.testing.assert_close(a.per_row, b.per_row, **TOL)
    assert a.compute.forward_row_blocks < b.compute.forward_row_blocks


def test_pair_patching_recovers_the_source_run_when_everything_is_patched(llama):
    both = llama.batch(TEXTS[:4])
    target, source = take(both, [0, 1]), take(both, [2, 3])
    metric = direction(direction_for(llama, 2), layer=2, lm=llama)
    comps = [Component(Site("hook_resid_pre", 2), position=-1)]
    base = PairBaseline(source, positions="suffix")
    res = patch(llama, target, metric, base, comps, resid_positions=1)
    # The last token's residual entering the last block carries everything block 2 reads there
    # except attention to earlier positions, so the patched metric moves toward the source's.
    _, tc = run_with_cache(llama, target, [metric.sites[0]])
    _, sc = run_with_cache(llama, source, [metric.sites[0]])
    gap = metric(sc, source) - metric(tc, target)
    assert torch.corrcoef(torch.stack([res.per_row[0], gap]))[0, 1] > 0.9


def test_components_after_the_metric_are_refused(llama):
    batch = llama.batch(TEXTS[:2])
    metric = direction(direction_for(llama), layer=1, lm=llama)
    with pytest.raises(ValueError, match="after the metric's layer"):
        patch(llama, batch, metric, ZeroBaseline(), [Component(Site("hook_mlp_out", 2))])


def test_neuron_contributions_add_up_to_the_mlp_output_projection(llama):
    batch = llama.batch(TEXTS[:3])
    v = direction_for(llama).float()
    c = neuron_contributions(llama, batch, v, [1, 2])
    _, cache = run_with_cache(llama, batch, ["blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"])
    rows = torch.arange(3)
    for i, L in enumerate([1, 2]):
        proj = cache[Site("hook_mlp_out", L)][rows, batch.last] @ (v / v.norm())
        torch.testing.assert_close(c[:, i].sum(-1), proj, **TOL)


def test_influence_of_the_metric_blocks_mlp_is_one(llama):
    """What the last MLP adds along v reaches resid_post of the same block unchanged."""
    batch = llama.batch(TEXTS[:3])
    v = direction_for(llama).float()
    metric = direction(v, layer=2, lm=llama)
    df = sublayer_influence(llama, batch, metric, v, [1, 2], alpha=0.5)
    last = df[(df["kind"] == "hook_mlp_out") & (df["layer"] == 2)]["influence"].iloc[0]
    np.testing.assert_allclose(last, 1.0, rtol=1e-4)
    assert (df["sigma"] > 0).all() and len(df) == 4
