"""Closeness search: refine a ranked circuit of a fixed size by swaps measured on training prompts.

A ranking (AtP) scores each component by the effect of ablating it *alone from the intact
model*. A circuit is judged in another state: its ``k`` components kept and every other
candidate ablated, where effects no longer add up (on SEV replies the AtP top 5% of heads and
neurons lands further from the model than the empty circuit for fear and happiness). The search
starts from the ranking's top ``k`` and moves toward the model *from where the circuit is*:

* a membership mask ``m`` (1 for the circuit's units, 0 for the other candidates) enters every
  candidate site as ``baseline + m * (value - baseline)`` at the ablated positions, so the
  forward at a 0/1 mask is exactly the circuit's (:func:`circuits.closeness.evaluate_sets`);
* the loss is the circuit's per-prompt squared distance from the model, normalised by the empty
  circuit's: ``sum_p (M_C,p - M_p)^2 / sum_p (M_0,p - M_p)^2``;
* its gradient with respect to ``m`` estimates, at the current circuit, what removing a member
  (``-g_i``) or adding a non-member (``+g_j``) does to the loss; the pairs with the best predicted
  exchange are proposed in swaps of 1, 2, 4, ..., 256 pairs, each *measured exactly* with one
  forward, and the best is taken only when it lowers the measured loss;
* it stops when no proposal lowers the loss, or after ``rounds`` rounds.

The size never changes; every step is an exact measurement on the prompts it is given (training
prompts only: the held-out error is measured afterwards, by the caller, on other scenarios).

>>> res = search(lm, train, metric, groups, means, ranked[:1931])   # doctest: +SKIP
>>> res.loss_start, res.loss, len(res.components)                  # doctest: +SKIP
(1.44, 0.044, 1931)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from circuits.baselines import Sources, take
from circuits.components import Component, Group
from circuits.metrics import Metric
from circuits.runs import Compute, blocks_run, metric_under
from probe.forward import Batch

#: Swap sizes tried each round (pairs exchanged), best predicted pairs first.
SWAPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class SearchResult:
    """The searched circuit and how the search went.

    Attributes:
        components: The circuit (same size as the start), in the start's order where kept,
            added components after.
        loss_start, loss: The normalised per-prompt loss of the start and of the result.
        history: One dict per round: ``round``, ``swapped`` pairs, ``loss``, ``seconds``.
        changed: Share of the start's components replaced.
    """

    components: list[Component]
    loss_start: float
    loss: float
    history: list[dict] = field(default_factory=list)
    changed: float = 0.0
    compute: Compute = field(default_factory=Compute)

    def as_dict(self) -> dict:
        return {"loss_start": self.loss_start, "loss": self.loss, "rounds": len(self.history),
                "changed": self.changed, "history": self.history, "compute": self.compute.as_dict()}


class MaskedForward:
    """Forward of ``batch`` with candidate units mixed by a mask: ``base + m (value - base)``."""

    def __init__(self, lm, batch: Batch, metric: Metric, groups: Sequence[Group], baseline,
                 *, chunk: int, compute: Compute) -> None:
        self.lm, self.batch, self.metric, self.groups = lm, batch, metric, list(groups)
        self.sources: Sources = baseline.bind(lm, batch, [g.site for g in self.groups])
        self.offsets = np.cumsum([0] + [g.n_units for g in self.groups])
        self.chunk, self.compute = max(int(chunk), 1), compute
        self.n_blocks = blocks_run(lm, metric)

    @property
    def n_units(self) -> int:
        return int(self.offsets[-1])

    def rows(self, mask: Tensor) -> Tensor:
        """Per-row metric at ``mask`` (no gradient)."""
        with torch.no_grad():
            return torch.cat([self._chunk(mask, r) for r in self._chunks()]).double()

    def loss_grad(self, mask: Tensor, target: Tensor, den: float) -> tuple[float, np.ndarray]:
        """Loss and its gradient with respect to ``mask``."""
        leaf = mask.clone().requires_grad_(True)
        total = 0.0
        for r in self._chunks():
            m = self._chunk(leaf, r).double()
            loss = ((m - target[r]) ** 2).sum() / den
            loss.backward()
            self.compute.backward_passes += 1
            self.compute.backward_row_blocks += len(r) * self.n_blocks
            total += float(loss.detach())
        return total, leaf.grad.double().numpy()

    def _chunks(self):
        n = len(self.batch)
        return [torch.arange(i, min(i + self.chunk, n)) for i in range(0, n, self.chunk)]

    def _chunk(self, mask: Tensor, rows: Tensor) -> Tensor:
        fns = {g.site: self._hook(mask[self.offsets[j]:self.offsets[j + 1]], g, rows)
               for j, g in enumerate(self.groups)}
        self.compute.forward_passes += 1
        self.compute.forward_row_blocks += len(rows) * self.n_blocks
        return metric_under(self.lm, take(self.batch, rows), self.metric, fns)

    def _hook(self, m: Tensor, g: Group, rows: Tensor):
        sources = self.sources

        def fn(value: Tensor, ctx) -> Tensor:
            src = sources(g.site, value, rows)  # the baseline at ablated positions, else value
            w = m.view(1, 1, -1) if value.dim() == 3 else m.view(1, 1, -1, 1)
            return src + w.to(value.dtype) * (value - src)
        return fn


def search(lm, batch: Batch, metric: Metric, groups: Sequence[Group], baseline,
           start: Sequence[Component], *, rounds: int = 20, chunk: int = 16,
           swaps: Sequence[int] = SWAPS, log: Callable[[str], None] | None = None) -> SearchResult:
    """Refine the circuit ``start`` (module docstring) on ``batch``; every unit of ``groups`` is
    a candidate, ablated to ``baseline`` unless in the circuit."""
    compute = Compute()
    t0 = time.perf_counter()
    net = MaskedForward(lm, batch, metric, groups, baseline, chunk=chunk, compute=compute)
    index = {}
    for j, g in enumerate(groups):
        for u, c in enumerate(g.components()):
            index[c] = int(net.offsets[j]) + u
    missing = [c for c in start if c not in index]
    if missing:
        raise ValueError(f"{missing[0]} is not among the candidates ({len(groups)} groups)")
    n = net.n_units
    inside = np.zeros(n, bool)
    inside[[index[c] for c in start]] = True
    m = net.rows(torch.ones(n))
    m0 = net.rows(torch.zeros(n))
    den = float(((m0 - m) ** 2).sum())
    if not den > 0:
        raise ValueError("the empty circuit equals the model on these prompts: nothing to search")
    loss, grad = net.loss_grad(torch.from_numpy(inside).float(), m, den)
    loss_start, history = loss, []
    for r in range(rounds):
        t = time.perf_counter()
        outs = np.argsort(-np.where(inside, grad, -np.inf), kind="stable")[:max(swaps)]
        ins = np.argsort(np.where(~inside, grad, np.inf), kind="stable")[:max(swaps)]
        k = min(len(outs), len(ins), int(inside.sum()), int((~inside).sum()))
        gain = grad[ins[:k]] - grad[outs[:k]]  # predicted change of the loss per pair
        best = None
        for s in swaps:
            s = min(s, int((gain < 0).sum()))
            if s < 1 or (best is not None and s == best[2]):
                break
            new = inside.copy()
            new[outs[:s]] = False
            new[ins[:s]] = True
            mk = net.rows(torch.from_numpy(new).float())
            value = float(((mk - m) ** 2).sum()) / den
            if best is None or value < best[0]:
                best = (value, new, s)
        if best is None or best[0] >= loss:
            history.append({"round": r, "swapped": 0, "loss": loss,
                            "seconds": round(time.perf_counter() - t, 2)})
            break
        inside = best[1]
        loss, grad = net.loss_grad(torch.from_numpy(inside).float(), m, den)
        history.append({"round": r, "swapped": best[2], "loss": loss,
                        "seconds": round(time.perf_counter() - t, 2)})
        if log:
            log(f"  search round {r}: {best[2]} pairs swapped, loss {loss:.3f}")
    compute.seconds = time.perf_counter() - t0
    kept = [c for c in start if inside[index[c]]]
    by_index = {i: c for c, i in index.items()}
    kept_set = set(kept)
    added = [by_index[i] for i in np.flatnonzero(inside) if by_index[i] not in kept_set]
    return SearchResult(kept + added, loss_start, loss, history,
                        changed=len(added) / max(len(start), 1), compute=compute)
