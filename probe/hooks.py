"""One hook layer under everything: read, write and differentiate at any :class:`Site`.

A hook is ``fn(value, ctx) -> Tensor | None``: it gets the site's value and a
:class:`HookContext` (which positions are prompt or generated tokens, padding, the row's content
span) and returns a replacement, or ``None`` to leave the value as it is (a read). Capture,
steering, activation patching and attribution patching are all users of :func:`hooks`:

>>> with hooks(lm, {"blocks.12.hook_resid_post": lambda t, ctx: t + 4.0 * v}):  # doctest: +SKIP
...     out = lm.generate(["Tell me about your day."], max_new_tokens=40)

What a value is, per site kind (``...`` = ``batch, pos``):

* ``hook_embed``, ``hook_resid_*``, ``hook_attn_out``, ``hook_mlp_out``: ``[..., d_model]``;
* ``attn.hook_q`` / ``hook_z``: ``[..., head, d_head]``; ``attn.hook_k`` / ``hook_v``:
  ``[..., kv_head, d_head]`` (grouped-query models are not converted);
* ``mlp.hook_post``: ``[..., d_mlp]``;
* a site with ``head=h``: ``[..., d_head]``; with ``neuron=n``: ``[...]``.

Every site is writable with the meaning its name promises. ``hook_resid_mid`` in particular is
read and written as ``resid_pre + attn_out`` at attention's output, so a write there changes the
residual stream that the MLP *and* every later block see (a hook on the MLP norm's input would
change the MLP's input only). Several sites on one module run in execution order
(``hook_embed`` before ``blocks.0.hook_resid_pre``; a whole site before its heads).

Hooks are torch module hooks: they fire in any call of the model (``model(...)``,
``model.generate(...)`` with or without the KV cache, a backward pass), in whatever grad mode the
caller chose, and are removed in ``finally``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from probe.hook_context import (
    HookContext,
    HookError,
    PositionMode,
    _Forward,
    generated_delay,
    opening_length,
    position_count,
)
from probe.sites import Site, SiteError, parse_sites

__all__ = ["EXECUTION_ORDER", "HookContext", "HookError", "HookFn", "HookManager", "Hooks",
           "PositionMode", "Route", "StopForward", "active_managers", "generated_delay", "hooks",
           "module_input_hooks", "module_output_hooks", "opening_length", "position_count",
           "resolve", "route"]

HookFn = Callable[[Tensor, "HookContext"], "Tensor | None"]
Hooks = Mapping[Site | str, HookFn | Sequence[HookFn]]

#: Order in which a decoder block computes each site kind.
EXECUTION_ORDER: dict[str, float] = {
    "hook_embed": 0, "hook_resid_pre": 1, "_stash": 1.5, "attn.hook_q": 2, "attn.hook_k": 3,
    "attn.hook_v": 4, "attn.hook_z": 5, "hook_attn_out": 6, "hook_resid_mid": 7,
    "mlp.hook_post": 8, "hook_mlp_out": 9, "hook_resid_post": 10,
}
_HEADED = {"attn.hook_q": "heads", "attn.hook_z": "heads", "attn.hook_k": "kv", "attn.hook_v": "kv"}


class StopForward(Exception):
    """Raised after the deepest block a caller needs: the rest of the model is skipped."""


# --------------------------------------------------------------------------------- routes
@dataclass(frozen=True, eq=False)
class Route:
    """Where a site's value lives: a module's input or output, and how to view it.

    ``value(raw)`` gives what a hook sees; ``replace(raw, new)`` builds the raw tensor that
    carries a hook's replacement. ``resid_mid`` routes have ``mid=True`` (see module docstring).
    """

    site: Site
    module: nn.Module
    io: Literal["input", "output"]
    path: str = ""  # the module's path inside its block ("" = the block)
    part: tuple[int, int] | None = None  # slice of a fused last dim (GPT-2 c_attn)
    heads: int | None = None  # view the last dim as [heads, d_head]
    mid: bool = False

    def value(self, raw: Tensor) -> Tensor:
        x = raw if self.part is None else raw[..., self.part[0]:self.part[1]]
        if self.heads is not None:
            x = x.unflatten(-1, (self.heads, -1))
        if self.site.head is not None:
            return x[..., self.site.head, :]
        if self.site.neuron is not None:
            return x[..., self.site.neuron]
        return x

    def replace(self, raw: Tensor, new: Tensor) -> Tensor:
        view = self.value(raw)
        if new.shape != view.shape:
            raise HookError(f"hook at {self.site} returned shape {tuple(new.shape)}; the value "
                            f"has shape {tuple(view.shape)}")
        if self.part is None and self.site.unit is None:
            return new.reshape(raw.shape).to(raw.dtype)
        out = raw.clone()
        self.value(out).copy_(new)
        return out


def route(lm, site: Site) -> Route:
    """The :class:`Route` of ``site`` in a loaded model (checks layer, head and neuron)."""
    arch, model = lm.arch, lm.model
    n_layers = len(arch.layers(model))
    if site.layer is not None and site.layer >= n_layers:
        raise SiteError(f"{site} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    units = arch.units(model)
    if site.unit is not None and site.unit >= units[site.kind]:
        what = "neuron" if site.neuron is not None else "head"
        raise SiteError(f"{site}: the model has {units[site.kind]} {what}s per layer at "
                        f"{site.kind} (0-{units[site.kind] - 1})")
    kind = "hook_attn_out" if site.kind == "hook_resid_mid" else site.kind
    where = arch.where(kind)
    module, io = arch.module(model, kind, site.layer or 0)
    part = None
    if len(where) == 3:
        d = arch.head_shape(model)[0] * arch.head_shape(model)[1]
        i = "qkv".index(where[2])
        part = (i * d, (i + 1) * d)
    heads = None
    if site.kind in _HEADED:
        heads = units[site.kind]
    return Route(site, module, io, where[0], part, heads, mid=site.kind == "hook_resid_mid")


def resolve(lm, fns: Hooks) -> list[tuple[Site, list[HookFn]]]:
    """``{site or pattern: fn or [fns]}`` -> ``[(site, [fns])]`` with patterns expanded."""
    out: dict[Site, list[HookFn]] = {}
    for key, value in fns.items():
        sites = [key] if isinstance(key, Site) else parse_sites(
            key, n_layers=len(lm.arch.layers(lm.model)), units=lm.arch.units(lm.model))
        funcs = [value] if callable(value) else list(value)
        if not all(callable(f) for f in funcs):
            raise HookError(f"hooks for {key!r} must be callables fn(value, ctx) -> Tensor | None")
        for s in sites:
            out.setdefault(s, []).extend(funcs)
    return list(out.items())


# -------------------------------------------------------------------------------- manager
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> [HookManager]


class HookManager:
    """Torch hooks that run ``fns`` at their sites; use :func:`hooks` to get one."""

    def __init__(self, lm, fns: Hooks, *, stop_after: int | None = None) -> None:
        self.lm = lm
        self.entries = [(route(lm, s), f) for s, f in resolve(lm, fns)]
        self.stop_after = stop_after
        self.prompt_width: int | None = None  # set by probe.forward around generate()
        self.content: Tensor | None = None
        self.modality: Tensor | None = None  # set by probe.forward for multimodal batches
        self._outer_mask: Tensor | None = None
        self._forward: _Forward | None = None
        self._last_width: int | None = None
        self._steps = 0
        self._handles: list = []

    # ------------------------------------------------------------ forward state
    def _begin(self, module, inputs, kwargs) -> None:
        ids = kwargs.get("input_ids", inputs[0] if inputs else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        batch, cur = ref.shape[0], ref.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            # A multimodal trunk may hand its language model a prepared (4-D or per-layer-type)
            # mask; the padding mask is the one the trunk itself was called with.
            mask = self._outer_mask
            if mask is None or tuple(mask.shape) != (batch, past + cur):
                mask = torch.ones(batch, past + cur, dtype=torch.long, device=ref.device)
        width = self.prompt_width
        if width is None:
            # Raw HF calls: a forward with an empty cache starts a new prompt; cached steps
            # continue the last one.
            width = past + cur if past == 0 or self._last_width is None else self._last_width
        self._last_width = width
        cols = torch.arange(past, past + cur, device=ref.device)
        self._forward = _Forward(cols, mask, width, self._steps, self.content, self.modality)
        self._steps += 1

    def _outer(self, module, inputs, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        self._outer_mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None

    def _end(self, module, inputs, kwargs, output) -> None:
        self._forward = None
        self._outer_mask = None

    def _state(self, value: Tensor) -> _Forward:
        if self._forward is None:  # a submodule called on its own: every position is a prompt
            n = value.shape[1] if value.dim() > 1 else 1
            self._forward = _Forward(torch.arange(n, device=value.device),
                                     torch.ones(value.shape[0], n, dtype=torch.long,
                                                device=value.device), n, self._steps)
        return self._forward

    # ------------------------------------------------------------ dispatch
    def _apply(self, entries, raw: Tensor) -> Tensor | None:
        """Run every entry of one module slot on ``raw``; the new raw tensor or None."""
        state, changed = self._state(raw), False
        for r, funcs in entries:
            if isinstance(funcs, _Stash):  # a block's (possibly rewritten) input, for resid_mid
                state.stash[funcs.layer] = raw
                continue
            if r.mid:
                base = state.stash.get(r.site.layer)
                if base is None:
                    raise HookError(f"{r.site}: the block's input was not seen (a resid_mid hook "
                                    "needs the whole block to run)")
                mid = base.to(raw.device) + raw  # devices differ only under a device map
                new = _run(funcs, mid, HookContext(r.site, state))
                if new is not None:
                    raw, changed = raw + (new - mid), True
                continue
            new = _run(funcs, r.value(raw), HookContext(r.site, state))
            if new is not None:
                raw, changed = r.replace(raw, new), True
        return raw if changed else None

    def _slots(self) -> dict[tuple[int, str], list]:
        """Entries grouped by (module, io), each group in execution order."""
        slots: dict[tuple[int, str], list] = {}
        modules: dict[int, nn.Module] = {}
        entries = list(self.entries)
        for layer in sorted({r.site.layer for r, _ in entries if r.mid}):
            block = self.lm.arch.layers(self.lm.model)[layer]
            entries.append((Route(Site("hook_resid_pre", layer), block, "input", ""), _Stash(layer)))
        for r, funcs in entries:
            key = (id(r.module), r.io)
            modules[id(r.module)] = r.module
            slots.setdefault(key, []).append((r, funcs))
        for group in slots.values():
            group.sort(key=_order)
        self._modules = modules
        return slots

    def __enter__(self) -> HookManager:
        try:
            base = self.lm.arch.base(self.lm.model)
            trunk = self.lm.arch.trunk(self.lm.model)
            if trunk is not base:
                self._handles.append(trunk.register_forward_pre_hook(self._outer, with_kwargs=True))
            self._handles.append(base.register_forward_pre_hook(self._begin, with_kwargs=True))
            self._handles.append(base.register_forward_hook(self._end, with_kwargs=True))
            for (mid, io), entries in self._slots().items():
                module = self._modules[mid]
                if io == "input":
                    self._handles.append(module.register_forward_pre_hook(
                        _pre(self, entries), with_kwargs=True))
                else:
                    self._handles.append(module.register_forward_hook(_post(self, entries)))
            if self.stop_after is not None:
                layers = self.lm.arch.layers(self.lm.model)
                if self.stop_after < len(layers) - 1:
                    self._handles.append(layers[self.stop_after].register_forward_hook(_stop))
            _ACTIVE.setdefault(self.lm.model, []).append(self)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        active = _ACTIVE.get(self.lm.model, [])
        if self in active:
            active.remove(self)
        self._forward = None

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass(frozen=True)
class _Stash:
    """Marks the slot entry that keeps block ``layer``'s input for its resid_mid hooks."""

    layer: int


