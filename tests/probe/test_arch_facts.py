"""Architecture facts that circuits relies on come from probe.arch, per family."""

from __future__ import annotations

import pytest

from probe.arch import ArchitectureError


def _load(tiny_dir, family):
    from probe.models import load_model

    return load_model(str(tiny_dir / family), device="cpu", dtype="float32")


def test_llama_like_attention_and_rotary_are_found_by_the_table(tiny_llama):
    arch, model = tiny_llama.arch, tiny_llama.model
    assert arch.skippable and arch.rotary
    assert arch.attention(model, 1) is model.model.layers[1].self_attn
    assert arch.rotary_embedding(model) is model.model.rotary_emb


def test_gpt2_is_neither_skippable_nor_rotary(tiny_dir):
    lm = _load(tiny_dir, "gpt2")
    assert not lm.arch.skippable and not lm.arch.rotary
    assert lm.arch.attention(lm.model, 0) is lm.model.transformer.h[0].attn
    with pytest.raises(ArchitectureError, match="no rotary"):
        lm.arch.rotary_embedding(lm.model)


def test_block_parts_come_from_the_table(tiny_llama, tiny_dir):
    block = tiny_llama.arch.layers(tiny_llama.model)[1]
    assert tiny_llama.arch.part(tiny_llama.model, 1, "attn_in") is block.input_layernorm
    assert tiny_llama.arch.part(tiny_llama.model, 1, "mlp_out") is block.mlp.down_proj
    lm = _load(tiny_dir, "gpt2")
    with pytest.raises(ArchitectureError, match="no block part"):
        lm.arch.part(lm.model, 0, "attn_in")
