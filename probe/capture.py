"""Batched forward passes that capture pooled activations at the requested sites.

Capture is one user of the hook layer (:mod:`probe.hooks`): a read hook per site pools on the
device, as one batched matmul ``W @ h`` where ``W`` (batch x pooling x position) holds the pooling
weights of every pooling at once, so the full ``(batch, position, d)`` activations never leave the
device and never pile up. The forward runs the base model only (no LM head, so no logits), under
``inference_mode``, and stops right after the deepest requested block. Hooks are removed in
``finally``; the model is left exactly as it was.

Poolings (``--pooling``):

``last``          the last real token of the input (with a chat template: the last token of the
                  generation prompt, where the model is about to answer)
``mean``          mean over all real (non-pad) tokens, template included
``content-mean``  mean over the stimulus text's own tokens (template and system prompt excluded)
``content-last``  the last token of the stimulus text itself
``token``         the last token of the row's ``target_word`` (dataset column)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from probe.hooks import HookManager, StopForward
from probe.sites import Site
from probe.tokens import Encoded

POOLINGS = ("last", "mean", "content-mean", "content-last", "token")
DEFAULT_POOLINGS = ("last", "content-mean")


class CaptureError(ValueError):
    """Capture cannot proceed as asked."""


def check_poolings(poolings: Sequence[str], encoded: Encoded | None = None) -> tuple[str, ...]:
    bad = [p for p in poolings if p not in POOLINGS]
    if bad:
        raise CaptureError(f"unknown pooling {bad[0]!r}; choose from {', '.join(POOLINGS)}")
    if not poolings:
        raise CaptureError("no pooling given; e.g. --pooling last,content-mean")
    if encoded is not None and "token" in poolings and any(t is None for t in encoded.target):
        missing = sum(t is None for t in encoded.target)
        raise CaptureError(
            f"'token' pooling needs a target word for every row; {missing} row(s) have none "
            "(the dataset needs a non-empty 'target_word' column)"
        )
    return tuple(dict.fromkeys(poolings))


def pooling_weights(
    lengths: Sequence[int],
    content: Sequence[tuple[int, int]],
    target: Sequence[int | None],
    poolings: Sequence[str],
    *,
    width: int,
    padding_side: str,
) -> Float[Tensor, "batch pooling pos"]:
    """Weights such that ``W @ h`` gives every pooling of every row (float32, on CPU)."""
    w = torch.zeros(len(lengths), len(poolings), width)
    for i, n in enumerate(lengths):
        off = width - n if padding_side == "left" else 0
        c0, c1 = content[i]
        for p, name in enumerate(poolings):
            if name == "last":
                w[i, p, off + n - 1] = 1.0
            elif name == "mean":
                w[i, p, off:off + n] = 1.0 / n
            elif name == "content-mean":
                w[i, p, off + c0:off + c1] = 1.0 / (c1 - c0)
            elif name == "content-last":
                w[i, p, off + c1 - 1] = 1.0
            else:  # token
                w[i, p, off + target[i]] = 1.0
    return w


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, padding_side: str, device) -> dict:
    """input_ids, attention_mask and position_ids (correct for either padding side)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        sl = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[i, sl] = torch.as_tensor(row)
        mask[i, sl] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": position_ids.to(device)}