def _order(entry) -> tuple:
    r, funcs = entry
    rank = EXECUTION_ORDER["_stash" if isinstance(funcs, _Stash) else r.site.kind]
    return rank, r.site.unit is not None, r.site.unit or 0


def _run(funcs: list[HookFn], value: Tensor, ctx: HookContext) -> Tensor | None:
    out = None
    for fn in funcs:
        new = fn(value if out is None else out, ctx)
        if new is not None:
            if not isinstance(new, Tensor):
                raise HookError(f"hook at {ctx.site} returned {type(new).__name__}; return a "
                                "Tensor (a replacement) or None (a read)")
            out = new
    return out


def _pre(manager: HookManager, entries):
    def hook(module, inputs, kwargs):  # torch's positional inputs, not command-line args
        raw = inputs[0] if inputs else kwargs["hidden_states"]
        new = manager._apply(entries, raw)
        if new is None:
            return None
        if inputs:
            return (new, *inputs[1:]), kwargs
        return inputs, {**kwargs, "hidden_states": new}
    return hook


def _post(manager: HookManager, entries):
    def hook(module, inputs, output):
        raw = output[0] if isinstance(output, tuple) else output
        new = manager._apply(entries, raw)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook


def _stop(module, inputs, output):
    raise StopForward


@contextmanager
def hooks(lm, fns: Hooks, *, stop_after: int | None = None) -> Iterator[HookManager]:
    """Run ``fns`` at their sites during every forward inside the ``with`` block.

    Args:
        lm: a :class:`probe.models.LoadedModel`.
        fns: ``{site: fn}`` or ``{site: [fn, ...]}``; a key is a :class:`Site` or a site name /
            pattern (``"blocks.3.attn.hook_z[2]"``, ``"resid_post"``). A hook is
            ``fn(value, ctx) -> Tensor | None``.
        stop_after: raise :class:`StopForward` after this block (callers catch it), so deeper
            blocks and the LM head never run.

    Yields:
        The :class:`HookManager` (its hooks are removed when the block exits, whatever happens).
    """
    with HookManager(lm, fns, stop_after=stop_after) as manager:
        yield manager


