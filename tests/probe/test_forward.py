"""Forward modes on the hook layer: generation with and without the KV cache, gradients, caches."""

from __future__ import annotations

import pytest
import torch

from probe.forward import generate_batch, make_batch, run_with_cache, run_with_grads
from probe.hooks import HookError, hooks
from probe.models import load_model
from probe.sites import Site
from tests.tiny import CORPUS
from tests.tolerance import assert_same_generations

PROMPTS = ["We won the final!", "The meeting is at noon in room four.", "Someone stole my bike."]


# Tiny models whose greedy continuations vary with the context (the tied-embedding tiny Gemma and
# GPT-2 repeat their last prompt token, which would make generation tests vacuous).
@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def lm(request, tiny_dir):
    return load_model(str(tiny_dir / request.param), device="cpu", dtype="float32")


def _steer(lm, mode="last-prompt+generated", scale=0.25, layer=1):
    v = scale * torch.randn(lm.arch.d_model(lm.model), generator=torch.Generator().manual_seed(0))
    return {Site("hook_resid_post", layer): lambda t, ctx: t + v * ctx.mask(mode, t)}


def _same_tokens(a: torch.Tensor, b: torch.Tensor) -> None:
    # two different float computations (KV cache vs recomputing, batched vs alone): a near-tie
    # may flip one greedy reply; a real bug changes most of them
    assert a.shape == b.shape, (a.shape, b.shape)
    assert_same_generations(a, b)


@pytest.mark.parametrize("mode", ["all", "last-prompt+generated", "generated", "generated:2",
                                  "opening:2"])
def test_kv_cache_equals_recomputing_the_sequence(lm, mode):
    """Greedy, hooked: with the KV cache (one new column per step) == without (all columns)."""
    kw = dict(max_new_tokens=8, min_new_tokens=8)
    with hooks(lm, _steer(lm, mode)), torch.no_grad():
        cached = generate_batch(lm, PROMPTS, use_cache=True, **kw)
        full = generate_batch(lm, PROMPTS, use_cache=False, **kw)
    _same_tokens(cached.new_ids, full.new_ids)
    with torch.no_grad():
        plain = generate_batch(lm, PROMPTS, **kw)
    assert not torch.equal(plain.new_ids, cached.new_ids)  # the hook did something
    assert len(set(cached.new_ids.flatten().tolist())) > 2  # and the test is not vacuous


def test_batched_left_padding_equals_one_by_one(lm):
    kw = dict(max_new_tokens=8, min_new_tokens=8)
    with hooks(lm, _steer(lm)), torch.no_grad():
        batched = generate_batch(lm, PROMPTS, **kw)
        single = [generate_batch(lm, [p], **kw) for p in PROMPTS]
    for i, one in enumerate(single):
        _same_tokens(batched.new_ids[i : i + 1], one.new_ids)


