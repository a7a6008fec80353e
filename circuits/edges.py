"""Edge attribution (EAP, two sharper variants and a hybrid) between heads, MLPs and the metric, and edge
patching to check it.

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

Two estimators between the two (``estimator=``, :data:`ESTIMATORS`) take the nonlinearity right
behind the edge exactly and the rest linearly: ``eap-norm`` the norm ``v`` reads,
``eap-sublayer`` the norm and the attention or MLP it feeds (one sublayer call per edge, stacked;
exact where nothing nonlinear follows ``v``, e.g. the last MLP before the metric). On SmolLM2 the
largest edges leave layer 0's and layer 2's MLPs, whose mean-ablated change is large enough to
rescale the norm and move attention patterns, and EAP gets some of them with the wrong sign.
``eap-sublayer`` agrees with edge patching better than EAP for every emotion on held-out
prompts (docs/circuits.md), at about 30x EAP's cost (one sublayer per edge and prompt; patching
every edge costs about 45x more again). ``estimator="eap"`` for speed. ``hybrid`` (the default
of ``probe circuits --edges``) patches the edges of the few upstream nodes whose ablation
changes the residual most (:func:`change_ratios`) and estimates the rest with ``eap-sublayer``:
on SmolLM2 it is the one whose recall@20 against edge patching clears 0.7 at the lower CI bound
(docs/circuits.md), at about 1.1-1.6x ``eap-sublayer``'s cost.

Scope: pre-norm Llama-like blocks, whose parts ``probe.arch.BLOCK_PARTS`` names; other families
raise :class:`EdgeError`.

>>> ea = edge_attribution(lm, batch, metric, means)            # doctest: +SKIP
>>> top = ea.table().head(20)                                  # doctest: +SKIP
>>> truth = edge_patch(lm, batch, metric, means, top["edge"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
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
from probe.hooks import module_input_hooks, module_output_hooks
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
    exact: tuple[str, ...] = ()   # upstream nodes whose edges hold patched values (``hybrid``)
    estimated: dict | None = None  # hybrid: those edges' eap-sublayer scores, before patching

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


def _deltas(lm, batch: Batch, baseline, last: int, *, resid_norms: bool = False):
    """``{(kind, layer): out' - out}`` as ``[rows, pos, d_model]`` per head or per MLP; with
    ``resid_norms``, also ``{layer: |resid_post|}`` ``[rows, pos]`` from the same forward."""
    sites = [Site(k, layer) for layer in range(last + 1) for k in ("attn.hook_z", "mlp.hook_post")]
    resid = [Site("hook_resid_post", layer) for layer in range(last + 1)] if resid_norms else []
    _, cache = run_with_cache(lm, batch, sites + resid, stop=True)
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
    if resid_norms:
        return out, {s.layer: cache[s].norm(dim=-1) for s in resid}
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
#: ``eap``: linear in ``v``'s input. ``eap-norm``: the norm ``v`` reads taken exactly, linear after
#: it. ``eap-sublayer``: ``v``'s norm and attention or MLP taken exactly, linear after its output.
#: ``hybrid``: ``eap-sublayer``, with every edge out of the ``exact_nodes`` upstream nodes whose
#: ablation changes the residual most (relative to its norm) patched instead of estimated.
ESTIMATORS = ("eap", "eap-norm", "eap-sublayer", "hybrid")


def edge_attribution(lm, batch: Batch, metric: Metric, baseline, *, batch_size: int = 8,
                     estimator: str = "eap-sublayer", edges_per_call: int = 16,
                     exact_nodes: int = 2, rows_per_forward: int = 48) -> EdgeAttribution:
    """Edge scores of every edge (module docstring) against ``baseline`` (mean, zero, pairs).

    ``estimator`` (:data:`ESTIMATORS`): EAP scores ``delta_u . dM/d in_v``. The other two take
    the known nonlinearity right after the edge exactly and linearise only behind it (AtP*'s
    idea, applied to the edge's own sublayer): ``eap-norm`` scores
    ``(norm_v(x_v + delta_u) - norm_v(x_v)) . dM/d norm_v``, ``eap-sublayer``
    ``(f_v(x_v + delta_u) - f_v(x_v)) . dM/d f_v`` with ``f_v`` the norm and the attention or MLP
    behind it, run once per edge (``edges_per_call`` edges stacked into one call): a large
    upstream change, e.g. mean-ablating an early MLP that writes the residual's largest
    directions, rescales the norm and moves the attention pattern, which a gradient at the
    clean input does not see.

    ``hybrid`` (AtP*'s other idea: measure where the linear estimate is known to fail) scores
    with ``eap-sublayer``, then ranks the upstream nodes by :func:`change_ratios` (the mean size
    of the node's ablation change relative to the residual it joins) and replaces the scores of
    every edge out of the top ``exact_nodes`` with :func:`edge_patch`'s: those edges carry
    their patched values (``.exact`` names the nodes), at the cost of patching them.
    """
    if estimator not in ESTIMATORS:
        raise EdgeError(f"unknown edge estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}")
    if estimator == "hybrid" and exact_nodes < 1:
        raise EdgeError(f"hybrid needs exact_nodes >= 1 (got {exact_nodes}); use eap-sublayer for none")
    if metric.layer is None or len(metric.sites) != 1:
        raise EdgeError("edge attribution needs a metric that reads one residual site "
                        "(a direction metric, e.g. direction:happiness@L24)")
    last = metric.layer
    up, down, info = nodes(lm, last)
    names = [d for d in down if d != "metric"]
    per_row = []
    ratio_sum, ratio_n = np.zeros(len(up)), 0
    for i in range(0, len(batch), batch_size):
        sub = take(batch, slice(i, i + batch_size))
        if estimator == "hybrid":
            deltas, norms = _deltas(lm, sub, baseline, last, resid_norms=True)
            ratio_sum += _change_ratio_sums(sub, deltas, norms, info)
            ratio_n += int(sub.attention_mask.sum())
        else:
            deltas = _deltas(lm, sub, baseline, last)
        g, moves = _downstream(lm, sub, metric, names,
                               "eap-sublayer" if estimator == "hybrid" else estimator)
        s = np.full((len(sub), len(up), len(down)), np.nan)
        for j, d in enumerate(down):
            ks = [k for k, (kind, lu, _) in enumerate(info) if _exists(kind, lu, d)]
            for c in range(0, len(ks), edges_per_call):
                chunk = ks[c:c + edges_per_call]
                delta = torch.stack([deltas[info[k][:2]][:, :, info[k][2]] if info[k][0] == "head"
                                     else deltas[info[k][:2]] for k in chunk])  # [E, B, pos, d]
                with torch.no_grad():
                    moved = moves[d](delta) if d in moves else delta
                est = (moved * g[d].to(moved.dtype)[None]).sum((2, 3))  # [E, B]
                s[:, chunk, j] = est.double().T.numpy()
        per_row.append(s)
    per_row = np.concatenate(per_row)
    exact: tuple[str, ...] = ()
    before: dict | None = None
    if estimator == "hybrid":
        order = np.argsort(-ratio_sum / max(ratio_n, 1), kind="stable")[:exact_nodes]
        exact = tuple(up[k] for k in order)
        pairs = [(k, j) for k in order for j, d in enumerate(down) if _exists(*info[k][:2], d)]
        truth = edge_patch(lm, batch, metric, baseline, [f"{up[k]}->{down[j]}" for k, j in pairs],
                           rows_per_forward=rows_per_forward)
        before = {}
        for c, (k, j) in enumerate(pairs):
            before[f"{up[k]}->{down[j]}"] = float(per_row[:, k, j].mean())
            per_row[:, k, j] = truth[:, c]
    return EdgeAttribution(up, down, per_row, getattr(baseline, "name", ""), exact, before)


def _change_ratio_sums(batch: Batch, deltas, norms, info) -> np.ndarray:
    """Per upstream node: the sum over real tokens of ``|delta_u| / |resid|``, ``resid`` the
    residual stream the node writes into (after its block; ``norms`` from :func:`_deltas`)."""
    mask = batch.attention_mask.bool()
    out = np.zeros(len(info))
    for k, (kind, layer, h) in enumerate(info):
        delta = deltas[(kind, layer)][:, :, h] if kind == "head" else deltas[(kind, layer)]
        out[k] = float((delta.norm(dim=-1) / norms[layer].clamp_min(1e-6))[mask].sum())
    return out


def change_ratios(lm, batch: Batch, baseline, last: int) -> pd.Series:
    """Each upstream node's mean ``|ablation change| / |residual|`` over the real tokens of
    ``batch`` (largest first): how far from linear its edges are likely to be; ``hybrid``
    patches the edges of the top ones."""
    up, _, info = nodes(lm, last)
    deltas, norms = _deltas(lm, batch, baseline, last, resid_norms=True)
    r = _change_ratio_sums(batch, deltas, norms, info) / max(int(batch.attention_mask.sum()), 1)
    return pd.Series(r, index=up).sort_values(ascending=False)


def _part(lm, down: str, which: str = "norm"):
    """Of downstream node ``blocks.L.attn_in`` / ``mlp_in``: its ``norm``, its sublayer
    (``module``: the attention or the MLP) or the sublayer's output projection (``out``)."""
    layer, kind = int(down.split(".")[1]), down.split(".")[2]
    name = {"norm": kind, "module": kind[:-3], "out": kind[:-3] + "_out"}[which]
    return lm.arch.part(lm.model, layer, name)


def _downstream(lm, batch: Batch, metric: Metric, names: Sequence[str], estimator: str):
    """``(g, moves)``: ``dM/d`` the point each downstream node is linearised at (its input, its
    norm's output, or its sublayer's output) and, for the exact estimators, ``moves[v](delta)``:
    how that point moves when ``delta`` [edges, B, pos, d_model] is added to ``v``'s input."""
    leaves: dict[str, Tensor] = {}
    xs: dict[str, Tensor] = {}
    kwargs: dict[str, dict] = {}

    def tap(name):
        def fn(x):
            leaf = torch.zeros_like(x, requires_grad=True)
            leaves[name] = leaf
            return x + leaf
        return fn

    def keep(name):
        def fn(x):
            xs[name] = x.detach()
            return x
        return fn

    def keep_kwargs(name):
        def fn(kw):
            kwargs[name] = {k: v for k, v in kw.items() if k != "hidden_states"}
        return fn

    with ExitStack() as ctx:  # every hook placed here is removed, also when placing one fails
        if estimator == "eap":
            ctx.enter_context(_input_hooks(lm, {d: tap(d) for d in names}))
        else:
            where = "norm" if estimator == "eap-norm" else "out"  # the norm, or o_proj / down_proj
            ctx.enter_context(module_output_hooks([(_part(lm, d, where), tap(d)) for d in names]))
            ctx.enter_context(_input_hooks(lm, {d: keep(d) for d in names}))
        if estimator == "eap-sublayer":  # what each attention is called with, to call it again
            ctx.enter_context(module_input_hooks([(_part(lm, d, "module"), keep_kwargs(d))
                                                  for d in names if d.endswith("attn_in")],
                                                 kwargs=True))
        _, mleaf, m = forward_with_leaves(lm, batch, metric, list(metric.sites))
    grads = torch.autograd.grad(m.sum(), [leaves[d] for d in names] + [mleaf[metric.sites[0]]])
    g = dict(zip([*names, "metric"], grads))
    if estimator == "eap":
        return g, {}
    return g, {d: _mover(lm, d, xs[d], kwargs.get(d), estimator) for d in names}


def _mover(lm, down: str, x: Tensor, kw: dict | None, estimator: str):
    norm = _part(lm, down)
    if estimator == "eap-norm":
        f = norm
    elif down.endswith("mlp_in"):
        mlp = _part(lm, down, "module")
        f = lambda h: mlp(norm(h))
    else:
        attn = _part(lm, down, "module")

        def f(h):
            reps = h.shape[0] // x.shape[0]
            return attn(hidden_states=norm(h), **_repeat(kw, x.shape[0], reps))[0]
    with torch.no_grad():
        y0 = f(x)

    def move(delta: Tensor) -> Tensor:
        e = delta.shape[0]
        h = (x[None] + delta.to(x.dtype)).flatten(0, 1)  # [E * B, pos, d]
        return f(h).unflatten(0, (e, x.shape[0])) - y0[None]
    return move


def _repeat(obj, rows: int, reps: int):
    """Tile every tensor of ``obj`` whose first dimension is the batch ``reps`` times along it."""
    if isinstance(obj, Tensor):
        return obj.repeat(reps, *[1] * (obj.dim() - 1)) if obj.dim() >= 2 and obj.shape[0] == rows else obj
    if isinstance(obj, dict):
        return {k: _repeat(v, rows, reps) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_repeat(v, rows, reps) for v in obj)
    return obj


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
