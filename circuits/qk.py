"""AtP*'s QK fix: the effect of patching a query or key head, softmax recomputed exactly.

AtP's linear estimate ``(q' - q) . dM/dq`` is poor when the attention softmax saturates
(Kramar et al. 2024). The fix recomputes the attention pattern ``A'`` of every affected head
with the patched query (or key) exactly and keeps only the last step linear:
``sum_{s,t} (A' - A)[s, t] * dM/dA[s, t]``, with ``dM/dA = dM/dz . v`` read from the gradient at
``attn.hook_z`` and the values at ``attn.hook_v``.

Scope: rotary Llama-like attention (Llama, Mistral, Qwen2, and Qwen3's per-head q/k norms),
grouped-query attention kept native (a key head feeds ``n_heads / n_kv_heads`` query heads).
No sliding window shorter than the prompt, no soft-capping. Each call checks itself: the
recomputed ``A @ V`` must reproduce the model's ``hook_z``, or it raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from circuits.components import Group
from probe.arch import ROTARY_FAMILIES
from probe.errors import EmoprobeError
from probe.sites import Site


class QKFixError(EmoprobeError, ValueError):
    """The QK fix cannot be computed for this model."""


def qk_sites(lm, layers: Sequence[int]) -> list[Site]:
    """Sites whose values (q, k, v) and gradients (z) the fix needs."""
    if not lm.arch.rotary:
        raise QKFixError(f"the QK fix supports rotary Llama-like attention "
                         f"({', '.join(sorted(ROTARY_FAMILIES))}); "
                         f"{lm.arch.family!r} is not covered: use estimator 'atp' for queries/keys")
    return [Site(k, layer) for layer in layers
            for k in ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")]


def _rope(lm, batch, x: Tensor):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = lm.arch.rotary_embedding(lm.model)(x, batch.position_ids)
    return lambda q, k: apply_rotary_pos_emb(q, k, cos, sin)


def _pattern(attn, rope, q: Tensor, k: Tensor, allowed: Tensor, group: int) -> Tensor:
    """Attention pattern ``[b, H, s, t]`` from pre-rotary q ``[b,s,H,d]`` and k ``[b,t,G,d]``."""
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    qr, kr = rope(q.transpose(1, 2), k.transpose(1, 2))
    kr = kr.repeat_interleave(group, dim=1)
    scores = qr @ kr.transpose(-1, -2) * attn.scaling
    return scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)


def qk_fix(lm, gs: Sequence[Group], values, grads, sources, rows: Tensor, batch) -> dict[Group, Tensor]:
    """QK-fixed effect estimates ``{group: [rows, units]}`` for query and key groups."""
    n_heads = lm.arch.head_shape(lm.model)[0]
    group = n_heads // lm.arch.n_kv_heads(lm.model)
    cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
    width = batch.input_ids.shape[1]
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    if window is not None and width > window:
        raise QKFixError(f"prompts of {width} tokens exceed the sliding window ({window})")
    am = batch.attention_mask.bool()
    s_idx = torch.arange(width)
    allowed = (s_idx[None, :] <= s_idx[:, None])[None] & am[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padded queries: avoid empty rows
    out = {}
    for g in gs:
        L = g.site.layer
        attn = lm.arch.attention(lm.model, L)
        q, k, v = (values[Site(f"attn.hook_{x}", L)] for x in "qkv")
        dz = grads[Site("attn.hook_z", L)]
        rope = _rope(lm, batch, q)
        A = _pattern(attn, rope, q, k, allowed, group)
        v_rep = v.transpose(1, 2).repeat_interleave(group, dim=1)  # [b, H, t, d]
        _check(A @ v_rep, values[Site("attn.hook_z", L)], am, L)
        dA = dz.transpose(1, 2) @ v_rep.transpose(-1, -2)  # [b, H, s, t]
        if g.type == "queries":
            q2 = sources(Site("attn.hook_q", L), q, rows)
            per_head = ((_pattern(attn, rope, q2, k, allowed, group) - A) * dA).sum((-1, -2))
        else:
            k2 = sources(Site("attn.hook_k", L), k, rows)
            per_q = ((_pattern(attn, rope, q, k2, allowed, group) - A) * dA).sum((-1, -2))
            per_head = per_q.unflatten(1, (-1, group)).sum(-1)
        out[g] = per_head
    return out


def _check(z_rec: Tensor, z: Tensor, real: Tensor, layer: int) -> None:
    z_rec = z_rec.transpose(1, 2)[real]
    z = z[real]
    err = (z_rec - z).abs().max() / z.abs().max().clamp(min=1e-6)
    if not err < 1e-3:
        raise QKFixError(f"recomputed attention does not reproduce block {layer}'s head outputs "
                         f"(relative error {float(err):.2e}): this attention variant is not "
                         "covered by the QK fix; use estimator 'atp' for queries/keys")
