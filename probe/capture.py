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

Multimodal rows (an image and/or audio with the text; :mod:`probe.multimodal.encode`) add:

``image-mean``    mean over the row's image tokens (the positions the processor fills with
                  image features)
``audio-mean``    mean over the row's audio tokens
``text-mean``     mean over every other (text) token, template included
``text-last``     the last text token (with a chat template, the end of the generation prompt)

Each pooling reads one modality (:data:`POOLING_MODALITY`; ``all`` for ``last`` and ``mean``),
recorded as the store's ``modality`` coordinate on the ``pooling`` dimension. Each is one
function in :mod:`probe.pooling`, where :func:`probe.pooling.register_pooling` adds more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from probe.errors import EmoprobeError
from probe.forward import model_inputs, pad_batch  # noqa: F401 (re-exported: batch building)
from probe.hooks import HookManager, StopForward
from probe.modality import MODALITY_CODES, POOLING_MODALITY
from probe.pooling import POOLING_FUNCTIONS, RowTokens
from probe.sites import Site
from probe.tokens import Encoded

POOLINGS = tuple(POOLING_FUNCTIONS)  # the built-in ones; probe.pooling.register_pooling adds more
DEFAULT_POOLINGS = ("last", "content-mean")
_CODES = {m: MODALITY_CODES[m] for m in ("text", "image", "audio")}


class CaptureError(EmoprobeError, ValueError):
    """Capture cannot proceed as asked."""


def check_poolings(poolings: Sequence[str], encoded: Encoded | None = None) -> tuple[str, ...]:
    bad = [p for p in poolings if p not in POOLING_FUNCTIONS]
    if bad:
        raise CaptureError(f"unknown pooling {bad[0]!r}; choose from {', '.join(POOLING_FUNCTIONS)}")
    if not poolings:
        raise CaptureError("no pooling given; e.g. --pooling last,content-mean")
    if encoded is not None and "token" in poolings and any(t is None for t in encoded.target):
        missing = sum(t is None for t in encoded.target)
        raise CaptureError(
            f"'token' pooling needs a target word for every row; {missing} row(s) have none "
            "(the dataset needs a non-empty 'target_word' column)"
        )
    if encoded is not None:
        _check_modalities(poolings, encoded)
    return tuple(dict.fromkeys(poolings))


def _check_modalities(poolings: Sequence[str], encoded: Encoded) -> None:
    for p in poolings:
        kind = POOLING_MODALITY[p]
        if kind not in ("image", "audio"):
            continue
        if encoded.modality is None:
            raise CaptureError(f"{p!r} pooling needs rows with {kind} inputs (a multimodal "
                               f"model and a dataset with an '{kind}' column)")
        missing = [i for i, c in enumerate(encoded.modality) if _CODES[kind] not in c]
        if missing:
            raise CaptureError(f"{p!r} pooling needs {kind} tokens in every row; {len(missing)} "
                               f"row(s) have none (first: row {missing[0]}). Drop those rows or "
                               "choose other poolings")


def pooling_weights(
    lengths: Sequence[int],
    content: Sequence[tuple[int, int]],
    target: Sequence[int | None],
    poolings: Sequence[str],
    *,
    width: int,
    padding_side: str,
    modality: Sequence[Sequence[int]] | None = None,
) -> Float[Tensor, "batch pooling pos"]:
    """Weights such that ``W @ h`` gives every pooling of every row (float32, on CPU).

    ``modality`` (per row, each token's modality code) is needed by the modality poolings.
    """
    w = torch.zeros(len(lengths), len(poolings), width)
    for i, n in enumerate(lengths):
        off = width - n if padding_side == "left" else 0
        row = RowTokens(length=n, content=tuple(content[i]), target=target[i],
                        codes=torch.as_tensor(modality[i]) if modality is not None else None)
        for p, name in enumerate(poolings):
            w[i, p, off:off + n] = POOLING_FUNCTIONS[name](row)
    return w


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
        w = self.weights
        if w.device != value.device:  # a model spread over devices (probe.placement)
            self.out[ctx.site] = torch.bmm(w.to(value.device), value.float()).to(w.device)
            return
        self.out[ctx.site] = torch.bmm(w, value.float())

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
    inputs = {k: v for k, v in inputs.items() if v is not None}
    try:
        lm.arch.trunk(lm.model)(**inputs, use_cache=False)
    except StopForward:
        pass
    missing = [s for s in hooks.sites if s not in hooks.out]
    if missing:
        raise CaptureError(f"sites {list(map(str, missing))} were not reached by the forward pass")
    return hooks.out


