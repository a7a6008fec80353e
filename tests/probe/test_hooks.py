"""The hook layer writes what each site's name promises, on every family, and leaves no trace.

Tolerances: a write and its reference are different float computations unless stated, so they
are compared with float32 tolerances (rtol/atol 1e-4 on values of order 1-100); ``torch.equal`` is
used only where both sides run literally the same operations.
"""

from __future__ import annotations

import copy

import pytest
import torch

from probe.capture import no_hooks_left
from probe.forward import make_batch, run_with_cache
from probe.hooks import HookError, hooks
from probe.models import load_model
from probe.sites import Site
from tests.tiny import CORPUS, FAMILIES

TEXTS = CORPUS[:4]
TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tiny_dir):
    return load_model(str(tiny_dir / request.param), device="cpu", dtype="float32")


def _vec(lm, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(lm.arch.d_model(lm.model), generator=g)


def _read(lm, batch, sites, fns=None):
    """Values at ``sites`` while ``fns`` write (reads registered after the writes)."""
    with hooks(lm, fns or {}):
        _, cache = run_with_cache(lm, batch, sites)
    return cache


def _add(v):
    return lambda t, ctx: t + v


def test_attn_out_write_moves_resid_mid_by_exactly_v(lm):
    batch = make_batch(lm, TEXTS)
    v = _vec(lm)
    mid = Site("hook_resid_mid", 1)
    clean = _read(lm, batch, [mid])[mid]
    moved = _read(lm, batch, [mid], {Site("hook_attn_out", 1): _add(v)})[mid]
    torch.testing.assert_close(moved - clean, v.expand_as(clean), **TOL)


def test_resid_pre_write_equals_resid_post_write_of_the_layer_before(lm):
    batch = make_batch(lm, TEXTS)
    v = _vec(lm, 1)
    with torch.no_grad(), hooks(lm, {Site("hook_resid_pre", 2): _add(v)}):
        a = lm.logits(batch)
    with torch.no_grad(), hooks(lm, {Site("hook_resid_post", 1): _add(v)}):
        b = lm.logits(batch)
    assert torch.equal(a, b)  # the same addition on the same tensor, handed to the same block


def test_resid_mid_write_reaches_the_residual_stream(lm):
    """A write at resid_mid is what the MLP and every later block see (not the MLP's input only)."""
    batch = make_batch(lm, TEXTS)
    v = _vec(lm, 2)
    L = 1
    sites = [Site("hook_resid_mid", L), Site("hook_mlp_out", L), Site("hook_resid_post", L)]
    clean = _read(lm, batch, sites)
    hooked = _read(lm, batch, sites, {Site("hook_resid_mid", L): _add(v)})
    mid, mlp, post = (hooked[s] for s in sites)
    torch.testing.assert_close(mid, clean[sites[0]] + v, **TOL)
    torch.testing.assert_close(post, mid + mlp, **TOL)  # the residual carries the write
    assert not torch.allclose(mlp, clean[sites[1]], **TOL)  # and the MLP saw it
    with torch.no_grad(), hooks(lm, {Site("hook_resid_mid", L): _add(v)}):
        a = lm.logits(batch)
    with torch.no_grad(), hooks(lm, {Site("hook_attn_out", L): _add(v)}):
        b = lm.logits(batch)
    torch.testing.assert_close(a, b, **TOL)  # adding v to resid_mid == adding it to attn_out


def test_zeroing_one_head_equals_zeroing_its_slice_of_o_proj(lm):
    batch = make_batch(lm, TEXTS)
    n_heads, d_head = lm.arch.head_shape(lm.model)
    head, L = n_heads - 1, 1
    with torch.no_grad(), hooks(lm, {Site("attn.hook_z", L, head=head): lambda t, ctx: 0 * t}):
        hooked = lm.logits(batch)
    ref = copy.deepcopy(lm)
    o_proj, _ = ref.arch.module(ref.model, "attn.hook_z", L)
    with torch.no_grad():
        w = o_proj.weight
        # nn.Linear is [out, in]; GPT-2's Conv1D is [in, out]: zero the head's input features.
        cols = slice(head * d_head, (head + 1) * d_head)
        (w[:, cols] if isinstance(o_proj, torch.nn.Linear) else w[cols]).zero_()
        expected = ref.logits(batch)
    torch.testing.assert_close(hooked, expected, **TOL)


def test_kv_head_and_neuron_writes_are_their_slices(lm):
    """hook_v[h] is key/value head h (GQA kept as is); mlp.hook_post[n] is one neuron."""
    batch = make_batch(lm, TEXTS)
    n_kv = lm.arch.n_kv_heads(lm.model)
    d_head = lm.arch.head_shape(lm.model)[1]
    L = 0
    whole = Site("attn.hook_v", L)
    cache = _read(lm, batch, [whole, Site("attn.hook_v", L, head=n_kv - 1)])
    assert cache[whole].shape[-2:] == (n_kv, d_head)
    torch.testing.assert_close(cache[Site("attn.hook_v", L, head=n_kv - 1)], cache[whole][..., -1, :])

    def zero_last(t, ctx):
        t = t.clone()
        t[..., -1, :] = 0
        return t
    with torch.no_grad(), hooks(lm, {Site("attn.hook_v", L, head=n_kv - 1): lambda t, ctx: 0 * t}):
        a = lm.logits(batch)
    with torch.no_grad(), hooks(lm, {whole: zero_last}):
        b = lm.logits(batch)
    assert torch.equal(a, b)  # both write zeros into the same slice of the same tensor
    neuron = Site("mlp.hook_post", L, neuron=3)
    post = Site("mlp.hook_post", L)
    got = _read(lm, batch, [post], {neuron: lambda t, ctx: t + 5.0})[post]
    clean = _read(lm, batch, [post])[post]
    diff = got - clean
    torch.testing.assert_close(diff[..., 3], torch.full_like(diff[..., 3], 5.0), **TOL)
    assert diff[..., :3].abs().max() == 0 and diff[..., 4:].abs().max() == 0


def test_logits_bit_identical_after_hooks_are_removed(lm):
    batch = make_batch(lm, TEXTS)
    with torch.no_grad():
        before = lm.logits(batch)
    with no_hooks_left(lm.model):
        with torch.no_grad(), hooks(lm, {"resid_mid": _add(_vec(lm)), "blocks.0.attn.hook_z[0]":
                                         lambda t, ctx: 0 * t}):
            during = lm.logits(batch)
        with pytest.raises(RuntimeError, match="boom"), hooks(lm, {"resid_post": _add(_vec(lm))}):
            raise RuntimeError("boom")
    with torch.no_grad():
        after = lm.logits(batch)
    assert not torch.allclose(during, before)
    assert torch.equal(before, after)


def test_bad_hooks_say_what_is_wrong(tiny_llama):
    lm = tiny_llama
    batch = make_batch(lm, TEXTS[:1])
    with pytest.raises(HookError, match=r"returned shape"), torch.no_grad(), \
            hooks(lm, {"blocks.0.hook_resid_post": lambda t, ctx: t[..., :3]}):
        lm.logits(batch)
    with pytest.raises(HookError, match="return a Tensor"), torch.no_grad(), \
            hooks(lm, {"blocks.0.hook_resid_post": lambda t, ctx: 3.0}):
        lm.logits(batch)
    with pytest.raises(Exception, match="out of range"):
        hooks(lm, {"blocks.0.attn.hook_z[99]": lambda t, ctx: None}).__enter__()
    with pytest.raises(HookError, match="callables"):
        hooks(lm, {"blocks.0.hook_resid_post": "not a function"}).__enter__()


def test_stores_refuse_sites_they_cannot_hold(tiny_llama, toy_dataset, tmp_path):
    from probe.cache import CacheConfig, cache_activations
    from probe.store import StoreError

    for sites in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_z[1]"):
        with pytest.raises(StoreError, match="cannot be cached into a store"):
            cache_activations(tiny_llama, toy_dataset, config=CacheConfig(sites=sites),
                              out=tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()
