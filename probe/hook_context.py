"""What a hook knows about the forward it runs in (:class:`HookContext`), and the hook layer's error.

Part of the hook layer (:mod:`probe.hooks` places the hooks and re-exports these names): a
:class:`HookContext` answers which positions of a value are prompt or generated tokens, padding,
the row's content span or a modality's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from probe.errors import EmoprobeError
from probe.modality import MODALITY_CODES
from probe.sites import Site

PositionMode = Literal["all", "prompt", "generated", "last", "last-prompt",
                       "last-prompt+generated", "content", "text", "image", "audio"]
#: Modality codes of ``ctx.positions("image")`` etc. (transformers' ``mm_token_type_ids``).
_MODALITY_CODES = {m: MODALITY_CODES[m] for m in ("text", "image", "audio")}


class HookError(EmoprobeError, ValueError):
    """A hook cannot be placed or applied as asked; the message says what to fix."""


def generated_delay(mode: str) -> int:
    """``K`` of the position mode ``"generated:K"`` (generated tokens from the K-th on)."""
    head, _, k = mode.partition(":")
    if head != "generated" or not k.isdigit():
        raise HookError(f"positions {mode!r}: write generated:K with K a whole number >= 0 "
                        "(generated tokens from the K-th on, 0-based)")
    return int(k)


def opening_length(mode: str) -> int:
    """``K`` of the position mode ``"opening:K"`` (the states that predict the reply's first K
    tokens: the last prompt token and the first K - 1 generated ones)."""
    head, _, k = mode.partition(":")
    if head != "opening" or not k.isdigit() or int(k) < 1:
        raise HookError(f"positions {mode!r}: write opening:K with K a whole number >= 1 "
                        "(the states that predict the reply's first K tokens)")
    return int(k)


def position_count(mode) -> int | None:
    """``K`` of a counted position mode (``generated:K``, ``opening:K``; :class:`HookError` if K
    is malformed), None for every other mode."""
    if not isinstance(mode, str) or not mode.startswith(("generated:", "opening:")):
        return None
    return generated_delay(mode) if mode.startswith("generated:") else opening_length(mode)


# ------------------------------------------------------------------------------ positions
@dataclass
class _Forward:
    """What one forward pass is about, shared by every hook that fires in it."""

    columns: Tensor  # [cur] absolute column of each current position
    attention_mask: Tensor  # [batch, total]
    prompt_width: int
    step: int
    content: Tensor | None = None  # [batch, prompt_width] bool
    modality: Tensor | None = None  # [batch, prompt_width] modality codes (multimodal batches)
    stash: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)


class HookContext:
    """What a hook knows about the forward it runs in.

    Attributes:
        site: The site the hook is attached to.
        step: Forwards seen by this hook context so far (in generation: 0 is the prompt).
        columns: ``[pos]`` absolute column (in the padded, growing sequence) of each position of
            the value. With the KV cache a generation step has one column; without, all.
        attention_mask: ``[batch, total]`` mask of the whole sequence so far (1 = real token).
        prompt_width: Columns below this are the (padded) prompt; the rest were generated.
    """

    __slots__ = ("site", "_f")

    def __init__(self, site: Site, forward: _Forward) -> None:
        self.site, self._f = site, forward

    name = property(lambda self: str(self.site))
    step = property(lambda self: self._f.step)
    columns = property(lambda self: self._f.columns)
    attention_mask = property(lambda self: self._f.attention_mask)
    prompt_width = property(lambda self: self._f.prompt_width)

    def positions(self, mode: PositionMode | range = "all") -> Tensor:
        """``[batch, pos]`` bool: which positions of the value ``mode`` selects (never padding).

        Modes: ``all``; ``prompt``; ``generated``; ``last`` (each row's last real token so far);
        ``last-prompt`` (the last prompt token); ``last-prompt+generated`` (Wang et al.'s
        ``last_k=1``); ``generated:K`` (generated tokens from the K-th on, 0-based, so the
        first K + 1 reply tokens are predicted from untouched states); ``opening:K`` (the last
        prompt token and the first K - 1 generated tokens: the states that predict the reply's
        first K tokens, after which the model goes on from its own states); ``content`` (the row's
        stimulus text, template excluded; needs a batch made by
        :func:`probe.forward.make_batch`); ``image`` / ``audio`` (the tokens the
        processor filled with image / audio features) and ``text`` (every other token,
        generated ones included) of a multimodal batch; or a ``range`` of row-relative token
        indices (0 = the row's first real token).
        """
        key = mode if isinstance(mode, str) else ("range", mode.start, mode.stop, mode.step)
        if key not in self._f._cache:
            self._f._cache[key] = self._positions(mode)
        return self._f._cache[key]

    def mask(self, mode: PositionMode | range, like: Tensor) -> Tensor:
        """:meth:`positions` as a 0/1 tensor of ``like``'s dtype that broadcasts against it."""
        m = self.positions(mode).to(like.dtype)
        return m.reshape(*m.shape, *([1] * (like.dim() - 2)))

    def _positions(self, mode) -> Tensor:
        f = self._f
        cols = f.columns
        real = f.attention_mask[:, cols].bool()
        if isinstance(mode, range):
            first = f.attention_mask.float().argmax(1)  # first real column of each row
            rel = cols[None, :] - first[:, None]
            return real & (rel >= mode.start) & (rel < mode.stop) & ((rel - mode.start) % (mode.step or 1) == 0)
        generated = (cols >= f.prompt_width)[None, :]
        if mode == "all":
            return real
        if mode == "prompt":
            return real & ~generated
        if mode == "generated":
            return real & generated
        if isinstance(mode, str) and mode.startswith("generated:"):
            return real & (cols >= f.prompt_width + generated_delay(mode))[None, :]
        if isinstance(mode, str) and mode.startswith("opening:"):
            start = f.prompt_width - 1
            return real & ((cols >= start) & (cols < start + opening_length(mode)))[None, :]
        if mode == "last-prompt":
            return real & (cols == f.prompt_width - 1)[None, :]
        if mode == "last-prompt+generated":
            return real & (generated | (cols == f.prompt_width - 1)[None, :])
        if mode == "last":
            last = f.attention_mask.shape[1] - 1 - f.attention_mask.flip(1).float().argmax(1)
            return real & (cols[None, :] == last[:, None])
        if mode in _MODALITY_CODES:
            return real & self._modality(mode)
        if mode == "content":
            if f.content is None:
                raise HookError("'content' positions need a batch made by probe "
                                "(probe.forward.make_batch, lm.logits(texts), lm.generate(texts))")
            out = torch.zeros_like(real)
            inside = cols < f.content.shape[1]
            out[:, inside] = f.content[:, cols[inside]]
            return out & real
        raise HookError(f"unknown positions {mode!r}; choose all, prompt, generated, generated:K, "
                        "opening:K, last, last-prompt, last-prompt+generated, content, text, image, "
                        "audio, or a range")

    def _modality(self, mode: str) -> Tensor:
        f, cols = self._f, self._f.columns
        if f.modality is None:  # a text-only batch: every token is text
            if mode == "text":
                return torch.ones(f.attention_mask.shape[0], len(cols), dtype=torch.bool,
                                  device=cols.device)
            raise HookError(f"{mode!r} positions need a multimodal batch (lm.batch of rows "
                            "encoded with probe.multimodal.encode.encode_multimodal)")
        inside = cols < f.modality.shape[1]
        out = torch.full((f.modality.shape[0], len(cols)), mode == "text", dtype=torch.bool,
                         device=cols.device)  # generated tokens are text
        out[:, inside] = f.modality[:, cols[inside]] == _MODALITY_CODES[mode]
        return out
