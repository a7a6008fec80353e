"""Edge attribution (EAP) between heads, MLPs and the metric, and edge patching to check it.

Nodes. *Upstream*: each attention head (its output ``z_h W_O,h``) and each MLP (its output) of
the layers the metric can see. *Downstream*: the input of each layer's attention (``attn_in``:
what ``input_layernorm`` reads), the input of each MLP (``mlp_in``: what
``post_attention_layernorm`` reads) and the metric itself (the residual stream it reads). An
edge ``u -> v`` exists when ``u`` writes to the residual stream before ``v`` reads it.

EAP (Syed et al. 2023) scores an edge by ``sum_pos (out_u' - out_u) . dM/d in_v``, where
``out_u' - out_u`` is how ``u``'s output changes when ``u`` is patched to the baseline, and the
gradient is taken through ``v`` only (a zero leaf added to ``v``'s own copy of its input, so the
residual skip around ``v`` carries no gradient to it). One forward and one backward give every
edge. **Edge patching** (the ground truth, :func:`edge_patch`) adds ``out_u' - out_u`` to
``v``'s input alone and reruns the model: only that edge changes.

Scope: pre-norm Llama-like blocks, whose parts ``probe.arch.BLOCK_PARTS`` names; other families
raise :class:`EdgeError`.

>>> ea = edge_attribution(lm, batch, metric, means)            # doctest: +SKIP
>>> top = ea.table().head(20)                                  # doctest: +SKIP
>>> truth = edge_patch(lm, batch, metric, means, top["edge"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.baselines import take
from circuits.metrics import Metric
from circuits.runs import forward_metric, forward_with_leaves
from probe.arch import ArchitectureError
from probe.errors import EmoprobeError
from probe.forward import Batch, run_with_cache
from probe.hooks import module_input_hooks
from probe.sites import Site


class EdgeError(EmoprobeError, ValueError):
    """Edge attribution cannot run on this model or these inputs."""


@dataclass
class EdgeAttribution:
    """EAP scores: ``per_row`` ``[rows, upstream, downstream]`` (NaN where no edge)."""

    upstream: list[str]
    downstream: list[str]
    per_row: np.ndarray
    baseline: str = ""

    @property
    def scores(self) -> np.ndarray:
        return self.per_row.mean(0)

    def table(self) -> pd.DataFrame:
        """One row per edge, largest ``|score|`` first."""
        s = self.scores
        u, d = np.nonzero(np.isfinite(s))
        df = pd.DataFrame({"edge": [f"{self.upstream[i]}->{self.downstream[j]}" for i, j in zip(u, d)],
                           "upstream": [self.upstream[i] for i in u],
                           "downstream": [self.downstream[j] for j in d],
                           "value": s[u, d], "n": self.per_row.shape[0]})
        return df.reindex(df["value"].abs().sort_values(ascending=False).index).reset_index(drop=True)


# ----------------------------------------------------------------------------- the nodes
def _blocks(lm):
    """The block list, checked to have the parts edge attribution uses (probe.arch.BLOCK_PARTS)."""
    try:
        for name in ("attn_in", "mlp_in", "attn_out", "mlp_out"):
            lm.arch.part(lm.model, 0, name)
    except ArchitectureError as e:
        raise EdgeError(f"edge attribution needs Llama-like pre-norm blocks: {e}") from e
    return lm.arch.layers(lm.model)


def nodes(lm, last: int) -> tuple[list[str], list[str], list[tuple[str, int, int]]]:
    """Upstream names, downstream names, and ``(kind, layer, head)`` of each upstream node."""
    n_heads = lm.arch.head_shape(lm.model)[0]
    up, info = [], []
    for layer in range(last + 1):
        for h in range(n_heads):
            up.append(f"blocks.{layer}.attn.hook_z[{h}]")
            info.append(("head", layer, h))
        up.append(f"blocks.{layer}.hook_mlp_out")
        info.append(("mlp", layer, -1))
    down = [f"blocks.{layer}.{k}" for layer in range(last + 1) for k in ("attn_in", "mlp_in")]
    return up, down + ["metric"], info


def _exists(kind: str, lu: int, down: str) -> bool:
    if down == "metric":
        return True
    lv, k = int(down.split(".")[1]), down.split(".")[2]
    if k == "attn_in":
        return lu < lv
    return lu < lv or (lu == lv and kind == "head")


def _deltas(lm, batch: Batch, baseline, last: int):
    """``{(kind, layer): out' - out}`` as ``[rows, pos, d_model]`` per head or per MLP."""
    sites = [Site(k, layer) for layer in range(last + 1) for k in ("attn.hook_z", "mlp.hook_post")]
    _, cache = run_with_cache(lm, batch, sites, stop=True)
    sources = baseline.bind(lm, batch, sites)
    rows = torch.arange(len(batch))
    _blocks(lm)
    out = {}
    for layer in range(last + 1):
        z = cache[Site("attn.hook_z", layer)]
        dz = sources(Site("attn.hook_z", layer), z, rows) - z  # [B, pos, H, dh]
        w_o = lm.arch.part(lm.model, layer, "attn_out").weight.to(dz.dtype)  # [d_model, H * dh]
        h, dh = dz.shape[-2:]
        out[("head", layer)] = torch.einsum("bphk,dhk->bphd", dz, w_o.reshape(-1, h, dh))
        post = cache[Site("mlp.hook_post", layer)]
        dpost = sources(Site("mlp.hook_post", layer), post, rows) - post
        out[("mlp", layer)] = dpost @ lm.arch.part(lm.model, layer, "mlp_out").weight.to(dpost.dtype).T
    return out


def _input_hooks(lm, fns: dict[str, callable]):
    """``{"blocks.L.attn_in" | "blocks.L.mlp_in": fn(x) -> x}`` on the hook layer: each rewrites
    the input of that block's attention norm or MLP norm only."""
    _blocks(lm)
    pairs = []
    for name, fn in fns.items():
        layer, kind = int(name.split(".")[1]), name.split(".")[2]
        pairs.append((lm.arch.part(lm.model, layer, kind), fn))
    return module_input_hooks(pairs)


# --------------------------------------------------------------------------- attribution
def edge_attribution(lm, batch: Batch, metric: Metric, baseline, *, batch_size: int = 8
                     ) -> EdgeAttribution:
    """EAP scores of every edge (module docstring) against ``baseline`` (mean, zero, pairs)."""
    if metric.layer is None or len(metric.sites) != 1:
        raise EdgeError("edge attribution needs a metric that reads one residual site "
                        "(a direction metric, e.g. direction:happiness@L24)")
    last = metric.layer
    up, down, info = nodes(lm, last)
    per_row = []
    for i in range(0, len(batch), batch_size):
        sub = take(batch, slice(i, i + batch_size))
        deltas = _deltas(lm, sub, baseline, last)
        leaves: dict[str, Tensor] = {}

        def tap(name):
            def fn(x):
                leaf = torch.zeros_like(x, requires_grad=True)
                leaves[name] = leaf
                return x + leaf
            return fn

        with _input_hooks(lm, {d: tap(d) for d in down if d != "metric"}):
            _, mleaf, m = forward_with_leaves(lm, sub, metric, list(metric.sites))
        names = [d for d in down if d != "metric"]
        grads = torch.autograd.grad(m.sum(), [leaves[d] for d in names] + [mleaf[metric.sites[0]]])
        g = dict(zip(names + ["metric"], grads))
        s = np.full((len(sub), len(up), len(down)), np.nan)
        for j, d in enumerate(down):
            for k, (kind, lu, h) in enumerate(info):
                if _exists(kind, lu, d):
                    delta = deltas[(kind, lu)][:, :, h] if kind == "head" else deltas[(kind, lu)]
                    s[:, k, j] = (delta * g[d].to(delta.dtype)).sum((1, 2)).double().numpy()
        per_row.append(s)
    return EdgeAttribution(up, down, np.concatenate(per_row), getattr(baseline, "name", ""))


# ----------------------------------------------------------------------------- patching
@torch.no_grad()
def edge_patch(lm, batch: Batch, metric: Metric, baseline, edges: Sequence[str], *,
               rows_per_forward: int = 48) -> np.ndarray:
    """Metric change per row when each edge alone carries its patched value: ``[rows, edges]``."""
    last = metric.layer
    up, down, info = nodes(lm, last)
    ui, di = {n: i for i, n in enumerate(up)}, {n: i for i, n in enumerate(down)}
    parsed = []
    for e in edges:
        u, _, d = str(e).partition("->")
        if u not in ui or d not in di or not _exists(info[ui[u]][0], info[ui[u]][1], d):
            raise EdgeError(f"no edge {e!r}: write upstream->downstream, e.g. "
                            f"{up[0]}->metric")
        parsed.append((info[ui[u]], d))
    n = len(batch)
    deltas = _deltas(lm, batch, baseline, last)
    base = forward_metric(lm, batch, metric).double().numpy()
    out = np.empty((n, len(edges)))
    per = max(1, rows_per_forward // n)
    for c0 in range(0, len(parsed), per):
        chunk = parsed[c0:c0 + per]
        rows = torch.arange(n).repeat(len(chunk))
        sub = take(batch, rows)
        adds: dict[str, Tensor] = {}
        for j, ((kind, lu, h), d) in enumerate(chunk):
            delta = deltas[(kind, lu)][:, :, h] if kind == "head" else deltas[(kind, lu)]
            t = adds.setdefault(d, torch.zeros(len(rows), *delta.shape[1:], dtype=delta.dtype))
            t[j * n:(j + 1) * n] += delta
        fns = {d: (lambda x, t=t: x + t.to(x.dtype)) for d, t in adds.items() if d != "metric"}
        site_fns = {}
        if "metric" in adds:
            t = adds["metric"]
            site_fns[metric.sites[0]] = lambda v, ctx, t=t: v + t.to(v.dtype)
        with _input_hooks(lm, fns):
            m = forward_metric(lm, sub, metric, site_fns).double().numpy()
        out[:, c0:c0 + len(chunk)] = (m.reshape(len(chunk), n) - base[None, :]).T
    return out