@contextmanager
def module_input_hooks(fns: Sequence[tuple[nn.Module, Callable]], *, kwargs: bool = False
                       ) -> Iterator[None]:
    """Rewrite the first input of given modules inside the ``with`` block: ``fn(x) -> x'``; with
    ``kwargs=True`` only show ``fn`` the keyword arguments of each call (``fn(kw)``, a read).

    For points that are no :class:`Site`, e.g. one sublayer's own copy of the residual stream
    (edge attribution writes to what ``input_layernorm`` reads without changing the stream the
    skip connection carries). A forward pre-hook each, removed on exit whatever happens (also
    when placing a later one fails).
    """
    with _module_hooks(fns, _seen_kwargs if kwargs else _rewrite_input, pre=True):
        yield


@contextmanager
def module_output_hooks(fns: Sequence[tuple[nn.Module, Callable[[Tensor], Tensor]]]) -> Iterator[None]:
    """Rewrite the output of given modules (each returning one tensor): ``fn(y) -> y'``, e.g.
    what a norm hands its attention (edge attribution takes gradients there)."""
    with _module_hooks(fns, _rewrite_output, pre=False):
        yield


@contextmanager
def _module_hooks(fns, make, *, pre: bool) -> Iterator[None]:
    handles = []
    try:
        for module, fn in fns:
            handles.append(module.register_forward_pre_hook(make(fn), with_kwargs=True) if pre
                           else module.register_forward_hook(make(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def _rewrite_input(fn: Callable[[Tensor], Tensor]):
    def hook(module, inputs, kwargs):
        if inputs:
            return (fn(inputs[0]), *inputs[1:]), kwargs
        return inputs, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
    return hook


def _seen_kwargs(fn: Callable[[dict], None]):
    def hook(module, inputs, kwargs):
        fn(kwargs)
    return hook


def _rewrite_output(fn: Callable[[Tensor], Tensor]):
    def hook(module, inputs, output):
        if not isinstance(output, Tensor):
            raise HookError(f"{type(module).__name__} returns {type(output).__name__}, not one "
                            "tensor: rewrite its output at a Site instead")
        return fn(output)
    return hook


def active_managers(model: nn.Module) -> list[HookManager]:
    """Hook contexts currently open on ``model`` (innermost last)."""
    return list(_ACTIVE.get(model, []))
