"""Baselines replace only stimulus positions, with the right values; misaligned pairs are refused."""

from __future__ import annotations

import pytest
import torch

from circuits.baselines import (
    AlignmentError,
    MeanBaseline,
    PairBaseline,
    ZeroBaseline,
    check_aligned,
    position_mask,
    repeat,
    suffix_lengths,
    take,
)
from probe.forward import run_with_cache
from probe.sites import Site
from tests.circuits.conftest import TEXTS

SITES = [Site("hook_mlp_out", 1), Site("attn.hook_z", 0)]


def test_position_masks_follow_the_template(llama):
    batch = llama.batch(TEXTS[:3])
    stim, suf = position_mask(batch, "stimulus"), position_mask(batch, "suffix")
    assert (suf <= stim).all() and (stim <= batch.attention_mask.bool()).all()
    assert (stim & ~suf == batch.content).all()  # stimulus = content + template suffix
    assert set(suffix_lengths(batch).tolist()) == {2}  # "</s><|assistant|>" in the tiny template
    assert stim[:, -1].all()


def test_mean_baseline_is_the_template_aware_mean(llama):
    ref = llama.batch(TEXTS)
    mb = MeanBaseline.fit(llama, ref, SITES, batch_size=4)
    _, cache = run_with_cache(llama, ref, SITES)
    for s in SITES:
        v = cache[s]
        torch.testing.assert_close(mb.content[s], v[ref.content].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mb.suffix[s][0], v[:, -1].mean(0), rtol=1e-5, atol=1e-6)


def test_sources_replace_stimulus_positions_only(llama):
    batch = llama.batch(TEXTS[:3])
    mb = MeanBaseline.fit(llama, TEXTS, SITES)
    src = mb.bind(llama, batch, SITES)
    _, cache = run_with_cache(llama, batch, SITES)
    s = SITES[0]
    out = src(s, cache[s], torch.arange(3))
    keep = ~position_mask(batch)
    assert torch.equal(out[keep], cache[s][keep])  # untouched outside: the same tensor values
    torch.testing.assert_close(out[batch.content], mb.content[s].expand_as(out[batch.content]))
    torch.testing.assert_close(out[:, -1], mb.suffix[s][0].expand_as(out[:, -1]))
    zero = ZeroBaseline().bind(llama, batch, SITES)(s, cache[s])
    assert (zero[~keep] == 0).all() and torch.equal(zero[keep], cache[s][keep])


def test_mean_baseline_round_trips_through_safetensors(llama, tmp_path):
    mb = MeanBaseline.fit(llama, TEXTS, SITES)
    back = MeanBaseline.load(mb.save(tmp_path / "means.safetensors"))
    assert back.n == mb.n and set(back.content) == set(mb.content)
    for s in SITES:
        assert torch.equal(back.content[s], mb.content[s]) and torch.equal(back.suffix[s], mb.suffix[s])


def test_missing_means_and_other_templates_are_refused(llama):
    mb = MeanBaseline.fit(llama, TEXTS, SITES[:1])
    with pytest.raises(AlignmentError, match="no means for"):
        mb.bind(llama, llama.batch(TEXTS[:2]), SITES)
    raw = llama.batch(TEXTS[:2], chat_template=False)
    with pytest.raises(AlignmentError, match="suffixes of"):
        mb.bind(llama, raw, SITES[:1])


def test_misaligned_pairs_are_refused_with_a_fix(llama):
    a = llama.batch(TEXTS[:2])
    b = llama.batch(TEXTS[2:4])
    with pytest.raises(AlignmentError, match="cannot be patched|do not align"):
        PairBaseline(b).bind(llama, a, SITES)
    both = llama.batch(TEXTS[:4])
    a, b = take(both, [0, 1]), take(both, [2, 3])
    with pytest.raises(AlignmentError, match="align='suffix'"):
        check_aligned(a, b, "stimulus")
    check_aligned(a, b, "suffix")  # the template suffix aligns from the end


def test_pair_sources_are_the_source_runs_values(llama):
    both = llama.batch(TEXTS[:4])
    a, b = take(both, [0, 1]), take(both, [2, 3])
    src = PairBaseline(b, positions="suffix", batch_size=1).bind(llama, a, SITES)
    _, ca = run_with_cache(llama, a, SITES)
    _, cb = run_with_cache(llama, b, SITES)
    s = SITES[1]
    out = src(s, ca[s], torch.tensor([0, 1]))
    suf = position_mask(a, "suffix")
    assert suf.sum() == 4
    torch.testing.assert_close(out[suf], cb[s][suf])
    torch.testing.assert_close(out[~suf], ca[s][~suf])


def test_take_and_repeat_keep_rows_consistent(llama):
    batch = llama.batch(TEXTS[:3])
    r = repeat(batch, 2)
    assert len(r) == 6 and torch.equal(r.input_ids[3:], batch.input_ids)
    assert r.lengths[4] == batch.lengths[1] and torch.equal(take(r, [5]).last, batch.last[2:])
