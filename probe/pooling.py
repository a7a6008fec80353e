"""Poolings: how the token vectors of one row become one vector, one small function each.

A pooling is ``fn(row) -> weights``: given one row's token layout (:class:`RowTokens`), the
weight of each of the row's tokens (a 1-D float tensor of the row's length). Capture turns the
weights of every pooling into one matmul per site (:func:`probe.capture.pooling_weights`). A new
pooling is one function and one :func:`register_pooling` call; ``--pooling``, capture, stores
and sweeps then accept it by name.

>>> import torch
>>> row = RowTokens(length=4, content=(1, 3), target=2)
>>> POOLING_FUNCTIONS["content-mean"](row)
tensor([0.0000, 0.5000, 0.5000, 0.0000])
>>> register_pooling("first", lambda row: torch.eye(row.length)[0])
>>> POOLING_FUNCTIONS["first"](row), POOLING_MODALITY["first"]
(tensor([1., 0., 0., 0.]), 'all')
>>> _ = POOLING_FUNCTIONS.pop("first"), POOLING_MODALITY.pop("first")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from probe.modality import MODALITY_CODES, POOLING_MODALITY

__all__ = ["POOLING_FUNCTIONS", "Pooling", "RowTokens", "register_pooling"]


@dataclass(frozen=True)
class RowTokens:
    """One row's tokens, indexed from its first real token.

    Attributes:
        length: Real (non-pad) tokens.
        content: ``(start, stop)`` of the stimulus text's own tokens.
        target: The last token of the row's target word, if it has one.
        codes: Each token's modality code (multimodal rows; ``None``: every token is text).
    """

    length: int
    content: tuple[int, int]
    target: int | None = None
    codes: Tensor | None = None


Pooling = Callable[[RowTokens], Tensor]


def _at(n: int, i: int) -> Tensor:
    w = torch.zeros(n)
    w[i] = 1.0
    return w


def _last(row: RowTokens) -> Tensor:
    return _at(row.length, row.length - 1)


def _mean(row: RowTokens) -> Tensor:
    return torch.full((row.length,), 1.0 / row.length)


def _content_mean(row: RowTokens) -> Tensor:
    c0, c1 = row.content
    w = torch.zeros(row.length)
    w[c0:c1] = 1.0 / (c1 - c0)
    return w


def _content_last(row: RowTokens) -> Tensor:
    return _at(row.length, row.content[1] - 1)


def _token(row: RowTokens) -> Tensor:
    return _at(row.length, row.target)


def _of_modality(kind: str, *, last: bool) -> Pooling:
    """Mean over (or the last of) the row's tokens of one modality."""
    def fn(row: RowTokens) -> Tensor:
        codes = row.codes if row.codes is not None else torch.zeros(row.length)
        where = torch.nonzero(codes == MODALITY_CODES[kind]).flatten()
        w = torch.zeros(row.length)
        if last:
            w[where[-1]] = 1.0
        else:
            w[where] = 1.0 / len(where)
        return w
    return fn


#: Every pooling by name; what ``--pooling`` accepts (see :mod:`probe.capture` for each).
POOLING_FUNCTIONS: dict[str, Pooling] = {
    "last": _last, "mean": _mean, "content-mean": _content_mean, "content-last": _content_last,
    "token": _token, "image-mean": _of_modality("image", last=False),
    "audio-mean": _of_modality("audio", last=False), "text-mean": _of_modality("text", last=False),
    "text-last": _of_modality("text", last=True),
}


def register_pooling(name: str, fn: Pooling, *, modality: str = "all") -> None:
    """Add (or replace) the pooling ``name``; ``modality`` is the tokens it reads (``all``,
    ``text``, ``image``, ``audio``), recorded in stores as the pooling's ``modality``."""
    if modality != "all" and modality not in MODALITY_CODES:
        raise ValueError(f"modality {modality!r}: choose all, {', '.join(MODALITY_CODES)}")
    POOLING_FUNCTIONS[name] = fn
    POOLING_MODALITY[name] = modality
