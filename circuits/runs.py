"""Forward passes that return a metric per row: plain, with gradient leaves, or from a layer on.

Everything here runs on :mod:`probe.hooks`. Two helpers serve attribution and patching:

* :func:`forward_with_leaves` -- :func:`probe.forward.run_with_leaves` with a circuit
  :class:`~circuits.metrics.Metric`: one forward where each tapped site's value ``a`` becomes
  ``a + 0`` with the ``0`` a leaf that requires grad, returning the leaves so that callers can
  run one *or several* backward passes (GradDrop needs one per layer) and the per-row metric;
* :func:`forward_metric` -- a no-grad forward under extra hooks returning the per-row metric,
  optionally starting at block ``start`` from cached residual streams (patching a component of
  block 12 does not need blocks 0-11 again).

:class:`Compute` counts what each method costs: batched passes, rows x blocks run forward and
backward, and wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.metrics import Metric
from probe.forward import Batch, run_with_leaves
from probe.hooks import HookContext, StopForward, hooks
from probe.sites import Site


@dataclass
class Compute:
    """What a method cost: batched passes, rows x blocks (forward, backward), seconds."""

    forward_passes: int = 0
    backward_passes: int = 0
    forward_row_blocks: int = 0
    backward_row_blocks: int = 0
    seconds: float = 0.0

    @property
    def cost(self) -> float:
        """Forward-equivalent rows x blocks (a backward counted as two forwards)."""
        return self.forward_row_blocks + 2 * self.backward_row_blocks

    def add(self, other: Compute) -> Compute:
        for f in ("forward_passes", "backward_passes", "forward_row_blocks",
                  "backward_row_blocks", "seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self

    def as_dict(self) -> dict:
        return {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "forward_row_blocks": self.forward_row_blocks,
                "backward_row_blocks": self.backward_row_blocks,
                "cost": self.cost, "seconds": round(self.seconds, 3)}


class Timer:
    """``with Timer(compute): ...`` adds the block's wall time to ``compute.seconds``."""

    def __init__(self, compute: Compute) -> None:
        self.compute = compute

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.compute.seconds += time.perf_counter() - self.t0


def blocks_run(lm, metric: Metric, start: int = 0) -> int:
    end = metric.layer if metric.layer is not None else lm.n_layers - 1
    return end - start + 1


def _call(lm, batch: Batch, metric: Metric, fns: Mapping, *, embeds: Tensor | None = None,
          start: int = 0) -> Tensor:
    """Run the model under ``fns`` (+ the metric's reads); the per-row metric."""
    read: dict[Site, Tensor] = {}

    def grab(value: Tensor, ctx: HookContext) -> None:
        read[ctx.site] = value

    all_fns: dict = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in fns.items()}
    for s in metric.sites:
        all_fns.setdefault(s, []).append(grab)
    inputs = dict(batch.inputs)
    if embeds is not None:
        inputs.pop("input_ids")
        inputs["inputs_embeds"] = embeds
    out = None
    with hooks(lm, all_fns, stop_after=metric.layer), lm.arch.from_block(lm.model, start):
        try:
            out = lm.model(**inputs, use_cache=False)
        except StopForward:
            pass
    return metric(read if metric.sites else out.logits, batch)


def forward_with_leaves(lm, batch: Batch, metric: Metric, taps: Sequence[Site], *,
                        before: Mapping[Site, Callable] | None = None,
                        after: Mapping[Site, Callable] | None = None):
    """One forward with a gradient leaf at each tapped site (:func:`probe.forward.run_with_leaves`).

    Args:
        before: ``{site: fn}`` hooks that run before the tap at that site (e.g. interpolation).
        after: hooks that run after it (e.g. a GradDrop gate).

    Returns:
        ``(values, leaves, metric_rows)``: detached values at ``taps``, the leaves, and the
        per-row metric (with its graph, for ``torch.autograd.grad``).
    """
    return run_with_leaves(lm, batch, metric, list(taps), metric_sites=list(metric.sites) or None,
                           before=before, after=after)


def metric_under(lm, batch: Batch, metric: Metric, fns: Mapping) -> Tensor:
    """The per-row metric under hooks ``fns``, with gradients (hooks may carry parameters)."""
    return _call(lm, batch, metric, fns)


@torch.no_grad()
def forward_metric(lm, batch: Batch, metric: Metric, fns: Mapping | None = None, *,
                   start: int = 0, resid: Tensor | None = None) -> Tensor:
    """The per-row metric under ``fns``; from block ``start`` on if ``resid`` (its input) is given."""
    if start and resid is None:
        raise ValueError("starting at a later block needs that block's input (resid)")
    return _call(lm, batch, metric, fns or {}, embeds=resid if start else None, start=start)


def can_skip(lm) -> bool:
    """Whether forwards may start at a later block (:meth:`probe.arch.Architecture.can_start_at`)."""
    return lm.arch.can_start_at(lm.model)
