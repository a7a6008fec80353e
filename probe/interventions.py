"""Every intervention operator, one function each, with one meaning of its words.

The words, everywhere in the toolkit (``probe steer --strength/--unit``, ``Setting``,
circuit modulation, these functions):

* ``strength`` -- an amount **added**, measured in ``unit``;
* ``unit`` -- what one unit of strength is: ``"absolute"`` (as given), ``"rms"`` (x the site's
  typical RMS, passed as ``rms=``; a steering vector records it per site) or ``"token-rms"``
  (x each position's own RMS at run time, as Wang et al.'s code);
* ``factor`` -- a **multiplier** of the existing value (1 leaves it alone, 0 removes it);
* ``direction`` / ``vector`` -- a vector in the site's value space; ``units`` -- indices of heads
  or neurons along the value's third axis (``hook_z``'s heads, ``mlp.hook_post``'s neurons: what
  a circuit is made of);
* ``positions`` -- which tokens (any mode of :meth:`probe.hooks.HookContext.positions`).

=========== ======================== ====================== ===================
operator    on a direction ``u``     on ``units``           on the whole value
=========== ======================== ====================== ===================
``add``     ``h + s c v``            ``h + s c v`` per unit (along ``v``)
``ablate``  ``h - (h.u) u``          ``0``                  ``0``
``clamp``   ``h + (s c - h.u) u``    ``s c``                --
``scale``   ``h + (f - 1)(h.u) u``   ``f h``                ``f h``
``replace`` --                       ``x``                  ``x``
``patch``   --                       another run's value    another run's value
=========== ======================== ====================== ===================

``s`` = strength, ``c`` = its unit, ``f`` = factor. Every operator on a direction is one
:class:`Shift`, ``h' = h + (offset * r + gain * h.u) u`` with ``r`` 1 or the position's RMS:
:func:`shift_amounts` and :func:`shift` apply it, with numbers that may differ per batch row
(steering's grids run many settings in one batch that way). :func:`loreft` is the low-rank
representation edit of LoReFT (Wu et al. 2024): ``R`` (``[r, d]``, orthonormal rows) spans a
subspace whose coordinates ``R h`` are replaced by ``W h + b``; it is a :class:`LowRankEdit`,
applied with :func:`lowrank_edit` (also with one ``R, W, b`` per batch row). :func:`zero` and
:func:`project_out` are :func:`ablate` of units / of a direction; ``replace_with`` is the old
name of :func:`replace`. :func:`grad_tap` is the gradient tap (``h + 0`` with the ``0`` a leaf
that requires grad) that :func:`probe.forward.run_with_grads` and circuits' attribution place.

Each operator returns a hook ``fn(value, ctx)`` for :func:`probe.hooks.hooks`:

>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> with lm.hooks({"blocks.12.hook_resid_post": add(v, strength=4.0, positions="last-prompt+generated"),
...                "blocks.5.attn.hook_z": ablate(units=[3])}):  # doctest: +SKIP
...     lm.generate(["Tell me about your day."])

A new operator is one function here: build it from :class:`Shift` (a move along a direction) or
:func:`on_units` (a change of the selected units or the whole value), see docs/extending.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from probe.hooks import HookContext, HookError, PositionMode

Unit = Literal["absolute", "rms", "token-rms"]
Units = Sequence[int] | Tensor | None

__all__ = ["InterventionError", "LowRankEdit", "Shift", "Unit", "ablate", "add", "clamp", "grad_tap",
           "loreft", "lowrank_edit", "on_units", "patch",
           "project_out", "replace", "replace_with", "safe_limit", "scale", "shift",
           "shift_amounts", "unit_size", "zero"]


class InterventionError(HookError):
    """An operator was asked for something it cannot do; the message says what to pass."""


# ------------------------------------------------------------------------------ words
def unit_size(unit: Unit, rms: float | None = None) -> float:
    """What one unit of strength is, ahead of the run (``"token-rms"``: 1, times the RMS later)."""
    if unit not in get_args(Unit):
        raise InterventionError(f"unknown unit {unit!r}; choose absolute, rms or token-rms")
    if unit != "rms":
        return 1.0
    if rms is None:
        raise InterventionError("unit='rms' needs the site's typical RMS (rms=...); or use "
                                "unit='absolute' or 'token-rms'")
    return float(rms)


def _number(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InterventionError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def _unit_vector(direction: Tensor) -> tuple[Tensor, float]:
    norm = float(direction.norm())
    if norm == 0.0:
        raise InterventionError("the direction is a zero vector; give a non-zero one")
    return direction / norm, norm


# ------------------------------------------------------------------------------ directions
@dataclass(frozen=True, eq=False)
class Shift:
    """A move along a unit direction: ``h' = h + (offset * r + gain * h.u) u`` at ``positions``.

    ``r`` is each position's RMS when ``token_rms`` else 1. Every operator on a direction is
    one; call it as a hook, or read its numbers (steering stacks them into per-row tables).
    """

    direction: Tensor
    offset: float = 0.0
    gain: float = 0.0
    token_rms: bool = False
    positions: PositionMode | range = "all"

    def __call__(self, value: Tensor, ctx: HookContext) -> Tensor:
        flat = value.reshape(value.shape[0], value.shape[1], -1) if value.dim() != 3 else value
        u = self.direction.to(device=value.device, dtype=value.dtype)
        if flat.shape[-1] != u.shape[-1]:
            raise InterventionError(f"the direction at {ctx.site} has {u.shape[-1]} dims; the "
                                    f"value there has {flat.shape[-1]}")
        mask = ctx.positions(self.positions).to(flat.dtype)
        amounts = shift_amounts(flat, u, offset=self.offset, gain=self.gain,
                                token_rms=self.token_rms, mask=mask)
        return shift(flat, u, amounts).reshape(value.shape)


def shift_amounts(value: Tensor, direction: Tensor, *, offset, gain=0.0, token_rms=False,
                  mask: Tensor) -> Tensor:
    """``[batch, pos]``: how far each position of ``value`` ``[batch, pos, d]`` moves along
    ``direction`` (a unit ``[d]``, or ``[batch, d]`` one per row) under :class:`Shift`'s formula.

    ``offset`` and ``gain`` are numbers or ``[batch]`` tensors (one per row), ``token_rms`` a
    bool or a ``[batch]`` bool tensor; ``mask`` ``[batch, pos]`` (0/1 in ``value``'s dtype)
    selects the positions. A zero ``gain`` or a False ``token_rms`` skips that term's work.
    """
    coef = _per_row(offset) * mask
    if token_rms is True or isinstance(token_rms, Tensor):
        rms = value.float().pow(2).mean(-1).sqrt().to(value.dtype)
        coef = coef * rms if token_rms is True else torch.where(token_rms[:, None], coef * rms, coef)
    if isinstance(gain, Tensor) or gain != 0:
        proj = torch.einsum("btd,bd->bt", value, direction) if direction.dim() == 2 else value @ direction
        coef = coef + (_per_row(gain) * mask) * proj
    return coef


def shift(value: Tensor, direction: Tensor, amounts: Tensor) -> Tensor:
    """``value + amounts * direction`` (the move :func:`shift_amounts` computed)."""
    u = direction[:, None, :] if direction.dim() == 2 else direction
    return torch.addcmul(value, amounts[..., None], u)


def safe_limit(value: Tensor) -> float:
    """The largest move along a unit direction that keeps ``value`` finite in its dtype and its
    square inside the float32 sum of squares the next RMS/LayerNorm computes (with room for the
    value itself); beyond it a model silently computes garbage."""
    norm_max = max(torch.finfo(torch.float32).max, torch.finfo(value.dtype).max)
    return min(math.sqrt(norm_max), torch.finfo(value.dtype).max) / 2


def _per_row(x):
    return x[:, None] if isinstance(x, Tensor) and x.dim() == 1 else x


# ------------------------------------------------------------------------------ subspaces
@dataclass(frozen=True, eq=False)
class LowRankEdit:
    """``h' = h + s R^T((W - R) h + b)`` at ``positions`` (LoReFT): the coordinates of ``h`` in
    the subspace of ``R``'s rows are set to ``W h + b``; ``s`` scales the edit (1 = as given).

    ``rotation`` is ``R`` ``[r, d]``, ``delta`` is ``W - R`` ``[r, d]``, ``bias`` is ``b`` ``[r]``.
    """

    rotation: Tensor
    delta: Tensor
    bias: Tensor
    strength: float = 1.0
    positions: PositionMode | range = "all"

    @property
    def width(self) -> int:
        return int(self.rotation.shape[-1])

    def __call__(self, value: Tensor, ctx: HookContext) -> Tensor:
        flat = value.reshape(value.shape[0], value.shape[1], -1) if value.dim() != 3 else value
        if flat.shape[-1] != self.width:
            raise InterventionError(f"the subspace at {ctx.site} has {self.width} dims; the "
                                    f"value there has {flat.shape[-1]}")
        mask = ctx.positions(self.positions).to(flat.dtype)
        cast = {"device": value.device, "dtype": value.dtype}
        edit = lowrank_edit(flat, self.rotation.to(**cast), self.delta.to(**cast),
                            self.bias.to(**cast), self.strength * mask)
        return (flat + edit).reshape(value.shape)


def lowrank_edit(value: Tensor, rotation: Tensor, delta: Tensor, bias: Tensor, amounts) -> Tensor:
    """``[batch, pos, d]``: the edit ``amounts * R^T((W - R) h + b)`` of :class:`LowRankEdit`.

    ``rotation`` / ``delta`` are ``[r, d]`` (one for all rows) or ``[batch, r, d]`` (one per
    row), ``bias`` ``[r]`` or ``[batch, r]``; ``amounts`` ``[batch, pos]`` (strength x the
    position mask) or a number.
    """
    if rotation.dim() == 2:
        coords = value @ delta.T + bias                                  # [b, pos, r]
        edit = coords @ rotation
    else:
        coords = torch.einsum("btd,brd->btr", value, delta) + bias[:, None, :]
        edit = torch.einsum("btr,brd->btd", coords, rotation)
    return edit * (amounts[..., None] if isinstance(amounts, Tensor) else amounts)


def loreft(rotation: Tensor, source: Tensor, bias: Tensor, *, strength: float = 1.0,
           positions: PositionMode | range = "all") -> LowRankEdit:
    """LoReFT's edit ``h + s R^T(W h + b - R h)``: ``rotation`` ``R`` ``[r, d]`` with
    orthonormal rows, ``source`` ``W`` ``[r, d]``, ``bias`` ``b`` ``[r]``, ``strength`` ``s``."""
    s = _number("strength", strength)
    R, W, b = (torch.as_tensor(x).detach().float() for x in (rotation, source, bias))
    if R.dim() != 2 or W.shape != R.shape or b.shape != R.shape[:1]:
        raise InterventionError(f"loreft needs rotation and source of one shape [r, d] and a bias "
                                f"[r]; got {tuple(R.shape)}, {tuple(W.shape)}, {tuple(b.shape)}")
    gram = R @ R.T
    if not torch.allclose(gram, torch.eye(len(R)), atol=1e-3):
        raise InterventionError("loreft's rotation must have orthonormal rows (R R^T = I); "
                                "orthonormalise it, e.g. with torch.linalg.qr(R.T).Q.T")
    return LowRankEdit(R, W - R, b, strength=s, positions=positions)


# ------------------------------------------------------------------------------ units
def on_units(edit: Callable[[Tensor], Tensor], units: Units = None, *,
             positions: PositionMode | range = "all"):
    """A hook that replaces the selected ``units`` (or the whole value) by ``edit(selected)`` at
    ``positions``; every other unit and position passes untouched."""
    index = None if units is None else torch.as_tensor(units, dtype=torch.long)

    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        m = ctx.mask(positions, value)  # [b, pos, 1, ...]
        if index is None:
            return value + (edit(value) - value) * m
        if value.dim() < 3:
            raise InterventionError(f"units need a value with a unit axis (heads or neurons); "
                                    f"{ctx.site} has shape {tuple(value.shape)}")
        out = value.clone()
        sel = out[:, :, index]
        new = edit(sel)
        out[:, :, index] = sel + (new - sel) * m.reshape(*m.shape[:2], *([1] * (sel.dim() - 2)))
        return out
    return fn


# ------------------------------------------------------------------------------ operators
def add(vector: Tensor, *, strength: float = 1.0, unit: Unit = "absolute", rms: float | None = None,
        units: Units = None, positions: PositionMode | range = "all"):
    """Add ``strength`` (in ``unit``) times ``vector``.

    Without ``units``: a :class:`Shift` along ``vector`` (``h + s c v``). With ``units``:
    ``vector`` holds one row per unit (``[len(units), ...]``, e.g. a circuit's emotion offsets)
    added to those units.
    """
    s = _number("strength", strength)
    c = unit_size(unit, rms)
    if units is not None:
        if unit == "token-rms":
            raise InterventionError("unit='token-rms' is for directions; give units an "
                                    "'absolute' or 'rms' strength")
        amount = s * c
        return on_units(lambda sel: sel + amount * vector.to(device=sel.device, dtype=sel.dtype), units,
                        positions=positions)
    u, norm = _unit_vector(vector)
    return Shift(u, offset=s * c * norm, token_rms=unit == "token-rms", positions=positions)


def ablate(direction: Tensor | None = None, *, units: Units = None,
           positions: PositionMode | range = "all"):
    """Remove: the component along ``direction`` (``h - (h.u) u``), else zero the ``units``
    (or, with neither, the whole value: e.g. one head's site ``blocks.5.attn.hook_z[3]``)."""
    if direction is not None:
        if units is not None:
            raise InterventionError("ablate takes a direction or units, not both")
        return Shift(_unit_vector(direction)[0], gain=-1.0, positions=positions)
    index = None if units is None else torch.as_tensor(units, dtype=torch.long)

    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        m = ctx.mask(positions, value)
        if index is None:
            return value * (1 - m)
        out = value.clone()
        sel = out[:, :, index]
        out[:, :, index] = sel * (1 - m.reshape(*m.shape[:2], *([1] * (sel.dim() - 2))))
        return out
    return fn


def clamp(direction: Tensor | None = None, *, strength: float, unit: Unit = "absolute",
          rms: float | None = None, units: Units = None, positions: PositionMode | range = "all"):
    """Set the component along ``direction`` to ``strength`` (in ``unit``): ``h + (s c - h.u) u``;
    or set the ``units`` themselves to ``s c``."""
    s = _number("strength", strength)
    c = unit_size(unit, rms)
    if direction is None:
        if units is None:
            raise InterventionError("clamp needs a direction or units")
        if unit == "token-rms":
            raise InterventionError("unit='token-rms' is for directions; give units an "
                                    "'absolute' or 'rms' strength")
        return on_units(lambda sel: torch.full_like(sel, s * c), units, positions=positions)
    if units is not None:
        raise InterventionError("clamp takes a direction or units, not both")
    return Shift(_unit_vector(direction)[0], offset=s * c, gain=-1.0,
                 token_rms=unit == "token-rms", positions=positions)


def scale(direction: Tensor | None = None, *, factor: float, units: Units = None,
          positions: PositionMode | range = "all"):
    """Multiply by ``factor``: the component along ``direction`` (``h + (f - 1)(h.u) u``), else
    the ``units`` (or, with neither, the whole value)."""
    f = _number("factor", factor)
    if direction is not None:
        if units is not None:
            raise InterventionError("scale takes a direction or units, not both")
        return Shift(_unit_vector(direction)[0], gain=f - 1.0, positions=positions)
    return on_units(lambda sel: sel * f, units, positions=positions)


def replace(values: Tensor, *, units: Units = None, positions: PositionMode | range = "all"):
    """Replace the value (or its ``units``) by fixed ``values`` (mean ablation: the site's mean
    over a dataset; with ``units``, one row per unit)."""
    index = None if units is None else torch.as_tensor(units, dtype=torch.long)

    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        x = values.to(device=value.device, dtype=value.dtype)
        return _overwrite(value, index, ctx.mask(positions, value), x)
    return fn


def patch(source: Tensor, *, units: Units = None, positions: PositionMode | range = "all"):
    """Activation patching: take the value another run cached at this site (same shape).

    ``source`` is what :func:`probe.forward.run_with_cache` returned for the same site on the
    other (clean or corrupt) batch; the two batches must align position by position. With
    ``units`` only those heads or neurons are taken from it.
    """
    index = None if units is None else torch.as_tensor(units, dtype=torch.long)

    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        if source.shape != value.shape:
            raise HookError(f"patch at {ctx.site}: cached value has shape {tuple(source.shape)} "
                            f"but this run's is {tuple(value.shape)}; the two batches must have "
                            "the same rows and token positions")
        src = source.to(device=value.device, dtype=value.dtype)
        return _overwrite(value, index, ctx.mask(positions, value),
                          src if index is None else src[:, :, index])
    return fn


def _overwrite(value: Tensor, index: Tensor | None, m: Tensor, x: Tensor) -> Tensor:
    """``value`` with ``x`` in place of it (or of its units ``index``) where the mask ``m`` is 1."""
    if index is None:
        return value * (1 - m) + x * m
    out = value.clone()
    sel = out[:, :, index]
    m = m.reshape(*m.shape[:2], *([1] * (sel.dim() - 2)))
    out[:, :, index] = sel * (1 - m) + x * m
    return out


def grad_tap(values: dict, leaves: dict):
    """A gradient tap: ``a -> a + 0`` with the ``0`` a fresh leaf that requires grad, so the
    forward is unchanged and the leaf's gradient is the gradient at ``a``. Records the detached
    value and the leaf per site in ``values`` and ``leaves`` (see
    :func:`probe.forward.run_with_grads`)."""
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        values[ctx.site] = value.detach().clone()
        leaf = torch.zeros_like(value, requires_grad=True)
        leaves[ctx.site] = leaf
        return value + leaf
    return fn


def zero(*, units: Units = None, positions: PositionMode | range = "all"):
    """Zero-ablate the value or its ``units``: :func:`ablate` without a direction."""
    return ablate(units=units, positions=positions)


def project_out(direction: Tensor, *, positions: PositionMode | range = "all"):
    """Remove the component along ``direction``: :func:`ablate` of a direction."""
    return ablate(direction, positions=positions)


replace_with = replace  # the old name
