"""Circuit modulation: steer by acting on a circuit's components only (Wang et al. 2025).

Two modes, both hooks for :func:`probe.hooks.hooks` at the circuit's sites:

* ``"add"`` -- add ``strength`` times each component's *emotion offset* (its mean value at the
  last token of the emotion's prompts minus its mean over reference prompts; see
  :func:`component_offsets`) to the component;
* ``"scale"`` -- multiply each component's value by ``1 + strength``.

Only the circuit's heads and neurons change; every other unit passes untouched.

>>> offsets = component_offsets(lm, circuit, happy_batch, all_batch)  # doctest: +SKIP
>>> with lm.hooks(modulation_hooks(lm, circuit, strength=4.0, offsets=offsets)):  # doctest: +SKIP
...     lm.generate(["Tell me about your day."], max_new_tokens=40)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from circuits.components import Component, group_of
from probe.errors import EmoprobeError
from probe.forward import Batch, run_with_cache
from probe.hooks import HookContext, PositionMode
from probe.sites import Site

Mode = Literal["add", "scale"]


class ModulationError(EmoprobeError, ValueError):
    """A circuit cannot be modulated as asked."""


def _by_site(components: Sequence[Component]) -> dict[Site, list[Component]]:
    out: dict[Site, list[Component]] = {}
    for c in components:
        if c.type not in ("heads", "neurons", "sublayers"):
            raise ModulationError(f"{c}: only heads, neurons and sublayers can be modulated")
        out.setdefault(c.site.whole, []).append(c)
    return out


@torch.no_grad()
def component_offsets(lm, circuit, emotion: Batch, reference: Batch) -> dict[Component, Tensor]:
    """Each component's mean value at the last token over ``emotion`` minus over ``reference``."""
    comps = list(circuit.components if hasattr(circuit, "components") else circuit)
    sites = sorted({group_of(lm, c).site for c in comps})

    def last_mean(batch: Batch) -> dict[Site, Tensor]:
        _, cache = run_with_cache(lm, batch, sites, stop=True)
        rows = torch.arange(len(batch))
        return {s: v[rows, batch.last].float().mean(0) for s, v in cache.items()}

    a, b = last_mean(emotion), last_mean(reference)
    out = {}
    for c in comps:
        s = group_of(lm, c).site
        d = a[s] - b[s]
        out[c] = d if c.type == "sublayers" else d[c.unit]
    return out


def modulation_hooks(lm, circuit, *, strength: float, mode: Mode = "add",
                     offsets: dict[Component, Tensor] | None = None,
                     positions: PositionMode | range = "last-prompt+generated") -> dict:
    """``{site: hook}`` that modulates the circuit's components (module docstring)."""
    comps = list(circuit.components if hasattr(circuit, "components") else circuit)
    if not comps:
        raise ModulationError("the circuit is empty")
    if mode == "add" and offsets is None:
        raise ModulationError("mode 'add' needs offsets (component_offsets(lm, circuit, ...))")
    if mode not in ("add", "scale"):
        raise ModulationError(f"mode must be 'add' or 'scale', not {mode!r}")
    fns = {}
    for site, mine in _by_site(comps).items():
        delta = None
        if mode == "add":
            missing = [str(c) for c in mine if c not in offsets]
            if missing:
                raise ModulationError(f"no offset for {missing[0]}")
            delta = torch.stack([offsets[c] for c in mine])  # [units, ...]
        units = torch.tensor([c.unit for c in mine])
        fns[site] = _hook(mine[0].type, units, delta, strength, mode, positions)
    return fns


def _hook(kind: str, units: Tensor, delta: Tensor | None, strength: float, mode: Mode, positions):
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        m = ctx.mask(positions, value)  # [b, pos, 1...]
        out = value.clone()
        if kind == "sublayers":
            sel = value
            new = sel * (1 + strength) if mode == "scale" else sel + strength * delta[0].to(value.dtype)
            return value + (new - value) * m
        sel = out[:, :, units]
        if mode == "scale":
            new = sel * (1 + strength)
        else:
            new = sel + strength * delta.to(value.dtype)
        out[:, :, units] = sel + (new - sel) * m.reshape(*m.shape[:2], *([1] * (sel.dim() - 2)))
        return out
    return fn
