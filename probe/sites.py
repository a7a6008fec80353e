"""Activation sites: one grammar, in TransformerLens' spelling, for every model family.

A :class:`Site` is a frozen value ``Site(kind, layer, head=None, neuron=None)``; strings appear
only at the edges (CLI, store keys, files). The grammar:

=================================  ======================================================
``hook_embed``                     the embedding output as the first block sees it (token
                                   embedding, plus position embedding / scaling where the
                                   architecture adds them)
``blocks.{L}.hook_resid_pre``      residual stream entering block L
``blocks.{L}.hook_resid_mid``      residual stream after attention, before the MLP
``blocks.{L}.hook_resid_post``     residual stream leaving block L
``blocks.{L}.hook_attn_out``       what attention adds to the residual stream
``blocks.{L}.hook_mlp_out``        what the MLP adds to the residual stream
``blocks.{L}.attn.hook_q``         query projections, ``[..., head, d_head]`` (before rotary)
``blocks.{L}.attn.hook_k``         key projections, ``[..., kv_head, d_head]`` (before rotary)
``blocks.{L}.attn.hook_v``         value projections, ``[..., kv_head, d_head]``
``blocks.{L}.attn.hook_z``         per-head attention outputs before the output projection,
                                   ``[..., head, d_head]``
``blocks.{L}.mlp.hook_post``       MLP neurons (after the activation / gating)
=================================  ======================================================

One head or one neuron is a site too: ``blocks.5.attn.hook_z[3]`` (``Site("attn.hook_z", 5,
head=3)``), ``blocks.5.mlp.hook_post[1024]`` (``neuron=1024``). For ``hook_k``/``hook_v`` the head
index is a key/value head: grouped-query models (SmolLM2: 9 query heads over 3 KV heads) are
addressed as they are, never converted.

Patterns expand over layers and units: ``blocks.*.hook_resid_post``, ``blocks.0-11.hook_mlp_out``,
``blocks.3,7.attn.hook_z``, ``blocks.5.attn.hook_z[0-3]``, ``blocks.*.attn.hook_z[*]`` (every head:
pass the model's sizes); ``resid_post`` is shorthand for ``blocks.*.hook_resid_post``.

>>> Site.parse("blocks.19.hook_resid_post")
Site(kind='hook_resid_post', layer=19)
>>> str(Site("attn.hook_z", 5, head=3))
'blocks.5.attn.hook_z[3]'
>>> [str(s) for s in parse_sites("blocks.0-1.hook_mlp_out", n_layers=30)]
['blocks.0.hook_mlp_out', 'blocks.1.hook_mlp_out']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from probe.errors import EmoprobeError

SiteKind = Literal[
    "hook_embed",
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_z",
    "mlp.hook_post",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
]
ALL_KINDS: tuple[str, ...] = get_args(SiteKind)
#: Kinds inside a block: every kind but the embedding.
LAYER_KINDS: tuple[str, ...] = tuple(k for k in ALL_KINDS if k != "hook_embed")
#: Kinds an activation store can hold (pooled per sample), by name: q/k/v are for
#: interventions, and a kind added to :data:`SiteKind` is not stored until it is named here.
STORE_KINDS: tuple[str, ...] = ("hook_embed", "hook_resid_pre", "hook_resid_mid",
                                "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                                "attn.hook_z", "mlp.hook_post")
#: Kinds whose sites may name one head (``head=``); k/v heads are key/value heads.
HEAD_KINDS: tuple[str, ...] = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")
#: Kinds whose sites may name one neuron (``neuron=``).
NEURON_KINDS: tuple[str, ...] = ("mlp.hook_post",)
DEFAULT_SITES = "hook_embed blocks.*.hook_resid_post"

_SITE_RE = re.compile(r"^blocks\.(?P<layers>[^.]+)\.(?P<kind>[a-z_.]+?)(?:\[(?P<unit>[^\]]*)\])?$")


class SiteError(EmoprobeError, ValueError):
    """An activation site that does not exist or does not fit the model."""


@functools.total_ordering
@dataclass(frozen=True)
class Site:
    """One activation site: a kind from the grammar, a layer (except ``hook_embed``), and
    optionally one head (``attn.hook_z/q/k/v``) or one neuron (``mlp.hook_post``)."""

    kind: str
    layer: int | None = None
    head: int | None = None
    neuron: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise SiteError(
                f"unknown site kind {self.kind!r}; the grammar has {', '.join(ALL_KINDS)}"
            )
        if self.kind == "hook_embed":
            if self.layer is not None:
                raise SiteError("hook_embed has no layer")
        elif not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"site {self.kind!r} needs a layer >= 0, got {self.layer!r}")
        for name, value, kinds in (("head", self.head, HEAD_KINDS),
                                   ("neuron", self.neuron, NEURON_KINDS)):
            if value is None:
                continue
            if self.kind not in kinds:
                raise SiteError(f"site {self.kind!r} has no {name}s; {name}= works with "
                                f"{', '.join(kinds)}")
            if not isinstance(value, int) or value < 0:
                raise SiteError(f"{name} must be an int >= 0, got {value!r}")

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in (("head", self.head), ("neuron", self.neuron))
                        if v is not None)
        return f"Site(kind={self.kind!r}, layer={self.layer}{extra})"

    def __str__(self) -> str:
        name = self.kind if self.layer is None else f"blocks.{self.layer}.{self.kind}"
        return name if self.unit is None else f"{name}[{self.unit}]"

    def _key(self) -> tuple:
        return (ALL_KINDS.index(self.kind), -1 if self.layer is None else self.layer,
                -1 if self.unit is None else self.unit)

    def __lt__(self, other: Site) -> bool:
        if not isinstance(other, Site):
            return NotImplemented
        return self._key() < other._key()

    @property
    def unit(self) -> int | None:
        """The head or neuron index, if the site names one."""
        return self.head if self.head is not None else self.neuron

    @property
    def whole(self) -> Site:
        """The same site without its head or neuron index."""
        return Site(self.kind, self.layer)

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse one concrete site name such as ``blocks.3.attn.hook_z`` or ``...hook_z[2]``."""
        text = text.strip()
        if text == "hook_embed":
            return cls("hook_embed")
        m = _SITE_RE.match(text)
        if not m or not m["layers"].isdigit() or (m["unit"] is not None and not m["unit"].isdigit()):
            raise SiteError(f"cannot parse site {text!r}; expected e.g. 'blocks.12.hook_resid_post' "
                            "or 'blocks.5.attn.hook_z[3]'")
        return _with_unit(m["kind"], int(m["layers"]), None if m["unit"] is None else int(m["unit"]))