def plan_blocks(lengths: Sequence[int], *, batch_size: int, block_size: int,
                start_row: int = 0) -> Iterator[tuple[int, list[list[int]]]]:
    """``(first_row, batches)`` per block: rows of a block, longest first, cut into batches.

    A batch holds at most ``batch_size`` rows and at most :func:`token_budget` padded tokens,
    so short texts are never padded up to one very long one (which then runs alone or with
    its peers). Blocks are fixed by ``block_size`` alone and the budget by the whole dataset's
    lengths, so a resumed run computes exactly the batches an uninterrupted one would (and a
    benchmark can replay them).
    """
    n = len(lengths)
    budget = token_budget(lengths, batch_size)
    for first in range(start_row - start_row % block_size, n, block_size):
        order = sorted(range(first, min(first + block_size, n)), key=lambda r: -lengths[r])
        batches: list[list[int]] = []
        for r in order:  # longest first: a batch's first row sets its padded width
            if (batches and len(batches[-1]) < batch_size
                    and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget):
                batches[-1].append(r)
            else:
                batches.append([r])
        yield first, batches


def token_budget(lengths: Sequence[int], batch_size: int) -> int:
    """Padded tokens one batch may hold: ``batch_size`` rows of 4x the median length (at least
    256 tokens each). Ordinary data never reaches it (batches stay ``batch_size`` rows); a row
    far longer than the rest gets a batch of its own instead of padding 31 others to it.

    >>> token_budget([40] * 100, 32), token_budget([40] * 99 + [12_000], 32)
    (8192, 8192)
    """
    median = sorted(lengths)[len(lengths) // 2] if len(lengths) else 0
    return batch_size * max(4 * median, 256)


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
    only: set[int] | None = None,
) -> Iterator[tuple[int, dict[Site, Float[Tensor, "rows pooling d"]]]]:
    """Yield ``(first_row, {site: pooled})`` per block of ``block_size`` rows, in row order.

    Within a block rows run longest first in batches of ``batch_size`` (less padding); the
    block's rows come back in dataset order (see :func:`plan_blocks`). ``only``: the first
    rows of the blocks to run (a distributed worker's share); the others are skipped.
    """
    if padding_side not in ("left", "right"):
        raise CaptureError(f"padding side must be 'left' or 'right', not {padding_side!r}")
    pad_id = lm.tokenizer.pad_token_id
    with SiteHooks(lm, sites) as hooks:
        for first, batches in plan_blocks(encoded.lengths, batch_size=batch_size,
                                          block_size=block_size, start_row=start_row):
            if only is not None and first not in only:
                continue
            parts: dict[Site, list[Tensor]] = {s: [] for s in sites}
            for idx in batches:
                ids = [encoded.ids[r] for r in idx]
                inputs = pad_batch(ids, pad_id, padding_side, lm.device)
                modality = None if encoded.modality is None else [encoded.modality[r] for r in idx]
                w = pooling_weights([len(x) for x in ids], [encoded.content[r] for r in idx],
                                    [encoded.target[r] for r in idx], poolings,
                                    width=inputs["input_ids"].shape[1], padding_side=padding_side,
                                    modality=modality)
                inputs.update(model_inputs(lm, encoded, idx, inputs))
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
