"""Our captured values equal TransformerLens' bridge hooks and nnsight's saved values.

Tolerances, and why:

* nnsight runs the very modules our hooks sit on, with the same inputs and kernels, and pools
  with the same batched matmul of the same shapes: the same computation, so its values must be
  bit-identical (``torch.equal``).
* Two *different* computations of one value (a mean pooled alone vs pooled in one matmul with
  other poolings, whose BLAS kernel may block the sum differently) agree only to rounding:
  they differ in the last float32 bit on some CPUs (Intel Xeon). Those comparisons allow a few
  units of rounding of the dtype (:func:`assert_same_up_to_rounding`).
* The bridge forces eager attention while our models run SDPA; fp32 kernels that sum in another
  order differ by ~1e-7 relative per operation. Measured: <= 4e-7 relative (per pooled vector)
  on the tiny models, <= 2e-6 on SmolLM2 after 30 layers. We require 1e-5 relative per vector:
  a wrong site (off by a norm, a sublayer, a position or a padding token) is off by >1e-2.
"""

from __future__ import annotations

import copy

import pytest
import torch

from probe.capture import (
    CaptureError,
    SiteHooks,
    forward_pooled,
    no_hooks_left,
    pad_batch,
    pooling_weights,
)
from probe.interop import boot_bridge, bridge_hook_name, capture_with_bridge, capture_with_nnsight
from probe.models import load_model
from probe.sites import ALL_KINDS, Site, parse_sites
from probe.tokens import encode
from tests.tiny import CORPUS, FAMILIES

pytestmark = pytest.mark.interop
pytest.importorskip("transformer_lens", reason="install the interop extra")
pytest.importorskip("nnsight", reason="install the interop extra")


ALL_SITES = ("hook_embed resid_pre resid_mid resid_post attn_out mlp_out attn.hook_z mlp.hook_post "
             "attn.hook_q attn.hook_k attn.hook_v blocks.1.attn.hook_z[1] blocks.1.attn.hook_k[1] "
             "blocks.0.mlp.hook_post[5]")
POOLINGS = ("last", "mean", "content-mean", "content-last")
REL_TOL = 1e-5


def _ours(lm, enc, sites, poolings, padding_side):
    """Reference: our hooks (SiteHooks + forward_pooled) on the same padded batch."""
    inputs = pad_batch(enc.ids, lm.tokenizer.pad_token_id, padding_side, lm.device)
    w = pooling_weights(enc.lengths, enc.content, enc.target, poolings,
                        width=inputs["input_ids"].shape[1], padding_side=padding_side)
    with SiteHooks(lm, sites) as hooks:
        return forward_pooled(lm, hooks, inputs, w)


def assert_rel_close(got, ref, site, tol=REL_TOL, scale=None):
    """Relative error per pooled vector (a head or neuron: relative to its whole site's vector)."""
    assert got.shape == ref.shape, (site, got.shape, ref.shape)
    norm = (ref if scale is None else scale).norm(dim=-1)
    err = ((got - ref).norm(dim=-1) / norm.clamp_min(1e-30)).max().item()
    assert err < tol, f"{site}: relative error {err:.2e} >= {tol:.0e}"


def assert_same_up_to_rounding(got, ref, ulps=8):
    """Equal up to ``ulps`` units of rounding of their dtype, relative to the largest value."""
    tol = ulps * torch.finfo(ref.dtype).eps * ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=0, atol=tol)


@pytest.fixture(scope="module", params=FAMILIES)
def lm_and_bridge(request, tiny_dir):
    lm = load_model(str(tiny_dir / request.param), device="cpu", dtype="float32")
    return lm, boot_bridge(lm)


@pytest.fixture(scope="module")
def enc(tiny_llama):
    return encode(tiny_llama.tokenizer, CORPUS[:6], chat_template=True)  # same tokenizer for all


def test_bridge_hook_names(tiny_llama):
    assert bridge_hook_name(Site("hook_resid_post", 3)) == "blocks.3.hook_resid_post"
    assert bridge_hook_name(Site("attn.hook_z", 3)) == "blocks.3.attn.hook_z"
    assert bridge_hook_name(Site("mlp.hook_post", 0)) == "blocks.0.mlp.hook_post"
    assert bridge_hook_name(Site("hook_embed")) == "blocks.0.hook_resid_pre"
    assert bridge_hook_name(Site("attn.hook_z", 3, head=2)) == "blocks.3.attn.hook_z"
    bridge = boot_bridge(tiny_llama)
    for site in parse_sites(ALL_SITES, n_layers=tiny_llama.n_layers):
        assert bridge_hook_name(site) in bridge.hook_dict
    assert {Site.parse(str(s)).kind for s in parse_sites(ALL_SITES, n_layers=2)} == set(ALL_KINDS)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_bridge_and_nnsight_equal_ours(lm_and_bridge, enc, padding_side):
    """Every site kind, every text pooling, both padding sides, every tiny family."""
    lm, bridge = lm_and_bridge
    sites = parse_sites(ALL_SITES, n_layers=lm.n_layers)
    ref = _ours(lm, enc, sites, POOLINGS, padding_side)
    via_bridge = capture_with_bridge(bridge, enc, sites, POOLINGS, padding_side=padding_side)
    via_nnsight = capture_with_nnsight(lm, enc, sites, POOLINGS, padding_side=padding_side)
    for s in sites:
        scale = ref[s.whole] if s.unit is not None else None
        assert_rel_close(via_bridge[s], ref[s], f"bridge {s}", scale=scale)
        assert torch.equal(via_nnsight[s], ref[s]), f"nnsight {s}"