def _with_unit(kind: str, layer: int | None, unit: int | None) -> Site:
    if unit is None:
        return Site(kind, layer)
    if kind in NEURON_KINDS:
        return Site(kind, layer, neuron=unit)
    if kind in HEAD_KINDS:
        return Site(kind, layer, head=unit)
    raise SiteError(f"site kind {kind!r} has no heads or neurons to index with [{unit}]")


def _expand(spec: str, n: int | None, original: str, what: str) -> list[int]:
    """``*``, ``3``, ``0-11``, ``3,7`` or ``-1`` -> indices in ``range(n)``."""
    if spec == "*":
        if n is None:
            raise SiteError(f"'{original}': '*' over {what}s needs the model's number of {what}s")
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise SiteError(f"bad {what} list {spec!r} in {original!r}; use '*', '3', '0-11' or '3,7'")
        lo = int(m[1])
        hi = int(m[2]) if m[2] else lo
        if lo < 0:
            if n is None:
                raise SiteError(f"'{original}': negative {what} {lo} needs the model's size")
            lo += n
            hi = lo if not m[2] else hi
        if hi < lo:
            raise SiteError(f"empty {what} range {part!r} in {original!r}; write it low-high, e.g. '3-5'")
        out.extend(range(lo, hi + 1))
    bad = [i for i in out if n is not None and not 0 <= i < n]
    if bad:
        raise SiteError(f"{what} {bad[0]} in {original!r} is out of range: the model has {n} "
                        f"{what}s (0-{n - 1})")
    return out


def parse_sites(spec: str | Iterable[str], *, n_layers: int,
                units: Mapping[str, int] | None = None) -> list[Site]:
    """Expand a site spec (space/semicolon-separated patterns, or a list) into sites.

    Args:
        spec: patterns such as ``"blocks.*.hook_resid_post"``, ``"resid_post"``,
            ``"blocks.0-3.attn.hook_z"``, ``"blocks.5.attn.hook_z[0-2]"``, or a list of them.
        n_layers: the model's number of blocks, to expand ``*`` and check ranges.
        units: per kind, how many heads or neurons the model has (e.g.
            :func:`probe.arch.Architecture.units`), to expand ``[*]`` and check indices.
    """
    patterns = spec.replace(";", " ").split() if isinstance(spec, str) else list(spec)
    if not patterns:
        raise SiteError("no sites given; e.g. --sites 'blocks.*.hook_resid_post'")
    out: list[Site] = []
    for pat in patterns:
        short = pat.removeprefix("hook_")
        if pat != "hook_embed" and f"hook_{short}" in LAYER_KINDS:
            pat = f"blocks.*.hook_{short}"
        elif pat.split("[")[0] in LAYER_KINDS:
            pat = f"blocks.*.{pat}"
        if pat == "hook_embed":
            out.append(Site("hook_embed"))
            continue
        m = _SITE_RE.match(pat)
        if not m:
            raise SiteError(
                f"cannot parse site pattern {pat!r}; expected e.g. 'blocks.*.hook_resid_post', "
                f"'blocks.0-11.hook_mlp_out', 'blocks.5.attn.hook_z[3]' or 'hook_embed'"
            )
        kind = m["kind"]
        if kind not in LAYER_KINDS:
            raise SiteError(
                f"unknown site kind {kind!r} in {pat!r}; known kinds: {', '.join(ALL_KINDS)}"
            )
        layers = _expand(m["layers"], n_layers, pat, "layer")
        if m["unit"] is None:
            out.extend(Site(kind, layer) for layer in layers)
            continue
        if kind not in HEAD_KINDS + NEURON_KINDS:
            raise SiteError(f"site kind {kind!r} in {pat!r} has no heads or neurons to index")
        what = "neuron" if kind in NEURON_KINDS else "head"
        idx = _expand(m["unit"], (units or {}).get(kind), pat, what)
        out.extend(_with_unit(kind, layer, i) for layer in layers for i in idx)
    return sorted(set(out), key=lambda s: s._key())
