"""Capture equals Hugging Face's own values, batched equals one-at-a-time, hooks leave no trace."""

from __future__ import annotations

import pytest
import torch

from probe.capture import SiteHooks, iter_blocks, no_hooks_left, pad_batch, pooling_weights
from probe.models import load_model
from probe.sites import Site, parse_sites
from probe.tokens import encode
from tests.tiny import CORPUS, FAMILIES

TEXTS = CORPUS[:6]


def _capture(lm, sites, poolings=("mean", "last"), *, batch_size=8, padding_side="right",
             chat_template=False):
    enc = encode(lm.tokenizer, TEXTS, chat_template=chat_template)
    blocks = list(iter_blocks(lm, enc, sites, poolings, batch_size=batch_size, block_size=4,
                              padding_side=padding_side))
    return enc, {s: torch.cat([b[s] for _, b in blocks]) for s in sites}


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tiny_dir):
    return load_model(str(tiny_dir / request.param), device="cpu", dtype="float32")


def test_resid_post_equals_hf_hidden_states(lm):
    sites = parse_sites("hook_embed blocks.0-1.hook_resid_post", n_layers=lm.n_layers)
    enc, got = _capture(lm, sites)
    for i, ids in enumerate(enc.ids):
        with torch.no_grad():
            hs = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        # hidden_states[L + 1] is block L's output (except the last entry, which is post-norm)
        torch.testing.assert_close(got[Site("hook_embed")][i, 0], hs[0][0].mean(0), rtol=1e-4, atol=1e-4)
        for layer in (0, 1):
            ref = hs[layer + 1][0]
            torch.testing.assert_close(got[Site("hook_resid_post", layer)][i, 0], ref.mean(0),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got[Site("hook_resid_post", layer)][i, 1], ref[-1],
                                       rtol=1e-4, atol=1e-4)


def test_sublayers_add_up(lm):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out: the tables are right."""
    sites = parse_sites("resid_pre resid_mid resid_post attn_out mlp_out", n_layers=lm.n_layers)
    _, got = _capture(lm, sites)
    for layer in range(lm.n_layers):
        pre, mid, post, attn, mlp = (got[Site(k, layer)] for k in (
            "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"))
        torch.testing.assert_close(pre + attn, mid, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mid + mlp, post, rtol=1e-4, atol=1e-4)
        if layer + 1 < lm.n_layers:
            torch.testing.assert_close(post, got[Site("hook_resid_pre", layer + 1)])


def test_z_and_neurons_project_to_sublayer_outputs(lm):
    """o_proj(z) is attention's output and down_proj(neurons) the MLP's, for token-wise pooling."""
    sites = parse_sites("blocks.1.attn.hook_z blocks.1.mlp.hook_post", n_layers=lm.n_layers)
    _, got = _capture(lm, sites, poolings=("last",))
    block = lm.arch.layers(lm.model)[1]
    o_proj = block.attn.c_proj if lm.arch.family == "gpt2" else block.self_attn.o_proj
    down = block.mlp.c_proj if lm.arch.family == "gpt2" else block.mlp.down_proj
    n_heads, d_head = lm.arch.head_shape(lm.model)
    z = got[Site("attn.hook_z", 1)]
    assert z.shape[-1] == n_heads * d_head
    assert got[Site("mlp.hook_post", 1)].shape[-1] == lm.arch.d_mlp(lm.model)
    if lm.arch.family in ("gemma2", "gemma3_text"):
        return  # their attn_out is normalised after o_proj; covered by test_sublayers_add_up
    _, ref = _capture(lm, parse_sites("blocks.1.hook_attn_out blocks.1.hook_mlp_out", n_layers=lm.n_layers),
                      poolings=("last",))
    with torch.no_grad():
        torch.testing.assert_close(o_proj(z), ref[Site("hook_attn_out", 1)], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(down(got[Site("mlp.hook_post", 1)]), ref[Site("hook_mlp_out", 1)],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_one_at_a_time(lm, padding_side):
    sites = parse_sites("hook_embed resid_post attn.hook_z", n_layers=lm.n_layers)
    poolings = ("last", "mean", "content-mean", "content-last")
    _, batched = _capture(lm, sites, poolings, batch_size=6, padding_side=padding_side,
                          chat_template=True)
    _, single = _capture(lm, sites, poolings, batch_size=1, padding_side=padding_side,
                         chat_template=True)
    for s in sites:
        torch.testing.assert_close(batched[s], single[s], rtol=1e-4, atol=1e-4)


def test_hooks_removed_and_logits_bit_identical(lm):
    ids = torch.tensor([encode(lm.tokenizer, TEXTS[:1], chat_template=False).ids[0]])
    with torch.no_grad():
        before = lm.model(ids).logits
    sites = parse_sites("hook_embed blocks.0.hook_resid_post blocks.1.attn.hook_z", n_layers=lm.n_layers)
    with no_hooks_left(lm.model):
        _capture(lm, sites)
        with pytest.raises(RuntimeError), SiteHooks(lm, sites):
            raise RuntimeError("boom inside the hooks")
    with torch.no_grad():
        after = lm.model(ids).logits
    assert torch.equal(before, after)


def test_forward_stops_after_deepest_site(tiny_llama):
    lm = tiny_llama
    calls = []
    last = lm.arch.layers(lm.model)[-1]
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        _capture(lm, [Site("hook_resid_post", 0)])
        assert calls == []
        _capture(lm, [Site("hook_resid_post", lm.n_layers - 1)])
        assert calls
    finally:
        handle.remove()


def test_no_lm_head_called(tiny_llama):
    calls = []
    handle = tiny_llama.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        _capture(tiny_llama, parse_sites("resid_post", n_layers=tiny_llama.n_layers))
    finally:
        handle.remove()
    assert calls == []


def test_pooling_weights_left_and_right():
    w_r = pooling_weights([3, 2], [(1, 3), (0, 1)], [2, 0], ["last", "mean", "content-last", "token"],
                          width=3, padding_side="right")
    w_l = pooling_weights([3, 2], [(1, 3), (0, 1)], [2, 0], ["last", "mean", "content-last", "token"],
                          width=3, padding_side="left")
    assert w_r[1, 0].tolist() == [0, 1, 0] and w_l[1, 0].tolist() == [0, 0, 1]
    assert w_r[1, 1].tolist() == [0.5, 0.5, 0] and w_l[1, 1].tolist() == [0, 0.5, 0.5]
    assert w_l[1, 2].tolist() == [0, 1, 0] and w_l[0, 3].tolist() == [0, 0, 1]
    assert torch.allclose(w_r.sum(-1), torch.ones(2, 4))


def test_position_ids_follow_padding():
    b = pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="left", device="cpu")
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_content_span_excludes_template(tiny_llama):
    enc = encode(tiny_llama.tokenizer, ["We won the final!"], chat_template=True,
                 target_words=["final"])
    c0, c1 = enc.content[0]
    tok = tiny_llama.tokenizer
    assert tok.decode(enc.ids[0][c0:c1]).strip() == "We won the final!"
    assert "final" in tok.decode([enc.ids[0][enc.target[0]]])
    assert c0 > 0 and c1 < len(enc.ids[0])  # template tokens on both sides