def test_positions_follow_prompt_and_generation(tiny_llama):
    lm = tiny_llama
    seen = []

    def record(t, ctx):
        seen.append({m: ctx.positions(m).clone() for m in
                     ("all", "prompt", "generated", "last-prompt", "last-prompt+generated",
                      "content", "last", "generated:0", "generated:2", "opening:1", "opening:2")}
                    | {"cols": ctx.columns.clone(), "w": ctx.prompt_width})

    batch = make_batch(lm, PROMPTS)
    width = batch.input_ids.shape[1]
    with hooks(lm, {"blocks.0.hook_resid_post": record}), torch.no_grad():
        generate_batch(lm, batch, max_new_tokens=4, min_new_tokens=4)
    first, later = seen[0], seen[1:]
    assert len(later) == 3 and all(s["w"] == width for s in seen)
    # generated:K: the generated tokens from the K-th (0-based) on; generated:0 is generated
    assert [bool(s["generated:2"].all()) for s in later] == [False, False, True]
    assert not first["generated:2"].any() and not later[0]["generated:2"].any()
    assert all(torch.equal(s["generated:0"], s["generated"]) for s in seen)   # boolean masks
    for bad in ("generated:", "generated:-1", "generated:x"):
        with pytest.raises(HookError, match="generated:K"), \
                hooks(lm, {"blocks.0.hook_resid_post": lambda t, ctx, b=bad: ctx.positions(b)}):
            lm.logits(batch)
    # opening:K: the states that predict the first K reply tokens (last prompt token, then the
    # first K - 1 generated ones); opening:1 is last-prompt
    assert torch.equal(first["opening:2"], first["last-prompt"])
    assert [bool(s["opening:2"].all()) for s in later] == [True, False, False]
    assert all(torch.equal(s["opening:1"], s["last-prompt"]) for s in seen)
    for bad in ("opening:", "opening:0", "opening:x"):
        with pytest.raises(HookError, match="opening:K"), \
                hooks(lm, {"blocks.0.hook_resid_post": lambda t, ctx, b=bad: ctx.positions(b)}):
            lm.logits(batch)
    assert torch.equal(first["all"], batch.attention_mask.bool())
    assert torch.equal(first["content"], batch.content) and not first["generated"].any()
    assert first["last-prompt"][:, -1].all() and first["last-prompt"].sum() == len(PROMPTS)
    assert torch.equal(first["last-prompt+generated"], first["last-prompt"])
    for i, s in enumerate(later):
        assert s["cols"].tolist() == [width + i] and s["generated"].all() and s["last"].all()
        assert not s["prompt"].any() and not s["content"].any()
    # a row-relative token range: token 1 of each row, wherever its padding puts it
    with hooks(lm, {"blocks.0.hook_resid_post": lambda t, ctx: seen.append(ctx.positions(range(1, 2)))}):
        lm.logits(batch)
    cols = seen[-1].float().argmax(1)
    first_real = batch.attention_mask.float().argmax(1)
    assert torch.equal(cols, first_real + 1) and seen[-1].sum() == len(PROMPTS)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradients_equal_finite_differences(tiny_dir, family, monkeypatch):
    """Central differences in float64 agree with the backward pass to ~1e-9 relative.

    Llama's RMSNorm computes in float32 whatever the model's dtype, which would put float32
    noise into the differences; the test swaps in the same formula in the input's dtype.
    """
    import transformers.models.llama.modeling_llama as llama

    def rms_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", rms_norm)
    lm = load_model(str(tiny_dir / family), device="cpu", dtype="float32")
    lm.model.double()
    batch = make_batch(lm, CORPUS[:3])
    target = 7

    def metric(logits, b):
        return logits[torch.arange(len(b)), b.last, target].sum()

    sites = [Site("hook_resid_mid", 0), Site("attn.hook_z", 1, head=2), Site("mlp.hook_post", 1),
             Site("hook_resid_post", 1), Site("attn.hook_k", 1)]
    values, grads, m = run_with_grads(lm, batch, metric, sites)
    for s in sites:
        assert grads[s].shape == values[s].shape and grads[s].abs().sum() > 0, s
        u = torch.randn(values[s].shape, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
        eps = 1e-5
        f = []
        for sign in (1, -1):
            with hooks(lm, {s: lambda t, ctx, sign=sign: t + sign * eps * u}), torch.no_grad():
                f.append(metric(lm.logits(batch), batch))
        fd = (f[0] - f[1]) / (2 * eps)
        torch.testing.assert_close(fd, (grads[s] * u).sum(), rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(m, metric(lm.logits(batch), batch), rtol=1e-12, atol=1e-12)


def test_gradients_of_a_site_metric_stop_the_forward(tiny_llama):
    lm = tiny_llama
    batch = make_batch(lm, CORPUS[:2])
    v = torch.randn(lm.arch.d_model(lm.model), generator=torch.Generator().manual_seed(0))
    late = Site("hook_resid_post", 1)
    calls = []
    handle = lm.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        values, grads, m = run_with_grads(
            lm, batch, lambda acts, b: (acts[late][torch.arange(len(b)), b.last] @ v).sum(),
            [Site("hook_resid_post", 0)], metric_sites=[late])
    finally:
        handle.remove()
    assert calls == [] and grads[Site("hook_resid_post", 0)].abs().sum() > 0
    _, cache = run_with_cache(lm, batch, [late])
    torch.testing.assert_close(m, (cache[late][torch.arange(len(batch)), batch.last] @ v).sum())
    with pytest.raises(HookError, match="does not depend"):
        run_with_grads(lm, batch, lambda logits, b: torch.tensor(1.0), [Site("hook_resid_post", 0)])


def _saved_bytes(fn) -> int:
    """Bytes autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_no_graph_is_kept_before_the_first_site(tiny_dir):
    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    batch = make_batch(lm, CORPUS[:4])
    late = Site("hook_resid_post", lm.n_layers - 1)

    def metric(acts, b):
        return acts[late][:, -1].sum()

    def run(site):
        return lambda: run_with_grads(lm, batch, metric, [site], metric_sites=[late])
    early_bytes = _saved_bytes(run(Site("hook_resid_pre", 0)))
    late_bytes = _saved_bytes(run(Site("hook_resid_pre", lm.n_layers - 1)))
    assert 0 < late_bytes < early_bytes / 2  # one block's graph instead of all of them


def test_intervention_recipes(tiny_llama):
    """add / zero / mean-ablate / patch / project_out do what the docs page says."""
    from probe.interventions import add, patch, project_out, replace_with, zero

    import dataclasses

    lm = tiny_llama
    clean = make_batch(lm, CORPUS[:2])
    ids = clean.input_ids.clone()
    ids[:, -3] = 7  # a corrupt run: one token changed, every position aligned
    corrupt = dataclasses.replace(clean, input_ids=ids)
    site = Site("hook_resid_post", 0)
    _, c_clean = run_with_cache(lm, clean, [site])
    with torch.no_grad():
        ref_clean, ref_corrupt = lm.logits(clean), lm.logits(corrupt)
    assert not torch.allclose(ref_clean, ref_corrupt, rtol=1e-3, atol=1e-3)
    with hooks(lm, {site: patch(c_clean[site])}), torch.no_grad():
        torch.testing.assert_close(lm.logits(corrupt), ref_clean, rtol=1e-4, atol=1e-4)
    u = torch.randn(lm.arch.d_model(lm.model))
    with hooks(lm, {site: project_out(u)}):
        _, got = run_with_cache(lm, clean, [site])
    assert (got[site] @ (u / u.norm())).abs().max() < 1e-3
    with hooks(lm, {site: [zero(), add(u, strength=2.0, positions="last")]}):
        _, got = run_with_cache(lm, clean, [site])
    last = got[site][:, -1]
    torch.testing.assert_close(last, (2.0 * u).expand_as(last))
    assert got[site][:, :-1].abs().max() == 0
    mean = c_clean[site].mean((0, 1))
    with hooks(lm, {site: replace_with(mean, positions="prompt")}):
        _, got = run_with_cache(lm, clean, [site])
    torch.testing.assert_close(got[site][clean.attention_mask.bool()],
                               mean.expand(int(clean.attention_mask.sum()), -1))
    with pytest.raises(HookError, match="same rows and token positions"), \
            hooks(lm, {site: patch(c_clean[site][:1])}), torch.no_grad():
        lm.logits(clean)


@pytest.mark.slow
def test_smollm2_steered_generation_with_and_without_cache():
    """The embedded model (grouped-query attention, 9 query / 3 KV heads), chat template on."""
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    prompts = ["Tell me about your day.", "What is a good name for a cat?"]
    _, cache = run_with_cache(lm, prompts, ["blocks.12.hook_resid_post"], stop=True)
    rms = cache[Site("hook_resid_post", 12)].pow(2).mean().sqrt()
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    v = 2.0 * rms * v / v.norm() * 576 ** 0.5  # RMS of v per coordinate: 2x the residual's
    fns = {"blocks.10-14.hook_resid_post": lambda t, ctx: t + v * ctx.mask("last-prompt+generated", t),
           "blocks.3.attn.hook_k[1]": lambda t, ctx: 0.5 * t}
    kw = dict(max_new_tokens=8, min_new_tokens=8)
    with torch.no_grad(), lm.hooks(fns):
        cached = generate_batch(lm, prompts, **kw)
        full = generate_batch(lm, prompts, use_cache=False, **kw)
        one = generate_batch(lm, prompts[1:], **kw)
    plain = generate_batch(lm, prompts, **kw)
    _same_tokens(cached.new_ids, full.new_ids)
    _same_tokens(cached.new_ids[1:], one.new_ids)
    assert cached.texts != plain.texts and all(cached.texts)