class SiteHooks:
    """Read hooks (on :mod:`probe.hooks`) that pool the values at ``sites`` into ``self.out``.

    Set ``self.weights`` (batch x pooling x position, on the model's device) before each
    forward. Use as a context manager; hooks are removed on exit, whatever happens. With
    ``stop_early`` the forward stops after the deepest requested block.
    """

    def __init__(self, lm, sites: Sequence[Site], *, stop_early: bool = True) -> None:
        self.lm = lm
        self.sites = list(sites)
        self.stop_early = stop_early
        self.weights: Tensor | None = None
        self.out: dict[Site, Tensor] = {}
        self._manager: HookManager | None = None

    def _pool(self, value: Tensor, ctx) -> None:
        if value.dim() > 3:  # per-head values [batch, pos, head, d_head] -> head-major flat
            value = value.flatten(2)
        elif value.dim() == 2:  # one neuron [batch, pos]
            value = value[..., None]
        self.out[ctx.site] = torch.bmm(self.weights, value.float())

    def __enter__(self) -> SiteHooks:
        deepest = max((s.layer or 0) for s in self.sites)
        self._manager = HookManager(self.lm, {s: self._pool for s in self.sites},
                                    stop_after=deepest if self.stop_early else None)
        self._manager.__enter__()
        return self

    def remove(self) -> None:
        if self._manager is not None:
            self._manager.remove()
            self._manager = None

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.inference_mode()
def forward_pooled(lm, hooks: SiteHooks, inputs: dict, weights: Tensor) -> dict[Site, Tensor]:
    """One forward of the base model (no LM head); returns {site: (batch, pooling, d)} float32."""
    hooks.weights = weights
    hooks.out = {}
    try:
        lm.arch.base(lm.model)(**inputs, use_cache=False)
    except StopForward:
        pass
    missing = [s for s in hooks.sites if s not in hooks.out]
    if missing:
        raise CaptureError(f"sites {list(map(str, missing))} were not reached by the forward pass")
    return hooks.out


def plan_blocks(lengths: Sequence[int], *, batch_size: int, block_size: int,
                start_row: int = 0) -> Iterator[tuple[int, list[list[int]]]]:
    """``(first_row, batches)`` per block: rows of a block, longest first, cut into batches.

    Blocks are fixed by ``block_size`` alone, so a resumed run computes exactly the batches an
    uninterrupted one would (and a benchmark can replay them).
    """
    n = len(lengths)
    for first in range(start_row - start_row % block_size, n, block_size):
        order = sorted(range(first, min(first + block_size, n)), key=lambda r: -lengths[r])
        yield first, [order[b:b + batch_size] for b in range(0, len(order), batch_size)]


def iter_blocks(
    lm,
    encoded: Encoded,
    sites: Sequence[Site],
    poolings: Sequence[str],
    *,
    batch_size: int,
    block_size: int,
    padding_side: str = "right",
    start_row: int = 0,
    on_batch=None,
) -> Iterator[tuple[int, dict[Site, Float[Tensor, "rows pooling d"]]]]:
    """Yield ``(first_row, {site: pooled})`` per block of ``block_size`` rows, in row order.

    Within a block rows run longest first in batches of ``batch_size`` (less padding); the
    block's rows come back in dataset order (see :func:`plan_blocks`).
    """
    if padding_side not in ("left", "right"):
        raise CaptureError(f"padding side must be 'left' or 'right', not {padding_side!r}")
    pad_id = lm.tokenizer.pad_token_id
    with SiteHooks(lm, sites) as hooks:
        for first, batches in plan_blocks(encoded.lengths, batch_size=batch_size,
                                          block_size=block_size, start_row=start_row):
            parts: dict[Site, list[Tensor]] = {s: [] for s in sites}
            for idx in batches:
                ids = [encoded.ids[r] for r in idx]
                inputs = pad_batch(ids, pad_id, padding_side, lm.device)
                w = pooling_weights([len(x) for x in ids], [encoded.content[r] for r in idx],
                                    [encoded.target[r] for r in idx], poolings,
                                    width=inputs["input_ids"].shape[1], padding_side=padding_side)
                out = forward_pooled(lm, hooks, inputs, w.to(lm.device))
                for s in sites:
                    parts[s].append(out[s])
                if on_batch is not None:
                    on_batch(len(idx))
            order = torch.as_tensor([r for idx in batches for r in idx]) - first
            inverse = torch.argsort(order).to(lm.device)
            yield first, {s: torch.cat(parts[s])[inverse] for s in sites}


@contextmanager
def no_hooks_left(model):
    """Assert that a block of code leaves no forward hooks behind (used in tests)."""
    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    before = count()
    yield
    after = count()
    if after != before:
        raise AssertionError(f"{after - before} hook(s) left on the model")
