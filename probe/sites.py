"""Activation sites: one grammar, in TransformerLens' spelling, for every model family.

A :class:`Site` is a frozen value ``Site(kind, layer)``; strings appear only at the edges (CLI,
store keys, files). The grammar:

=============================  ==========================================================
``hook_embed``                 the embedding output as the first block sees it (token
                               embedding, plus position embedding / scaling where the
                               architecture adds them)
``blocks.{L}.hook_resid_pre``  residual stream entering block L
``blocks.{L}.hook_resid_mid``  residual stream after attention, before the MLP
``blocks.{L}.hook_resid_post`` residual stream leaving block L
``blocks.{L}.hook_attn_out``   what attention adds to the residual stream
``blocks.{L}.hook_mlp_out``    what the MLP adds to the residual stream
``blocks.{L}.attn.hook_z``     per-head attention outputs before the output projection
``blocks.{L}.mlp.hook_post``   MLP neurons (after the activation / gating)
=============================  ==========================================================

Patterns expand over layers: ``blocks.*.hook_resid_post``, ``blocks.0-11.hook_mlp_out``,
``blocks.3,7.attn.hook_z``; ``resid_post`` is shorthand for ``blocks.*.hook_resid_post``.

>>> Site.parse("blocks.19.hook_resid_post")
Site(kind='hook_resid_post', layer=19)
>>> [str(s) for s in parse_sites("blocks.0-1.hook_mlp_out", n_layers=30)]
['blocks.0.hook_mlp_out', 'blocks.1.hook_mlp_out']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

SiteKind = Literal[
    "hook_embed",
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_z",
    "mlp.hook_post",
]
ALL_KINDS: tuple[str, ...] = get_args(SiteKind)
LAYER_KINDS: tuple[str, ...] = ALL_KINDS[1:]
DEFAULT_SITES = "hook_embed blocks.*.hook_resid_post"

_SITE_RE = re.compile(r"^blocks\.(?P<layers>[^.]+)\.(?P<kind>.+)$")


class SiteError(ValueError):
    """An activation site that does not exist or does not fit the model."""


@dataclass(frozen=True, order=True)
class Site:
    """One activation site: a kind from the grammar and, except for ``hook_embed``, a layer."""

    kind: str
    layer: int | None = None

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

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"blocks.{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse one concrete site name such as ``blocks.3.attn.hook_z``."""
        text = text.strip()
        if text == "hook_embed":
            return cls("hook_embed")
        m = _SITE_RE.match(text)
        if not m or not m["layers"].isdigit():
            raise SiteError(f"cannot parse site {text!r}; expected e.g. 'blocks.12.hook_resid_post'")
        return cls(m["kind"], int(m["layers"]))


def _expand_layers(spec: str, n_layers: int, original: str) -> list[int]:
    if spec == "*":
        return list(range(n_layers))
    layers: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise SiteError(f"bad layer list {spec!r} in {original!r}; use '*', '3', '0-11' or '3,7'")
        lo = int(m[1])
        hi = int(m[2]) if m[2] else lo
        if lo < 0:
            lo += n_layers
            hi = lo if not m[2] else hi
        if hi < lo:
            raise SiteError(f"empty layer range {part!r} in {original!r}; write it low-high, e.g. '3-5'")
        layers.extend(range(lo, hi + 1))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise SiteError(
            f"layer {bad[0]} in {original!r} is out of range: the model has {n_layers} layers "
            f"(0-{n_layers - 1})"
        )
    return layers


def parse_sites(spec: str | Iterable[str], *, n_layers: int) -> list[Site]:
    """Expand a site spec (comma-free list or space/semicolon-separated patterns) into sites.

    Args:
        spec: patterns such as ``"blocks.*.hook_resid_post"``, ``"resid_post"``,
            ``"blocks.0-3.attn.hook_z"``, or a list of them.
        n_layers: the model's number of blocks, to expand ``*`` and check ranges.
    """
    patterns = spec.replace(";", " ").split() if isinstance(spec, str) else list(spec)
    if not patterns:
        raise SiteError("no sites given; e.g. --sites 'blocks.*.hook_resid_post'")
    out: list[Site] = []
    for pat in patterns:
        short = pat.removeprefix("hook_")
        if pat != "hook_embed" and f"hook_{short}" in LAYER_KINDS:
            pat = f"blocks.*.hook_{short}"
        elif pat in LAYER_KINDS:
            pat = f"blocks.*.{pat}"
        if pat == "hook_embed":
            out.append(Site("hook_embed"))
            continue
        m = _SITE_RE.match(pat)
        if not m:
            raise SiteError(
                f"cannot parse site pattern {pat!r}; expected e.g. 'blocks.*.hook_resid_post', "
                f"'blocks.0-11.hook_mlp_out' or 'hook_embed'"
            )
        if m["kind"] not in LAYER_KINDS:
            raise SiteError(
                f"unknown site kind {m['kind']!r} in {pat!r}; known kinds: {', '.join(ALL_KINDS)}"
            )
        out.extend(Site(m["kind"], layer) for layer in _expand_layers(m["layers"], n_layers, pat))
    return sorted(set(out), key=lambda s: (ALL_KINDS.index(s.kind), s.layer or 0))
