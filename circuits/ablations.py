"""Resample ablation, and the three ablations a circuit is judged under (mean, zero, resample).

Circuit verdicts depend on what an ablated component is replaced with (auto-circuit showed it):

* ``mean`` -- :class:`circuits.baselines.MeanBaseline`, the template-aware mean over reference
  prompts;
* ``zero`` -- :class:`circuits.baselines.ZeroBaseline`;
* ``resample`` -- :class:`ResampleBaseline`: each target prompt takes the values of *one other*
  reference prompt, template-aware (content tokens get that prompt's mean over its content
  tokens, the i-th template token from the end gets that prompt's i-th token from the end), so
  prompts of different lengths can be resampled into each other.

>>> abl = ablations(lm, reference_texts, sites, means=means)          # doctest: +SKIP
>>> sorted(abl)                                                      # doctest: +SKIP
['mean', 'resample', 'zero']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuits.baselines import (
    AlignmentError,
    Baseline,
    MeanBaseline,
    Positions,
    Sources,
    ZeroBaseline,
    position_mask,
    suffix_lengths,
    take,
)
from probe.forward import Batch, make_batch, run_with_cache
from probe.sites import Site

ABLATIONS = ("mean", "zero", "resample")


@dataclass
class ResampleBaseline(Baseline):
    """Per-reference-prompt values: ``content[site]`` ``[n_ref, ...]`` and ``suffix[site]``
    ``[n_ref, suffix_len, ...]``; target row ``r`` takes reference prompt ``choice[r]``.

    The reference prompt of each target row is drawn with ``seed`` (never the same text when
    the target text is among the references).
    """

    content: dict[Site, Tensor] = field(default_factory=dict)
    suffix: dict[Site, Tensor] = field(default_factory=dict)
    texts: tuple[str, ...] = ()
    positions: Positions = "stimulus"
    seed: int = 0
    name: str = "resample"

    @classmethod
    def fit(cls, lm, texts: Sequence[str], sites: Sequence[Site], *, batch_size: int = 16,
            seed: int = 0, positions: Positions = "stimulus") -> ResampleBaseline:
        """Record each reference prompt's template-aware values at ``sites`` (whole sites)."""
        texts = list(texts)
        if len(texts) < 2:
            raise AlignmentError("resample ablation needs at least 2 reference prompts")
        batch = make_batch(lm, texts)
        lens = suffix_lengths(batch)
        if len(set(lens.tolist())) != 1:
            raise AlignmentError(f"the template suffix after the stimulus has "
                                 f"{sorted(set(lens.tolist()))} tokens across prompts; resample "
                                 "ablation needs one suffix length")
        s_len = int(lens[0])
        wanted = sorted({s.whole for s in sites})
        content: dict[Site, list[Tensor]] = {s: [] for s in wanted}
        suffix: dict[Site, list[Tensor]] = {s: [] for s in wanted}
        for i in range(0, len(batch), batch_size):
            part = take(batch, slice(i, i + batch_size))
            _, cache = run_with_cache(lm, part, wanted, stop=True)
            c = part.content
            cols = part.last[:, None] - torch.arange(s_len)[None, :]
            for s, v in cache.items():
                shape = (*c.shape, *([1] * (v.dim() - 2)))
                n = c.sum(1).clamp(min=1).reshape(-1, *([1] * (v.dim() - 2)))
                content[s].append(((v * c.reshape(shape)).sum(1) / n).float())
                idx = cols.reshape(*cols.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:])
                suffix[s].append(v.gather(1, idx).float())
        return cls(content={s: torch.cat(v) for s, v in content.items()},
                   suffix={s: torch.cat(v) for s, v in suffix.items()}, texts=tuple(texts),
                   positions=positions, seed=seed)

    def choice(self, target: Batch, texts: Sequence[str] | None = None) -> Tensor:
        """The reference row each target row takes (a seeded draw, avoiding the same text)."""
        g = torch.Generator().manual_seed(self.seed)
        n_ref = len(self.texts)
        pick = torch.randint(0, n_ref, (len(target),), generator=g)
        if texts is not None:
            for r, t in enumerate(texts):
                while self.texts[int(pick[r])] == t:
                    pick[r] = (pick[r] + 1) % n_ref
        return pick

    def bind(self, lm, target: Batch, sites: Sequence[Site], texts: Sequence[str] | None = None
             ) -> Sources:
        missing = sorted({str(s.whole) for s in sites} - {str(s) for s in self.content})
        if missing:
            raise AlignmentError(f"the resample baseline has no values for {missing[:3]}; fit "
                                 "it with those sites")
        s_len = next(iter(self.suffix.values())).shape[1] if self.suffix else 0
        lens = suffix_lengths(target)
        if (lens != s_len).any():
            raise AlignmentError(f"target rows have template suffixes of "
                                 f"{sorted(set(lens.tolist()))} tokens; the references have {s_len}")
        pick = self.choice(target, texts)
        content, last = target.content, target.last
        from_end = last[:, None] - torch.arange(content.shape[1])[None, :]

        def fill(site: Site, value: Tensor, rows: Tensor) -> Tensor:
            out = value.clone()
            c, fe, ref = content[rows], from_end[rows], pick[rows]
            src_c = self.content[site][ref].to(value.dtype)  # [rows, ...]
            src_c = src_c[:, None].expand_as(value)
            out[c] = src_c[c]
            suf = (fe >= 0) & (fe < s_len) & ~c
            if s_len:
                r_idx = torch.arange(len(rows))[:, None].expand_as(fe)
                vals = self.suffix[site][ref].to(value.dtype)  # [rows, S, ...]
                out[suf] = vals[r_idx[suf], fe[suf]]
            return out

        return Sources(position_mask(target, self.positions), last, fill, self.name)


def ablations(lm, texts: Sequence[str], sites: Sequence[Site], *, means: MeanBaseline | None = None,
              batch_size: int = 16, seed: int = 0) -> dict[str, Baseline]:
    """``{"mean", "zero", "resample"}`` baselines fitted on the reference ``texts``."""
    means = means if means is not None else MeanBaseline.fit(lm, texts, sites,
                                                             batch_size=batch_size)
    return {"mean": means, "zero": ZeroBaseline(),
            "resample": ResampleBaseline.fit(lm, texts, sites, batch_size=batch_size, seed=seed)}
