"""Per-text residual-stream features: the mean over a text's tokens from a token offset on.

The recipe of the 2026 emotion-geometry studies reads each text as the mean of the residual
stream over its tokens from a token offset on (Anthropic: from the 50th token of a story), at
every layer. This is pooled capture (:mod:`probe.capture`) with one pooling weight row per text:
the full ``(batch, position, d_model)`` activations never leave the hook, padding (left or
right) only moves where the weights sit, and position ids follow the mask.

>>> feats = pool_texts(lm, ["I lost my keys.", "We won!"], token_offset=0)  # doctest: +SKIP
>>> feats.values.shape  # (texts, layers, d_model)  # doctest: +SKIP
torch.Size([2, 30, 576])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from probe.capture import SiteHooks, forward_pooled, pad_batch
from probe.errors import EmoprobeError
from probe.sites import Site
from probe.tokens import encode


class GeometryError(EmoprobeError, ValueError):
    """The geometry protocol cannot run as asked; the message says what to fix."""


@dataclass(frozen=True)
class Features:
    """Pooled features of texts: ``values[text, layer, d_model]`` plus which texts were kept.

    ``kept`` indexes the input texts that had a token at or after the offset (shorter texts are
    dropped, never padded with an earlier token); ``n_tokens`` is the pooled token count per
    kept text.
    """

    values: Float[Tensor, "text layer d_model"]
    kept: list[int]
    n_tokens: list[int]
    layers: list[int]


def offset_weights(
    lengths: Sequence[int], spans: Sequence[tuple[int, int]], *, width: int, padding_side: str
) -> Float[Tensor, "batch 1 pos"]:
    """Pooling weights: uniform over each row's ``spans[i] = (start, end)`` token positions.

    ``start``/``end`` index the row's own tokens; with left padding they shift by the padding.
    """
    if padding_side not in ("left", "right"):
        raise GeometryError(f"padding side must be 'left' or 'right', not {padding_side!r}")
    w = torch.zeros(len(lengths), 1, width)
    for i, (n, (a, b)) in enumerate(zip(lengths, spans)):
        if not 0 <= a < b <= n:
            raise GeometryError(f"row {i}: span {a}-{b} is not inside its {n} tokens")
        off = width - n if padding_side == "left" else 0
        w[i, 0, off + a : off + b] = 1.0 / (b - a)
    return w


def pool_texts(
    lm,
    texts: Sequence[str],
    *,
    token_offset: int = 0,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    padding_side: str = "right",
    chat_template: bool = False,
    max_length: int = 512,
    on_batch: Callable[[int], None] | None = None,
) -> Features:
    """Mean residual stream (``blocks.L.hook_resid_post``) of each text from ``token_offset`` on.

    Args:
        lm: A :class:`probe.models.LoadedModel`.
        texts: The texts; with ``chat_template`` each is a user turn and the offset counts from
            the text's first token (the template is never pooled).
        token_offset: First pooled token of the text (0: every token). Texts with no token at
            or after the offset are dropped (see :attr:`Features.kept`).
        layers: Layers to read (default: all).
        batch_size: Texts per forward pass (longest first, so padding is small).
        padding_side: ``"right"`` or ``"left"``; the result does not depend on it.
        max_length: Texts are cut to their first ``max_length`` tokens.
        on_batch: Called with the number of rows after each forward (progress).
    """
    if token_offset < 0:
        raise GeometryError(f"token offset must be >= 0, got {token_offset}")
    if not texts:
        raise GeometryError("no texts to pool")
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    bad = [x for x in layers if not 0 <= x < lm.n_layers]
    if bad:
        raise GeometryError(f"layer {bad[0]} is out of range: the model has {lm.n_layers} layers")
    enc = encode(lm.tokenizer, list(texts), chat_template=chat_template and lm.chat_template)
    spans: dict[int, tuple[int, int]] = {}
    ids: dict[int, list[int]] = {}
    for i, (row, (c0, c1)) in enumerate(zip(enc.ids, enc.content)):
        c1 = min(c1, max_length)
        if c0 + token_offset < c1:
            spans[i] = (c0 + token_offset, c1)
            ids[i] = row[:c1]
    kept = sorted(spans)
    if not kept:
        raise GeometryError(f"no text has more than {token_offset} tokens; lower the token offset")
    sites = [Site("hook_resid_post", x) for x in layers]
    order = sorted(kept, key=lambda r: -len(ids[r]))
    out = torch.empty(len(kept), len(layers), lm.arch.d_model(lm.model))
    where = {r: k for k, r in enumerate(kept)}
    with SiteHooks(lm, sites) as hooks:
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            batch_ids = [ids[r] for r in rows]
            inputs = pad_batch(batch_ids, lm.tokenizer.pad_token_id, padding_side, lm.device)
            w = offset_weights(
                [len(x) for x in batch_ids],
                [spans[r] for r in rows],
                width=inputs["input_ids"].shape[1],
                padding_side=padding_side,
            )
            pooled = forward_pooled(lm, hooks, inputs, w.to(lm.device))
            block = torch.stack([pooled[s][:, 0] for s in sites], dim=1).float().cpu()
            out[[where[r] for r in rows]] = block
            if on_batch is not None:
                on_batch(len(rows))
    if not torch.isfinite(out).all():
        raise GeometryError("non-finite activations (overflow?); try --dtype float32")
    return Features(
        values=out, kept=kept, n_tokens=[spans[r][1] - spans[r][0] for r in kept], layers=layers
    )
