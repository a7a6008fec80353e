"""Circuit modulation: steer by acting on a circuit's components only (Wang et al. 2025).

Two modes, both operators of :mod:`probe.interventions` on the circuit's units (heads of
``attn.hook_z``, neurons of ``mlp.hook_post``; a sublayer is its whole value), with that
module's words:

* ``"add"`` -- add ``strength`` times each component's *emotion offset* (its mean value at the
  last token of the emotion's prompts minus its mean over reference prompts; see
  :func:`component_offsets`) to the component (:func:`probe.interventions.add`, the offsets
  being the unit of strength);
* ``"scale"`` -- multiply each component's value by ``factor`` (1 = no change;
  :func:`probe.interventions.scale`).

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
from probe.hooks import PositionMode
from probe.interventions import add, scale
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


def modulation_hooks(lm, circuit, *, mode: Mode = "add", strength: float | None = None,
                     factor: float | None = None, offsets: dict[Component, Tensor] | None = None,
                     positions: PositionMode | range = "last-prompt+generated") -> dict:
    """``{site: hook}`` that modulates the circuit's components (module docstring).

    Args:
        mode: ``"add"`` (``strength`` x the offsets) or ``"scale"`` (x ``factor``).
        strength: For ``"add"``: how many offsets are added.
        factor: For ``"scale"``: the multiplier of each component's value.
        offsets: For ``"add"``: :func:`component_offsets`.
        positions: Which tokens (:meth:`probe.hooks.HookContext.positions`).
    """
    comps = list(circuit.components if hasattr(circuit, "components") else circuit)
    if not comps:
        raise ModulationError("the circuit is empty")
    if mode not in ("add", "scale"):
        raise ModulationError(f"mode must be 'add' or 'scale', not {mode!r}")
    if mode == "add" and (strength is None or factor is not None):
        raise ModulationError("mode 'add' takes a strength (how many offsets are added), not a "
                              "factor")
    if mode == "scale" and (factor is None or strength is not None):
        raise ModulationError("mode 'scale' takes a factor (the multiplier; 1 = no change), not "
                              "a strength")
    if mode == "add" and offsets is None:
        raise ModulationError("mode 'add' needs offsets (component_offsets(lm, circuit, ...))")
    fns = {}
    for site, mine in _by_site(comps).items():
        units = None if mine[0].type == "sublayers" else [c.unit for c in mine]
        if mode == "scale":
            fns[site] = scale(factor=factor, units=units, positions=positions)
            continue
        missing = [str(c) for c in mine if c not in offsets]
        if missing:
            raise ModulationError(f"no offset for {missing[0]}")
        delta = torch.stack([offsets[c] for c in mine])  # [units, ...]
        fns[site] = add(delta if units is not None else delta[0], strength=strength, units=units,
                        positions=positions)
    return fns
