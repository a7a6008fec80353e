"""Resample ablation: each prompt takes one other reference prompt's template-aware values."""

from __future__ import annotations

import pytest
import torch

from circuits.ablations import ABLATIONS, ResampleBaseline, ablations
from circuits.baselines import AlignmentError, position_mask
from circuits.components import groups
from probe.forward import run_with_cache
from tests.tiny import CORPUS


def test_resampled_values_come_from_another_reference_prompt(llama):
    lm = llama
    site = groups(lm, ("neurons",), [1])[0].site
    refs = CORPUS[:5]
    base = ResampleBaseline.fit(lm, refs, [site], batch_size=2, seed=3)
    assert base.content[site].shape[0] == 5 and base.suffix[site].shape[:1] == (5,)
    target_texts = CORPUS[2:6]
    target = lm.batch(target_texts)
    sources = base.bind(lm, target, [site], texts=target_texts)
    pick = base.choice(target, target_texts)
    assert all(refs[int(j)] != t for j, t in zip(pick, target_texts))  # never itself
    _, cache = run_with_cache(lm, target, [site], stop=True)
    value = cache[site]
    out = sources(site, value, torch.arange(len(target)))
    mask = position_mask(target)
    assert torch.equal(out[~mask], value[~mask])  # prefix tokens are never touched
    for r in range(len(target)):
        ref = refs[int(pick[r])]
        one = lm.batch([ref])
        _, c1 = run_with_cache(lm, one, [site], stop=True)
        content_mean = c1[site][0][one.content[0]].mean(0)
        got = out[r][target.content[r]]
        tol = 1e-5 * float(content_mean.abs().max())
        assert torch.allclose(got, content_mean.expand_as(got), rtol=1e-4, atol=tol)
        last_ref, last_t = int(one.last[0]), int(target.last[r])
        assert torch.allclose(out[r, last_t], c1[site][0, last_ref], rtol=1e-4, atol=tol)


def test_three_ablations_and_bad_input(llama):
    lm = llama
    site = groups(lm, ("heads",), [0])[0].site
    abl = ablations(lm, CORPUS[:4], [site])
    assert tuple(sorted(abl)) == tuple(sorted(ABLATIONS))
    with pytest.raises(AlignmentError, match="at least 2"):
        ResampleBaseline.fit(lm, CORPUS[:1], [site])
    other = groups(lm, ("neurons",), [0])[0].site
    with pytest.raises(AlignmentError, match="no values for"):
        abl["resample"].bind(lm, lm.batch(CORPUS[:2]), [other])
