"""What a component is replaced with: another aligned run, its mean, or zero.

Attribution and activation patching both ask "what if this component took another value?". A
:class:`Baseline` answers with replacement values for a *target* batch:

* :class:`PairBaseline` -- the values of an aligned *source* batch (clean -> corrupt patching
  and back): the same scenario with another emotion, token for token;
* :class:`MeanBaseline` -- a template-aware mean over reference prompts (mean ablation);
* :class:`ZeroBaseline` -- zero (zero ablation).

Only *stimulus* positions are replaced: from the first token of the stimulus text to the end
(the chat template's suffix included), or only the template ``suffix`` after the text. Tokens
before the stimulus (system prompt, template prefix) are the same in every prompt of a causal
model, so they are never changed. The mean is template-aware: content tokens get the mean over
all content tokens of the reference prompts, and the i-th token from the end of the template
suffix gets the mean of that token.

>>> means = MeanBaseline.fit(lm, reference_texts, sites)            # doctest: +SKIP
>>> sources = means.bind(lm, batch, sites)                          # doctest: +SKIP
>>> sources(site, value, rows)  # value with stimulus positions replaced  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from probe.errors import EmoprobeError
from probe.artifacts import save_safetensors
from probe.forward import Batch, make_batch, run_with_cache
from probe.sites import Site

Positions = Literal["stimulus", "suffix"]


class AlignmentError(EmoprobeError, ValueError):
    """Two batches that should align token for token do not; the message says where."""


# ------------------------------------------------------------------------- batch helpers
def take(batch: Batch, rows) -> Batch:
    """The rows ``rows`` (indices or a slice) of ``batch``."""
    idx = torch.arange(len(batch))[rows] if isinstance(rows, slice) else torch.as_tensor(rows)
    return Batch(input_ids=batch.input_ids[idx], attention_mask=batch.attention_mask[idx],
                 position_ids=batch.position_ids[idx], content=batch.content[idx],
                 lengths=tuple(batch.lengths[i] for i in idx.tolist()),
                 padding_side=batch.padding_side)


def repeat(batch: Batch, k: int) -> Batch:
    """``k`` copies of ``batch`` stacked (row ``r`` is copy ``r // len(batch)``)."""
    return take(batch, torch.arange(len(batch)).repeat(k))


def spans(batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """``(first content column, last content column, last real column)`` per row."""
    width = batch.content.shape[1]
    c = batch.content.float()
    first = c.argmax(1)
    last_content = width - 1 - c.flip(1).argmax(1)
    return first, last_content, batch.last


def position_mask(batch: Batch, positions: Positions = "stimulus") -> Tensor:
    """``[batch, pos]`` bool: the stimulus (content + template suffix) or the suffix only."""
    first, last_content, _ = spans(batch)
    cols = torch.arange(batch.content.shape[1], device=first.device)[None, :]
    real = batch.attention_mask.bool()
    if positions == "stimulus":
        return real & (cols >= first[:, None])
    if positions == "suffix":
        return real & (cols > last_content[:, None])
    raise AlignmentError(f"positions must be 'stimulus' or 'suffix', not {positions!r}")


def suffix_lengths(batch: Batch) -> Tensor:
    _, last_content, last = spans(batch)
    return last - last_content


# ---------------------------------------------------------------------------- sources
SourceFn = Callable[[Site, Tensor, Tensor], Tensor]


@dataclass
class Sources:
    """Replacement values for one target batch: ``sources(site, value, rows)``.

    ``value`` is the site's value in a run over ``rows`` of the target batch (indices into it,
    possibly repeated); the result equals ``value`` outside :attr:`mask` and the baseline's
    value inside it.
    """

    mask: Tensor  # [batch, pos] positions that may be replaced
    last: Tensor  # [batch] last real column
    fill: SourceFn
    baseline: str = ""

    def __call__(self, site: Site, value: Tensor, rows: Tensor | None = None) -> Tensor:
        rows = torch.arange(value.shape[0]) if rows is None else rows
        src = self.fill(site.whole, value, rows)
        m = self.mask[rows].reshape(*self.mask[rows].shape, *([1] * (value.dim() - 2)))
        return torch.where(m, src.to(value.dtype), value)


class Baseline:
    """Base class: :meth:`bind` gives the :class:`Sources` of a target batch."""

    name = "baseline"
    positions: Positions = "stimulus"

    def bind(self, lm, target: Batch, sites: Sequence[Site]) -> Sources:  # pragma: no cover
        raise NotImplementedError


@dataclass
class ZeroBaseline(Baseline):
    """Zero ablation at the stimulus (or suffix) positions."""

    positions: Positions = "stimulus"
    name: str = "zero"

    def bind(self, lm, target: Batch, sites: Sequence[Site]) -> Sources:
        return Sources(position_mask(target, self.positions), target.last,
                       lambda site, value, rows: torch.zeros_like(value), self.name)


@dataclass
class PairBaseline(Baseline):
    """The values of ``source``, a batch aligned token for token with the target.

    With ``positions="stimulus"`` every row of the two batches must have the same length and
    the same prefix/suffix layout (see :func:`circuits.pairs.make_pairs`); with ``"suffix"``
    only the template suffix must align (both batches left-padded to the same width).
    """

    source: Batch
    positions: Positions = "stimulus"
    batch_size: int = 16
    name: str = "pairs"

    def bind(self, lm, target: Batch, sites: Sequence[Site]) -> Sources:
        check_aligned(target, self.source, self.positions)
        cache: dict[Site, list[Tensor]] = {}
        wanted = sorted({s.whole for s in sites})
        for i in range(0, len(self.source), self.batch_size):
            _, part = run_with_cache(lm, take(self.source, slice(i, i + self.batch_size)), wanted,
                                     stop=True)
            for s, v in part.items():
                cache.setdefault(s, []).append(v)
        full = {s: torch.cat(v) for s, v in cache.items()}

        def fill(site: Site, value: Tensor, rows: Tensor) -> Tensor:
            src = full[site][rows]
            if src.shape != value.shape:
                raise AlignmentError(f"{site}: source value {tuple(src.shape)} vs target "
                                     f"{tuple(value.shape)}; the batches do not align")
            return src

        return Sources(position_mask(target, self.positions), target.last, fill, self.name)


def check_aligned(a: Batch, b: Batch, positions: Positions = "stimulus") -> None:
    """Raise :class:`AlignmentError` unless ``a`` and ``b`` align at ``positions``."""
    if len(a) != len(b) or a.input_ids.shape != b.input_ids.shape:
        raise AlignmentError(f"batches of shape {tuple(a.input_ids.shape)} and "
                             f"{tuple(b.input_ids.shape)} cannot be patched into each other: "
                             "pair rows one to one and pad both to the same width")
    ma, mb = position_mask(a, positions), position_mask(b, positions)
    bad = (ma != mb).any(1)
    if positions == "stimulus":
        bad |= (a.attention_mask != b.attention_mask).any(1)
    if bad.any():
        r = int(bad.nonzero()[0])
        raise AlignmentError(
            f"{int(bad.sum())} pair(s) do not align token for token (first: row {r}, lengths "
            f"{a.lengths[r]} vs {b.lengths[r]}, {positions} tokens {int(ma[r].sum())} vs "
            f"{int(mb[r].sum())}). Build pairs with equal token lengths "
            "(circuits.pairs.make_pairs(align='length')) or patch only the template suffix "
            "(align='suffix')")


@dataclass
class MeanBaseline(Baseline):
    """Template-aware means of each site over reference prompts (see the module docstring).

    Attributes:
        content: ``{site: mean over content tokens}`` (the site's per-position shape).
        suffix: ``{site: [suffix_len, ...] mean of the i-th token from the end}``.
    """

    content: dict[Site, Tensor] = field(default_factory=dict)
    suffix: dict[Site, Tensor] = field(default_factory=dict)
    positions: Positions = "stimulus"
    n: int = 0
    name: str = "mean"

    @classmethod
    def fit(cls, lm, texts: Sequence[str] | Batch, sites: Sequence[Site], *,
            batch_size: int = 16, positions: Positions = "stimulus") -> MeanBaseline:
        """Means of ``sites`` (whole sites) over ``texts`` (or a batch of them)."""
        batch = texts if isinstance(texts, Batch) else make_batch(lm, list(texts))
        wanted = sorted({s.whole for s in sites})
        sums_c: dict[Site, Tensor] = {}
        sums_s: dict[Site, Tensor] = {}
        n_content, n_suffix = 0, None
        for i in range(0, len(batch), batch_size):
            part = take(batch, slice(i, i + batch_size))
            s_len = _suffix_length(part, n_suffix)
            n_suffix = s_len
            _, cache = run_with_cache(lm, part, wanted, stop=True)
            content = part.content
            cols = part.last[:, None] - torch.arange(s_len)[None, :]  # [b, S]
            for s, v in cache.items():
                c = (v * content.reshape(*content.shape, *([1] * (v.dim() - 2)))).sum((0, 1))
                sums_c[s] = sums_c.get(s, 0) + c.double()
                idx = cols.reshape(*cols.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:])
                sums_s[s] = sums_s.get(s, 0) + v.gather(1, idx).sum(0).double()
            n_content += int(content.sum())
        content = {s: (v / n_content).float() for s, v in sums_c.items()}
        suffix = {s: (v / len(batch)).float() for s, v in sums_s.items()}
        return cls(content=content, suffix=suffix, positions=positions, n=len(batch))

    def bind(self, lm, target: Batch, sites: Sequence[Site]) -> Sources:
        missing = sorted({str(s.whole) for s in sites} - {str(s) for s in self.content})
        if missing:
            raise AlignmentError(f"the mean baseline has no means for {missing[:3]}...; fit it "
                                 "with those sites (MeanBaseline.fit(lm, texts, sites))")
        s_len = next(iter(self.suffix.values())).shape[0] if self.suffix else 0
        lens = suffix_lengths(target)
        if (lens != s_len).any():
            raise AlignmentError(f"target rows have template suffixes of {sorted(set(lens.tolist()))} "
                                 f"tokens; the means were fitted with {s_len}")
        content, last = target.content, target.last
        from_end = last[:, None] - torch.arange(content.shape[1])[None, :]  # [b, pos]

        def fill(site: Site, value: Tensor, rows: Tensor) -> Tensor:
            out = value.clone()
            c, fe = content[rows], from_end[rows]
            out[c] = self.content[site].to(value.dtype)
            suf = (fe >= 0) & (fe < s_len) & ~c
            if s_len:
                out[suf] = self.suffix[site].to(value.dtype)[fe[suf]]
            return out

        return Sources(position_mask(target, self.positions), last, fill, self.name)

    def save(self, path: str | Path) -> Path:
        """Write the means as safetensors (never pickle)."""
        tensors = {f"content/{s}": v.contiguous() for s, v in self.content.items()}
        tensors |= {f"suffix/{s}": v.contiguous() for s, v in self.suffix.items()}
        save_safetensors(tensors, path, metadata={"n": str(self.n), "positions": self.positions})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> MeanBaseline:
        from safetensors import safe_open

        content, suffix = {}, {}
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                part, _, name = key.partition("/")
                (content if part == "content" else suffix)[Site.parse(name)] = f.get_tensor(key)
        return cls(content=content, suffix=suffix, positions=meta.get("positions", "stimulus"),
                   n=int(meta.get("n", 0)))

    def restricted(self, positions: Positions) -> MeanBaseline:
        return replace(self, positions=positions)


def _suffix_length(batch: Batch, expected: int | None) -> int:
    lens = suffix_lengths(batch)
    have = sorted(set(lens.tolist()))
    if len(have) != 1 or (expected is not None and have[0] != expected):
        raise AlignmentError(f"the template suffix after the stimulus has {have} tokens across "
                             "prompts; template-aware means need one suffix length")
    return have[0]
