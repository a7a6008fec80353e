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


def test_a_family_registered_like_llama_gets_every_llama_fact(tiny_llama, monkeypatch):
    from probe import arch

    for name in ("FAMILIES", "BLOCK_PARTS", "SKIPPABLE_FAMILIES", "ROTARY_FAMILIES"):
        # registration writes these module tables: the test works on copies
        monkeypatch.setattr(arch, name, type(getattr(arch, name))(getattr(arch, name)))
    arch.register_family("llama_copy", arch.FAMILIES["llama"], like="llama")
    a = arch.Architecture("llama_copy", arch.FAMILIES["llama_copy"], tiny_llama.arch.layers_path)
    assert a.skippable and a.rotary
    block = tiny_llama.arch.layers(tiny_llama.model)[0]
    assert a.part(tiny_llama.model, 0, "mlp_in") is block.post_attention_layernorm
    arch.register_family("gpt2_copy", arch.FAMILIES["gpt2"], like="gpt2")
    b = arch.Architecture("gpt2_copy", arch.FAMILIES["gpt2_copy"], "transformer.h")
    assert not b.skippable and not b.rotary
    with pytest.raises(ArchitectureError, match="not a known family"):
        arch.register_family("x", arch.FAMILIES["llama"], like="nope")
