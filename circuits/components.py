"""Components a circuit is made of: heads, neurons, sublayers, residual positions, queries, keys.

A component is one unit of one site: head ``h`` of ``blocks.L.attn.hook_z``, neuron ``n`` of
``blocks.L.mlp.hook_post``, the whole ``blocks.L.hook_attn_out`` / ``hook_mlp_out`` (a sublayer),
the residual stream ``blocks.L.hook_resid_pre`` at one position (counted from each row's last
token: ``@-1`` is the last token), a query head (``attn.hook_q[h]``) or a key/value head
(``attn.hook_k[g]``; grouped-query models keep their KV heads).

Attribution and patching work on *groups*: one whole site with its unit axis, so that a single
read of ``blocks.L.mlp.hook_post`` gives every neuron of layer L at once.

>>> Component.parse("blocks.5.attn.hook_z[3]").type
'heads'
>>> str(Component(Site("hook_resid_pre", 7), position=-1))
'blocks.7.hook_resid_pre@-1'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from probe.arch import ArchitectureError
from probe.errors import EmoprobeError
from probe.sites import Site

ComponentType = Literal["heads", "neurons", "sublayers", "resid", "queries", "keys"]
TYPES: tuple[str, ...] = get_args(ComponentType)
#: Site kinds of each component type.
KINDS: dict[str, tuple[str, ...]] = {
    "heads": ("attn.hook_z",), "neurons": ("mlp.hook_post",),
    "sublayers": ("hook_attn_out", "hook_mlp_out"), "resid": ("hook_resid_pre",),
    "queries": ("attn.hook_q",), "keys": ("attn.hook_k",),
}
_TYPE_OF = {kind: t for t, kinds in KINDS.items() for kind in kinds}
#: Kinds whose value has a unit axis at dim 2 (``[batch, pos, unit, ...]``).
_UNIT_AXIS = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "mlp.hook_post")


class ComponentError(EmoprobeError, ValueError):
    """Components that do not exist in the model or cannot be used as asked."""


@dataclass(frozen=True, order=True)
class Component:
    """One component: a site (with its head or neuron), and a position for ``resid``."""

    site: Site
    position: int | None = None

    def __post_init__(self) -> None:
        if self.site.kind not in _TYPE_OF:
            raise ComponentError(f"{self.site} is not a component site; components live at "
                                 f"{', '.join(_TYPE_OF)}")
        if (self.position is None) != (self.site.kind != "hook_resid_pre"):
            raise ComponentError(f"{self.site}: a position (e.g. @-1) goes with hook_resid_pre "
                                 "and only with it")
        if self.position is not None and self.position >= 0:
            raise ComponentError(f"positions count from the last token: -1, -2, ...; got "
                                 f"{self.position}")

    @property
    def type(self) -> str:
        return _TYPE_OF[self.site.kind]

    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def unit(self) -> int:
        """Index along the group's unit axis (head, neuron, 0 for sublayers, -position-1)."""
        if self.position is not None:
            return -self.position - 1
        return self.site.unit if self.site.unit is not None else 0

    def __str__(self) -> str:
        return str(self.site) if self.position is None else f"{self.site}@{self.position}"

    @classmethod
    def parse(cls, text: str) -> Component:
        name, _, pos = text.partition("@")
        return cls(Site.parse(name), int(pos) if pos else None)


@dataclass(frozen=True)
class Group:
    """A whole site and its units: every component of one type at one site."""

    type: str
    site: Site
    n_units: int

    def component(self, unit: int) -> Component:
        if self.type == "resid":
            return Component(self.site, position=-unit - 1)
        if self.type == "sublayers":
            return Component(self.site)
        key = "neuron" if self.type == "neurons" else "head"
        return Component(Site(self.site.kind, self.site.layer, **{key: unit}))

    def components(self) -> list[Component]:
        return [self.component(u) for u in range(self.n_units)]


def parse_types(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"heads,neurons"`` -> ``("heads", "neurons")``, checked against :data:`TYPES`."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in TYPES]
    if bad or not items:
        raise ComponentError(f"unknown component type(s) {bad or spec!r}; choose from "
                             f"{', '.join(TYPES)}")
    return tuple(dict.fromkeys(items))


def groups(lm, types: Sequence[str], layers: Iterable[int], *, positions: int = 8) -> list[Group]:
    """Every group of the requested types at ``layers`` (``positions``: resid positions)."""
    units = lm.arch.units(lm.model)
    out = []
    for t in parse_types(types):
        for kind in KINDS[t]:
            try:
                lm.arch.where(kind)
            except ArchitectureError as exc:
                raise ComponentError(f"component type {t!r} needs site {kind}, which family "
                                     f"{lm.arch.family!r} lacks: {exc}") from exc
            n = positions if t == "resid" else units.get(kind, 1)
            out.extend(Group(t, Site(kind, layer), n) for layer in layers)
    return out


def group_of(lm, component: Component, *, positions: int = 8) -> Group:
    t = component.type
    n = positions if t == "resid" else lm.arch.units(lm.model).get(component.site.kind, 1)
    return Group(t, component.site.whole, n)


# ------------------------------------------------------------------------ tensor views
def per_unit(group: Group, x: Tensor) -> Tensor:
    """``[batch, pos, ...]`` -> ``[batch, pos, units]`` summing each unit's own dims.

    For ``resid`` the result has one unit per *column*; :func:`at_units` picks the positions.
    """
    if group.site.kind in _UNIT_AXIS:
        return x if x.dim() == 3 else x.flatten(3).sum(-1)
    return x.sum(-1, keepdim=True)


def at_units(group: Group, per_pos: Tensor, mask: Tensor, last: Tensor) -> Tensor:
    """``[batch, pos, units]`` contributions -> ``[batch, n_units]`` per component.

    Sums over the positions in ``mask`` (``[batch, pos]`` bool); for ``resid`` takes, for unit
    ``u``, the column ``last - u`` of each row.
    """
    if group.type != "resid":
        return (per_pos * mask[..., None].to(per_pos.dtype)).sum(1)
    cols = last[:, None] - torch.arange(group.n_units, device=last.device)[None, :]
    taken = per_pos[..., 0].gather(1, cols.clamp(min=0))
    ok = mask.gather(1, cols.clamp(min=0)) & (cols >= 0)
    return taken * ok.to(taken.dtype)


def row_mask(group: Group, units: Tensor, mask: Tensor, last: Tensor, like: Tensor) -> Tensor:
    """Bool mask shaped like ``like`` (a value of ``group``'s site) selecting, in row ``r``,
    unit ``units[r]`` (``-1``: nothing) at the positions in ``mask``."""
    on = units >= 0
    if group.type == "resid":
        cols = (last - units.clamp(min=0))[:, None]
        pos = torch.arange(mask.shape[1], device=mask.device)[None, :] == cols
        m = pos & mask & on[:, None]
        return m[..., None].expand_as(like)
    if group.type == "sublayers":
        return (mask & on[:, None])[..., None].expand_as(like)
    onehot = torch.nn.functional.one_hot(units.clamp(min=0), group.n_units).bool() & on[:, None]
    m = mask[:, :, None] & onehot[:, None, :]
    return m if like.dim() == 3 else m[..., None].expand_as(like)
