"""Ground truth: activation patching and ablation of each component, batched.

:func:`patch` replaces one component at a time with its baseline value (an aligned corrupt
run, the mean, zero; :mod:`circuits.baselines`) and measures the metric. Many components run in
one forward: the prompts are repeated and each copy carries its own patched component through
per-row hooks. A forward for a component of block ``L`` starts at block ``L`` from the cached
residual stream where the architecture allows (Llama-like families; checked against a full
forward on every call) and stops at the metric's block.

Wang et al.'s measures are here too: :func:`neuron_contributions` (``activation x (W_down^T v)``)
and :func:`sublayer_influence` (``I = ds / (alpha sigma)``); their head ablation effect is
:func:`patch` with a :class:`~circuits.baselines.ZeroBaseline` and a direction metric.

>>> truth = patch(lm, target, metric, baseline, components)  # doctest: +SKIP
>>> truth.table().sort_values("value").head()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.attribution import bootstrap_ci
from circuits.baselines import Sources, take
from circuits.components import Component, Group, group_of, row_mask
from circuits.metrics import Metric
from circuits.runs import Compute, Timer, blocks_run, can_skip, forward_metric
from probe.forward import Batch, run_with_cache
from probe.sites import Site

#: Relative tolerance for "a forward started at block L equals the full forward".
SKIP_RTOL = 1e-4


@dataclass
class Patching:
    """Measured effects ``M(patched) - M`` of each component on each row."""

    method: str
    metric: str
    components: list[Component]
    per_row: Tensor  # [components, rows]
    metric_rows: Tensor
    compute: Compute
    row_groups: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def table(self, *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
        x = self.per_row.double().numpy().T  # [rows, components]
        lo, hi = bootstrap_ci(x, self.row_groups, n_boot=n_boot, seed=seed)
        return pd.DataFrame({
            "component": [str(c) for c in self.components],
            "type": [c.type for c in self.components],
            "layer": [c.layer for c in self.components],
            "kind": [c.site.kind for c in self.components],
            "unit": [c.unit for c in self.components],
            "value": x.mean(0), "ci_low": lo, "ci_high": hi, "n": x.shape[0],
            "estimator": self.method, "metric": self.metric})


# ------------------------------------------------------------------------------ engine
HookFactory = Callable[[list, Tensor, Batch], dict]


def run_per_row(lm, batch: Batch, metric: Metric, items: list, layer_of: Callable, factory: HookFactory,
                *, rows_per_forward: int = 64, skip: bool = True, compute: Compute,
                notes: list[str]) -> tuple[Tensor, Tensor]:
    """Metric of ``batch`` under each item's hooks: ``(baseline [rows], patched [items, rows])``.

    ``factory(items_in_chunk, prompt_rows, sub_batch)`` returns the hooks of one forward whose
    row ``r`` carries item ``r // len(prompt_rows)`` on prompt ``prompt_rows[r % n]``.
    """
    n = len(batch)
    with Timer(compute):
        base = torch.cat([forward_metric(lm, take(batch, slice(i, i + rows_per_forward)), metric)
                          for i in range(0, n, rows_per_forward)])
    compute.forward_passes += -(-n // rows_per_forward)
    compute.forward_row_blocks += n * blocks_run(lm, metric)
    layers = sorted({layer_of(it) for it in items})
    resid = _start_points(lm, batch, metric, layers, skip, base, compute, notes, rows_per_forward)
    out = torch.empty(len(items), n, dtype=base.dtype)
    per_fwd = max(1, rows_per_forward // n)
    p_chunk = min(n, rows_per_forward)
    for layer in layers:
        todo = [(i, it) for i, it in enumerate(items) if layer_of(it) == layer]
        start = layer if resid is not None and layer > 0 else 0
        for i in range(0, len(todo), per_fwd):
            chunk = todo[i:i + per_fwd]
            for p0 in range(0, n, p_chunk):
                prompts = torch.arange(p0, min(n, p0 + p_chunk))
                rows = prompts.repeat(len(chunk))
                sub = take(batch, rows)
                emb = resid[layer][rows] if start else None
                with Timer(compute):
                    m = forward_metric(lm, sub, metric, factory([it for _, it in chunk], rows, sub),
                                       start=start, resid=emb)
                compute.forward_passes += 1
                compute.forward_row_blocks += len(rows) * blocks_run(lm, metric, start)
                m = m.reshape(len(chunk), len(prompts))
                for j, (i_item, _) in enumerate(chunk):
                    out[i_item, prompts] = m[j] - base[prompts]
    return base, out


def _start_points(lm, batch, metric, layers, skip, base, compute, notes, rows_per_forward):
    """Cached block inputs ``{layer: [rows, pos, d]}`` if forwards may start later, else None."""
    later = [layer for layer in layers if layer > 0]
    if not (skip and later and can_skip(lm)):
        return None
    sites = [Site("hook_resid_pre", layer) for layer in later]
    parts: dict[int, list[Tensor]] = {layer: [] for layer in later}
    with Timer(compute):
        for i in range(0, len(batch), rows_per_forward):
            _, cache = run_with_cache(lm, take(batch, slice(i, i + rows_per_forward)), sites, stop=True)
            for s in sites:
                parts[s.layer].append(cache[s])
        resid = {layer: torch.cat(v) for layer, v in parts.items()}
        check = forward_metric(lm, batch, metric, start=later[-1], resid=resid[later[-1]])
    compute.forward_passes += 2
    compute.forward_row_blocks += len(batch) * (later[-1] + 1 + blocks_run(lm, metric, later[-1]))
    scale = base.abs().max().clamp(min=1e-6)
    if not ((check - base).abs().max() / scale) < SKIP_RTOL:
        notes.append("forwards starting at a later block did not reproduce the full forward; "
                     "every patched forward ran from block 0")
        return None
    return resid


# ---------------------------------------------------------------------- activation patching
def patch(lm, batch: Batch, metric: Metric, baseline, components: Sequence[Component], *,
          rows_per_forward: int = 64, skip: bool = True, resid_positions: int = 8,
          row_groups: Sequence[str] | None = None, method: str | None = None) -> Patching:
    """Patch each component alone (to ``baseline``'s value) and measure the metric's change.

    Args:
        lm: A loaded model.
        batch: Target prompts.
        metric: The metric (:mod:`circuits.metrics`).
        baseline: Pairs (activation patching), mean or zero (ablation).
        components: What to patch, one at a time.
        rows_per_forward: Rows (component x prompt) per forward.
        skip: Start each forward at the component's block when the family allows it.
        resid_positions: Number of ``resid`` positions (must match the attribution's).
        row_groups: Group of each prompt, for bootstrap CIs.
        method: Name in tables (default ``"patch:<baseline>"``).
    """
    components = list(components)
    if not components:
        raise ValueError("no components to patch")
    last = metric.layer if metric.layer is not None else lm.n_layers - 1
    late = [str(c) for c in components if c.layer > last]
    if late:
        raise ValueError(f"{late[0]} is after the metric's layer {last}: it cannot affect it")
    gmap = {c: group_of(lm, c, positions=resid_positions) for c in components}
    compute, notes = Compute(), []
    with Timer(compute):
        sources = baseline.bind(lm, batch, sorted({g.site for g in gmap.values()}))

    def factory(chunk, rows, sub):
        return _patch_hooks(chunk, gmap, sources, rows, sub)

    base, out = run_per_row(lm, batch, metric, components, lambda c: c.layer, factory,
                            rows_per_forward=rows_per_forward, skip=skip, compute=compute,
                            notes=notes)
    name = method or f"patch:{getattr(baseline, 'name', 'baseline')}"
    return Patching(name, metric.name, components, out, base, compute,
                    tuple(row_groups) if row_groups is not None else None, notes)


def _patch_hooks(chunk: list[Component], gmap: dict[Component, Group], sources: Sources,
                 rows: Tensor, sub: Batch) -> dict:
    n = len(rows) // len(chunk)
    fns = {}
    for g in {gmap[c] for c in chunk}:
        units = torch.tensor([c.unit if gmap[c] == g else -1 for c in chunk])
        units = units.repeat_interleave(n)
        fns[g.site] = _row_hook(g, units, sources, rows, sub)
    return fns


def _row_hook(g: Group, units: Tensor, sources: Sources, rows: Tensor, sub: Batch):
    def fn(value: Tensor, ctx) -> Tensor:
        m = row_mask(g, units, sources.mask[rows], sources.last[rows], value)
        return torch.where(m, sources(g.site, value, rows), value)
    return fn


# ----------------------------------------------------------------------- Wang et al.'s measures
@torch.no_grad()
def neuron_contributions(lm, batch: Batch, direction: Tensor, layers: Sequence[int]) -> Tensor:
    """``[rows, layers, d_mlp]``: each neuron's activation at the last token times
    ``W_down^T v`` (its write onto the unit direction ``v``; Wang et al.)."""
    v = direction / direction.norm()
    sites = [Site("mlp.hook_post", layer) for layer in layers]
    _, cache = run_with_cache(lm, batch, sites, stop=True)
    rows = torch.arange(len(batch))
    out = []
    for s in sites:
        down, _ = lm.arch.module(lm.model, "mlp.hook_post", s.layer)
        w = down.weight if type(down).__name__ != "Conv1D" else down.weight.T  # [d_model, d_mlp]
        out.append(cache[s][rows, batch.last] * (w.T.float() @ v.float()))
    return torch.stack(out, 1)


def sublayer_influence(lm, batch: Batch, metric: Metric, direction: Tensor,
                       layers: Sequence[int], *, alpha: float = 1.0,
                       rows_per_forward: int = 64, skip: bool = True) -> pd.DataFrame:
    """Wang et al.'s influence ``I = ds / (alpha * sigma)`` of each attention and MLP sublayer.

    ``alpha * sigma * v`` is added to the sublayer's output at each row's last token, where
    ``sigma`` is the RMS of that output there (over the batch); ``ds`` is the mean change of
    the metric. ``I = 1``: what the sublayer writes along ``v`` reaches the metric unchanged.
    """
    v = direction / direction.norm()
    sites = [Site(k, layer) for layer in layers for k in ("hook_attn_out", "hook_mlp_out")]
    _, cache = run_with_cache(lm, batch, sites, stop=True)
    rows = torch.arange(len(batch))
    sigma = {s: float(cache[s][rows, batch.last].pow(2).mean().sqrt()) for s in sites}
    compute, notes = Compute(), []

    def factory(chunk, prow, sub):
        n = len(prow) // len(chunk)
        fns = {}
        for j, s in enumerate(chunk):
            on = torch.zeros(len(prow), dtype=torch.bool)
            on[j * n:(j + 1) * n] = True
            fns[s] = _add_last(on, sub.last, alpha * sigma[s] * v)
        return fns

    _, out = run_per_row(lm, batch, metric, sites, lambda s: s.layer, factory,
                         rows_per_forward=rows_per_forward, skip=skip, compute=compute,
                         notes=notes)
    ds = out.mean(1).numpy()
    return pd.DataFrame({"site": [str(s) for s in sites], "layer": [s.layer for s in sites],
                         "kind": [s.kind for s in sites], "sigma": [sigma[s] for s in sites],
                         "ds": ds, "influence": ds / (alpha * np.array([sigma[s] for s in sites]))})


def _add_last(on: Tensor, last: Tensor, delta: Tensor):
    def fn(value: Tensor, ctx) -> Tensor:
        m = torch.zeros(value.shape[:2], dtype=torch.bool)
        m[torch.arange(len(last)), last] = True
        m &= on[:, None]
        return value + m[..., None].to(value.dtype) * delta.to(value.dtype)
    return fn
