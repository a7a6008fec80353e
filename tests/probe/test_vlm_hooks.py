"""The hook layer on a multimodal model's backbone: positions, steering, generation, gradients."""

import pytest
import torch

from probe.interventions import add, replace
from probe.sites import Site
from probe.multimodal.encode import encode_multimodal
from tests.probe.test_vlm import TEXTS, media

IMAGE_FAMILIES = ("llava", "qwen2_vl", "gemma3")


def batch_of(lm, family, rows=(0, 1, 2), side="left"):
    kw = {k: [v[r] for r in rows] for k, v in media(family).items()}
    enc = encode_multimodal(lm.processor, [TEXTS[r] for r in rows], chat_template=True, **kw)
    return lm.batch(enc, padding_side=side)


@pytest.mark.parametrize("family", ("llava", "gemma3", "qwen2_audio"))
def test_positions_follow_the_processors_layout_and_the_padding(tiny_vlm, family):
    """Gemma 3's trunk hands its language model a prepared mask: ctx still sees the padding."""
    lm = tiny_vlm(family)
    batch = batch_of(lm, family)
    kind = "audio" if family == "qwen2_audio" else "image"
    seen = {}

    def look(value, ctx):
        seen.update(media=ctx.positions(kind), text=ctx.positions("text"), mask=ctx.attention_mask,
                    content=ctx.positions("content"))

    with torch.no_grad(), lm.hooks({"blocks.1.hook_resid_post": look}):
        lm.logits(batch)
    code = 3 if kind == "audio" else 1
    assert torch.equal(seen["mask"], batch.attention_mask)
    assert torch.equal(seen["media"], batch.modality == code)
    assert torch.equal(seen["text"], (batch.modality == 0) & batch.attention_mask.bool())
    assert not (seen["content"] & seen["media"]).any() and seen["media"][0].any()


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_steering_image_positions_is_causal_and_leaves_no_trace(tiny_vlm, family):
    lm = tiny_vlm(family)
    batch = batch_of(lm, family, rows=(0,))
    with torch.no_grad():
        before = lm.logits(batch)
        v = torch.randn(lm.arch.d_model(lm.model), generator=torch.Generator().manual_seed(0))
        with lm.hooks({"blocks.1.hook_resid_post": add(v, strength=8.0, positions="image")}):
            steered = lm.logits(batch)
        after = lm.logits(batch)
    first_image = int(torch.nonzero(batch.modality[0] == 1)[0])
    assert torch.equal(after, before)  # hooks removed: bit-identical
    assert torch.allclose(steered[0, :first_image], before[0, :first_image], atol=1e-5)
    assert not torch.allclose(steered[0, -1], before[0, -1], atol=1e-3)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_steered_generation_same_with_and_without_kv_cache(tiny_vlm, family, one_thread):
    lm = tiny_vlm(family)
    batch = batch_of(lm, family)
    v = torch.randn(lm.arch.d_model(lm.model), generator=torch.Generator().manual_seed(1))
    hook = {"blocks.0-1.hook_resid_post": add(v, strength=4.0, positions="last-prompt+generated")}
    plain = lm.generate(batch, max_new_tokens=6)
    with lm.hooks(hook):
        cached = lm.generate(batch, max_new_tokens=6)
        recomputed = lm.generate(batch, max_new_tokens=6, use_cache=False)
    assert cached == recomputed
    assert cached != plain
    alone = [lm.generate(batch_of(lm, family, rows=(r,)), max_new_tokens=6)[0] for r in range(3)]
    assert plain == alone  # left-padded batch with mixed media == one row at a time


def test_gradients_and_ablation_reach_image_tokens(tiny_vlm):
    lm = tiny_vlm("llava")
    batch = batch_of(lm, "llava")
    embed = Site("hook_embed")

    def metric(logits, b):
        return logits[torch.arange(len(b)), b.last, 5].sum()

    values, grads, m = lm.run_with_grads(batch, metric, [embed])
    image = batch.modality == 1
    padding = ~batch.attention_mask.bool()
    assert grads[embed][image].abs().sum() > 0 and grads[embed][padding].abs().sum() == 0
    # first-order check of the gradient against ablating the image tokens (mean embedding)
    mean = values[embed][image].mean(0)
    with torch.no_grad(), lm.hooks({embed: replace(mean, positions="image")}):
        ablated = metric(lm.logits(batch), batch)
    assert torch.isfinite(ablated) and ablated != m