def test_bridge_embed_convention_differs_for_learned_positions(tiny_dir):
    """TransformerLens' own hook_embed lacks GPT-2's position embedding; ours includes it."""
    lm = load_model(str(tiny_dir / "gpt2"), device="cpu", dtype="float32")
    bridge = boot_bridge(lm)
    ids = torch.tensor([[5, 6, 7, 8]])
    names = ("hook_embed", "hook_pos_embed")
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names, return_type=None,
                                     stop_at_layer=1)
    ours = capture_with_bridge(bridge, [[5, 6, 7, 8]], [Site("hook_embed")], ["mean"])
    tl_embed = cache["hook_embed"][0].mean(0)
    assert not torch.allclose(tl_embed, ours[Site("hook_embed")][0, 0], atol=1e-3)
    torch.testing.assert_close((cache["hook_embed"] + cache["hook_pos_embed"])[0].mean(0),
                               ours[Site("hook_embed")][0, 0])


def test_bridge_leaves_model_and_hooks_as_they_were(tiny_llama, enc):
    lm = tiny_llama
    ids = torch.tensor([enc.ids[0]])
    attn = lm.model.config._attn_implementation
    with torch.no_grad():
        before = lm.model(ids).logits
    with no_hooks_left(lm.model):
        bridge = boot_bridge(lm)
        with torch.no_grad():
            bridge_before = bridge(ids, return_type="logits")
        capture_with_bridge(bridge, enc, [Site("hook_resid_post", 1)], ["last"])
        with torch.no_grad():
            assert torch.equal(bridge(ids, return_type="logits"), bridge_before)
    assert lm.model.config._attn_implementation == attn  # the bridge got a copy
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, before)


def test_nnsight_paths_agree_and_leave_no_trace(tiny_dir, enc):
    import nnsight

    # Our own copy: wrapping instruments the model, so leave the shared tiny_llama alone.
    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    sites = [Site("hook_embed"), Site("hook_resid_pre", 0), Site("attn.hook_z", 1),
             Site("hook_resid_post", 1)]
    ids = torch.tensor([enc.ids[0]])
    with torch.no_grad():
        before = lm.model(ids).logits
    with no_hooks_left(lm.model):
        via_lm = capture_with_nnsight(lm, enc, sites, POOLINGS)
        via_hf = capture_with_nnsight(lm.model, enc, sites, POOLINGS, tokenizer=lm.tokenizer)
        traced = nnsight.TransformersModel(lm.model, tokenizer=copy.deepcopy(lm.tokenizer))
        via_user = capture_with_nnsight(traced, enc, sites, POOLINGS)
    assert lm.tokenizer.padding_side == "right"  # nnsight sets 'left' on the tokenizer it gets
    for s in sites:
        assert torch.equal(via_lm[s], via_hf[s]) and torch.equal(via_lm[s], via_user[s]), s
    assert torch.equal(via_lm[Site("hook_embed")], via_lm[Site("hook_resid_pre", 0)])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, before)


def test_plain_token_ids_with_spans_and_targets(lm_and_bridge):
    lm, bridge = lm_and_bridge
    ids = [[5, 6, 7, 8, 9], [10, 11, 12]]
    sites = [Site("hook_resid_post", 0)]
    got = capture_with_bridge(bridge, ids, sites, ["mean", "content-mean", "token"],
                              content=[(1, 3), (0, 3)], target=[2, 0])
    nn = capture_with_nnsight(lm, ids, sites, ["mean", "content-mean", "token"],
                              content=[(1, 3), (0, 3)], target=[2, 0])
    full = capture_with_nnsight(lm, ids, sites, ["mean"])[sites[0]]
    g = nn[sites[0]]
    assert_rel_close(got[sites[0]], g, sites[0])
    assert_same_up_to_rounding(g[1, 1], g[1, 0])  # content = the whole row: content-mean = mean
    assert_same_up_to_rounding(g[:, 0], full[:, 0])  # a mean pooled alongside others = alone
    assert not torch.allclose(g[0, 0], g[0, 1])


def test_errors_say_what_is_wrong(tiny_llama, enc):
    bridge = boot_bridge(tiny_llama)
    with pytest.raises(CaptureError, match="no hook 'blocks.99.hook_resid_post'"):
        capture_with_bridge(bridge, enc, [Site("hook_resid_post", 99)], ["last"])
    with pytest.raises(CaptureError, match="brings its own content"):
        capture_with_nnsight(tiny_llama, enc, [Site("hook_resid_post", 0)], ["last"],
                             content=[(0, 1)] * len(enc))
    with pytest.raises(CaptureError, match="target word"):
        capture_with_bridge(bridge, [[5, 6]], [Site("hook_resid_post", 0)], ["token"])
    with pytest.raises(CaptureError, match="padding side"):
        capture_with_bridge(bridge, [[5, 6]], [Site("hook_resid_post", 0)], ["last"],
                            padding_side="middle")


@pytest.mark.slow
def test_smollm2_resid_post_equals_bridge():
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    texts = ["I lost my keys again today.", "We won the final!", "The meeting is at noon."]
    enc = encode(lm.tokenizer, texts, chat_template=True)
    sites = [Site("hook_resid_post", 3), Site("hook_resid_post", 15)]
    ref = _ours(lm, enc, sites, ("last", "content-mean"), "right")
    got = capture_with_bridge(boot_bridge(lm), enc, sites, ("last", "content-mean"))
    for s in sites:
        assert_rel_close(got[s], ref[s], s)
