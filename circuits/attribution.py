"""Attribution patching: estimate every component's patching effect from gradients.

For a component with value ``a`` in the target run and baseline value ``a'`` (an aligned
corrupt run, a mean or zero; see :mod:`circuits.baselines`), the effect of patching it,
``M(a -> a') - M``, is estimated by

* ``"atp"`` -- AtP (Nanda 2023; Kramar et al. 2024): ``(a' - a) . dM/da`` from one forward and
  one backward per batch, for every component at once;
* ``"atp*"`` -- AtP* (Kramar et al. 2024): AtP with the *QK fix* for query and key components
  (the attention softmax is recomputed exactly with the patched query/key; only the step from
  the attention pattern to the metric is linear; see :mod:`circuits.qk`) and *GradDrop*: one more
  backward per layer with that layer's residual contribution dropped from the gradient,
  combined as ``sum_l |AtP_l| / (L - 1)``. GradDrop scores are magnitudes (unsigned);
* ``"ig"`` -- integrated gradients over ``steps`` midpoints of a path from the target run to
  the baseline. ``path="inputs"`` (EAP-IG, Hanna et al. 2024): the embeddings are interpolated
  toward the baseline's (e.g. the corrupt prompt's) and ``(a' - a) . mean dM/da``.
  ``path="sites"``: every requested component is softly ablated together,
  ``out = a' + alpha (a - a')``; each step adds ``dM/dout . (a' - a)`` with ``a`` the value at
  that step, so the scores of all components add up to ``M(all at baseline) - M`` (up to the
  midpoint rule): the path that "keep the circuit, ablate the rest" walks.

>>> target, baseline = pairs.noising()  # doctest: +SKIP
>>> attr = attribute(lm, target, metric, baseline, types=("heads", "sublayers"))  # doctest: +SKIP
>>> attr.table().head()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.baselines import PairBaseline, Sources, take
from circuits.components import Group, at_units, groups as make_groups, per_unit
from circuits.metrics import Metric
from circuits.runs import Compute, Timer, blocks_run, forward_metric, forward_with_leaves
from probe.errors import AttributionError
from probe.forward import Batch, run_with_cache
from probe.sites import Site

Estimator = Literal["atp", "atp*", "ig"]
ESTIMATORS = ("atp", "atp*", "ig")


@dataclass
class Attribution:
    """Estimated patching effects of every component, per row of the target batch.

    Attributes:
        per_row: ``{group: [rows, n_units]}`` estimated ``M(patched) - M`` per row.
        signed: False for GradDrop magnitudes (AtP*'s non-q/k scores).
        metric_rows: The target run's metric per row.
    """

    estimator: str
    metric: str
    baseline: str
    groups: list[Group]
    per_row: dict[Group, Tensor]
    metric_rows: Tensor
    compute: Compute
    signed: bool = True
    row_groups: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def scores(self, group: Group) -> Tensor:
        """Mean estimated effect of each unit of ``group`` over rows."""
        return self.per_row[group].mean(0)

    def table(self, *, n_boot: int = 200, seed: int = 0, types: Sequence[str] | None = None,
              top_neurons: int | None = None) -> pd.DataFrame:
        """One row per component: mean effect and a bootstrap CI over rows (or row groups).

        ``top_neurons`` keeps only the neurons with the largest ``|effect|`` (46k rows on
        SmolLM2 otherwise).
        """
        frames = []
        for g in self.groups:
            if types is not None and g.type not in types:
                continue
            x = self.per_row[g].double().numpy()
            lo, hi = bootstrap_ci(x, self.row_groups, n_boot=n_boot, seed=seed)
            frames.append(pd.DataFrame({
                "component": [str(g.component(u)) for u in range(g.n_units)],
                "type": g.type, "layer": g.site.layer, "kind": g.site.kind,
                "unit": np.arange(g.n_units), "value": x.mean(0), "ci_low": lo, "ci_high": hi,
                "n": x.shape[0]}))
        df = pd.concat(frames, ignore_index=True)
        if top_neurons is not None:
            neu = df[df["type"] == "neurons"]
            keep = neu["value"].abs().nlargest(top_neurons).index
            df = pd.concat([df[df["type"] != "neurons"], neu.loc[keep]]).sort_index()
        return df.assign(estimator=self.estimator, metric=self.metric, baseline=self.baseline)


def bootstrap_ci(x: np.ndarray, groups: Sequence[str] | None, *, n_boot: int = 200,
                 seed: int = 0, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the mean over rows of ``x`` ``[rows, ...]``, resampling row groups."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(groups if groups is not None else np.arange(len(x)))
    uniq, inv = np.unique(keys, return_inverse=True)
    if len(uniq) < 2 or n_boot < 1:
        m = x.mean(0)
        return np.full_like(m, np.nan), np.full_like(m, np.nan)
    counts = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)
    w = counts[:, inv].astype(float)  # [boot, rows]
    means = (w @ x.reshape(len(x), -1)) / w.sum(1, keepdims=True)
    a = (1 - ci) / 2
    lo, hi = np.quantile(means, [a, 1 - a], axis=0)
    return lo.reshape(x.shape[1:]), hi.reshape(x.shape[1:])


# ------------------------------------------------------------------------------ entry point
def component_layers(lm, metric: Metric, layers: Sequence[int] | None = None) -> tuple[list[int], list[str]]:
    """Layers whose components can affect ``metric``; later ones are dropped with a note."""
    last = metric.layer if metric.layer is not None else lm.n_layers - 1
    layers = list(range(last + 1)) if layers is None else sorted(set(layers))
    bad = [layer for layer in layers if not 0 <= layer < lm.n_layers]
    if bad:
        raise AttributionError(f"layer {bad[0]} is out of range: the model has {lm.n_layers}")
    notes = []
    later = [layer for layer in layers if layer > last]
    if later:
        notes.append(f"components in layers {later[0]}-{later[-1]} come after the metric's layer "
                     f"{last} and cannot affect it: left out")
    keep = [layer for layer in layers if layer <= last]
    if not keep:
        raise AttributionError(f"no requested layer is at or before the metric's layer {last}")
    return keep, notes


def attribute(lm, batch: Batch, metric: Metric, baseline, *, types: Sequence[str] = ("heads",),
              layers: Sequence[int] | None = None, estimator: Estimator = "atp",
              batch_size: int = 16, steps: int = 8, path: Literal["inputs", "sites"] | None = None,
              graddrop: bool = True, resid_positions: int = 8,
              row_groups: Sequence[str] | None = None) -> Attribution:
    """Estimate the effect of patching each component of ``types`` from target to baseline.

    Args:
        lm: A loaded model.
        batch: The target prompts (the run being patched).
        metric: What to explain (:mod:`circuits.metrics`).
        baseline: A :class:`circuits.baselines.Baseline` (pairs, mean or zero).
        types: Component types (:data:`circuits.components.TYPES`).
        layers: Layers to consider (default: every layer up to the metric's).
        estimator: ``"atp"``, ``"atp*"`` or ``"ig"`` (module docstring).
        batch_size: Rows per forward/backward.
        steps: Integration points for ``"ig"``.
        path: IG path (default ``"inputs"`` for pairs, ``"sites"`` otherwise).
        graddrop: Apply GradDrop in ``"atp*"``.
        resid_positions: Positions (from the end) of ``resid`` components.
        row_groups: Group of each row (scenario ids) for bootstrap CIs in :meth:`Attribution.table`.
    """
    if estimator not in ESTIMATORS:
        raise AttributionError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    layers, notes = component_layers(lm, metric, layers)
    gs = make_groups(lm, types, layers, positions=resid_positions)
    if estimator == "ig":
        path = path or ("inputs" if isinstance(baseline, PairBaseline) else "sites")
        if path not in ("inputs", "sites"):
            raise AttributionError(f"IG path must be 'inputs' or 'sites', not {path!r}")
    extra = [Site("hook_embed")] if estimator == "ig" and path == "inputs" else []
    qk = estimator == "atp*" and any(g.type in ("queries", "keys") for g in gs)
    compute = Compute()
    with Timer(compute):
        sources = baseline.bind(lm, batch, [g.site for g in gs] + extra)
    per_row: dict[Group, list[Tensor]] = {g: [] for g in gs}
    metric_rows = []
    for i in range(0, len(batch), batch_size):
        rows = torch.arange(i, min(i + batch_size, len(batch)))
        sub = take(batch, rows)
        with Timer(compute):
            if estimator == "ig":
                out, m = _ig_chunk(lm, sub, rows, metric, gs, sources, steps, path, compute)
            else:
                out, m = _atp_chunk(lm, sub, rows, metric, gs, sources, compute,
                                    graddrop=estimator == "atp*" and graddrop, qk=qk)
        for g in gs:
            per_row[g].append(out[g])
        metric_rows.append(m)
    result = {g: torch.cat(v) for g, v in per_row.items()}
    _check_nonzero(result, metric, gs)
    signed = not (estimator == "atp*" and graddrop)
    if estimator == "atp*" and graddrop:
        notes.append("AtP* with GradDrop gives magnitudes: q/k components keep the QK-fixed sign "
                     "only when graddrop=False")
    return Attribution(estimator, metric.name, getattr(baseline, "name", "baseline"), gs, result,
                       torch.cat(metric_rows), compute, signed,
                       tuple(row_groups) if row_groups is not None else None, notes)


def _check_nonzero(result: dict[Group, Tensor], metric: Metric, gs: list[Group]) -> None:
    if all(bool((v == 0).all()) for v in result.values()):
        types = sorted({g.type for g in gs})
        raise AttributionError(
            f"every attribution is exactly zero: the metric {metric.name!r} does not depend on "
            f"the requested components ({', '.join(types)}) at the patched positions, or the "
            "baseline equals the target there. Check the metric's layer and the pairs")


# ------------------------------------------------------------------------------- AtP
def _contrib(g: Group, diff: Tensor, grad: Tensor, sources: Sources, rows: Tensor) -> Tensor:
    return at_units(g, per_unit(g, diff * grad), sources.mask[rows], sources.last[rows])


def _atp_chunk(lm, sub, rows, metric, gs, sources, compute: Compute, *, graddrop: bool, qk: bool):
    taps = [g.site for g in gs]
    if qk:
        from circuits.qk import qk_sites

        taps = sorted(set(taps) | set(qk_sites(lm, sorted({g.site.layer for g in gs}))))
    gate = _GradGate()
    after = gate.hooks(lm, metric) if graddrop else None
    values, leaves, m = forward_with_leaves(lm, sub, metric, taps, after=after)
    n_blocks = blocks_run(lm, metric)
    compute.forward_passes += 1
    compute.forward_row_blocks += len(sub) * n_blocks
    order = list(leaves)
    grads = dict(zip(order, torch.autograd.grad(m.sum(), [leaves[s] for s in order],
                                                retain_graph=graddrop, allow_unused=True)))
    compute.backward_passes += 1
    compute.backward_row_blocks += len(sub) * n_blocks
    grads = {s: g if g is not None else torch.zeros_like(leaves[s]) for s, g in grads.items()}
    out = {}
    for g in gs:
        if qk and g.type in ("queries", "keys"):
            continue
        diff = sources(g.site, values[g.site], rows) - values[g.site]
        out[g] = _contrib(g, diff, grads[g.site], sources, rows)
    if qk:
        from circuits.qk import qk_fix

        out.update(qk_fix(lm, [g for g in gs if g.type in ("queries", "keys")], values, grads,
                          sources, rows, sub))
    if graddrop:
        out = _graddrop(lm, gs, values, leaves, m, sources, rows, gate, compute, qk_out=out,
                        n_blocks=n_blocks, sub=sub)
    return out, m.detach()


class _Gate(torch.autograd.Function):
    """Identity whose backward is zeroed when ``state["drop"] == layer``."""

    @staticmethod
    def forward(ctx, x, state, layer):
        ctx.state, ctx.layer = state, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return (g * 0 if ctx.state["drop"] == ctx.layer else g), None, None


class _GradGate:
    """GradDrop's switch: drop the gradient through one layer's sublayer outputs."""

    def __init__(self) -> None:
        self.state = {"drop": None}

    def hooks(self, lm, metric: Metric) -> dict:
        last = metric.layer if metric.layer is not None else lm.n_layers - 1
        fns = {}
        for layer in range(last + 1):
            for kind in ("hook_attn_out", "hook_mlp_out"):
                fns[Site(kind, layer)] = (lambda t, ctx, L=layer: _Gate.apply(t, self.state, L))
        return fns


def _graddrop(lm, gs, values, leaves, m, sources, rows, gate: _GradGate, compute: Compute, *,
              qk_out, n_blocks: int, sub: Batch) -> dict[Group, Tensor]:
    """``sum_l |AtP with layer l's gradient dropped| / (L - 1)`` (Kramar et al. 2024)."""
    n_layers = n_blocks
    total = {g: torch.zeros_like(v) for g, v in qk_out.items()}
    order = list(leaves)
    for layer in range(n_layers):
        gate.state["drop"] = layer
        grads = torch.autograd.grad(m.sum(), [leaves[s] for s in order], retain_graph=True,
                                    allow_unused=True)
        compute.backward_passes += 1
        compute.backward_row_blocks += len(sub) * n_blocks
        grads = {s: g if g is not None else torch.zeros_like(leaves[s]) for s, g in zip(order, grads)}
        for g in gs:
            if g.type in ("queries", "keys"):
                from circuits.qk import qk_fix

                est = qk_fix(lm, [g], values, grads, sources, rows, sub)[g]
            else:
                diff = sources(g.site, values[g.site], rows) - values[g.site]
                est = _contrib(g, diff, grads[g.site], sources, rows)
            total[g] += est.abs()
    gate.state["drop"] = None
    return {g: v / max(n_layers - 1, 1) for g, v in total.items()}


# -------------------------------------------------------------------------------- IG
def _ig_chunk(lm, sub, rows, metric, gs, sources, steps: int, path: str, compute: Compute):
    """IG over ``steps`` midpoints. ``sites``: every group's site follows
    ``out = src + alpha (v - src)`` and each step adds ``dM/dout . (src - v)``, so the scores of
    all components add up to ``M(all at baseline) - M`` (midpoint rule). ``inputs``: EAP-IG,
    the embeddings are interpolated and ``(src - v_target) . mean gradient``."""
    if steps < 1:
        raise AttributionError(f"IG needs steps >= 1, got {steps}")
    taps = [g.site for g in gs]
    n_blocks = blocks_run(lm, metric)
    m = forward_metric(lm, sub, metric)
    compute.forward_passes += 1
    compute.forward_row_blocks += len(sub) * n_blocks
    if path == "inputs":
        _, clean = run_with_cache(lm, sub, taps, stop=metric.layer is not None)
        compute.forward_passes += 1
        compute.forward_row_blocks += len(sub) * n_blocks
    acc: dict = {g: 0.0 for g in gs}
    grad_sum: dict = {s: 0.0 for s in taps}
    embed = Site("hook_embed")
    for k in range(steps):
        alpha = (k + 0.5) / steps
        raw: dict[Site, tuple[Tensor, Tensor]] = {}

        def interp(t, ctx, a=alpha, raw=raw):
            src = sources(ctx.site, t, rows)
            raw[ctx.site] = (t.detach(), src.detach())
            return src + a * (t - src)

        before = {embed: interp} if path == "inputs" else {s: interp for s in taps}
        _, leaves, mk = forward_with_leaves(lm, sub, metric, taps, before=before)
        grads = dict(zip(taps, torch.autograd.grad(mk.sum(), [leaves[s] for s in taps],
                                                   allow_unused=True)))
        grads = {s: g if g is not None else torch.zeros_like(leaves[s]) for s, g in grads.items()}
        for g in gs:
            if path == "sites":
                t, src = raw[g.site]
                acc[g] = acc[g] + _contrib(g, src - t, grads[g.site], sources, rows)
            else:
                grad_sum[g.site] = grad_sum[g.site] + grads[g.site]
        compute.forward_passes += 1
        compute.backward_passes += 1
        compute.forward_row_blocks += len(sub) * n_blocks
        compute.backward_row_blocks += len(sub) * n_blocks
    if path == "sites":
        return {g: v / steps for g, v in acc.items()}, m
    out = {}
    for g in gs:
        diff = sources(g.site, clean[g.site], rows) - clean[g.site]
        out[g] = _contrib(g, diff, grad_sum[g.site] / steps, sources, rows)
    return out, m
