"""Attribution patching against exact patching where the math says they must agree.

In float64 on a tiny Llama: a metric that reads ``resid_post`` of block L is linear in block L's
neurons and MLP output, so AtP, IG and patching agree to ~1e-9 there; a metric on ``resid_mid``
is linear in the attention pattern, so AtP*'s QK fix is exact for block L's queries and keys.
Elsewhere AtP is an approximation and is only compared loosely.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution import attribute, bootstrap_ci
from circuits.baselines import MeanBaseline, PairBaseline, ZeroBaseline, take
from circuits.components import Component, groups
from circuits.metrics import Metric, direction
from circuits.patching import patch
from probe.errors import AttributionError
from probe.forward import run_with_cache
from probe.sites import Site
from tests.circuits.conftest import TEXTS, direction_for
from tests.tiny import CORPUS

EXACT = {"rtol": 1e-7, "atol": 1e-9}


def _table(attr, t):
    d = attr.table(n_boot=0)
    return d[d["type"] == t].set_index("component")["value"]


def _mean(lm, types, layers=range(3)):
    sites = [g.site for g in groups(lm, types, layers)] + [Site("hook_embed")]
    return MeanBaseline.fit(lm, CORPUS[6:18], sites)


def test_atp_is_exact_where_the_metric_is_linear(llama64):
    lm = llama64
    batch = lm.batch(TEXTS[:4])
    metric = direction(direction_for(lm), layer=2, lm=lm)
    base = _mean(lm, ("neurons", "sublayers"))
    attr = attribute(lm, batch, metric, base, types=("neurons", "sublayers"), layers=[2])
    comps = [Component(Site("mlp.hook_post", 2, neuron=n)) for n in range(0, 128, 9)]
    comps.append(Component(Site("hook_mlp_out", 2)))
    truth = patch(lm, batch, metric, base, comps).table(n_boot=0).set_index("component")["value"]
    est = pd_concat(_table(attr, "neurons"), _table(attr, "sublayers"))
    np.testing.assert_allclose(est[truth.index].to_numpy(), truth.to_numpy(), **EXACT)
    assert truth.abs().max() > 1e-3  # the effects are not trivially zero (float64 noise ~1e-12)


def pd_concat(*series):
    import pandas as pd

    return pd.concat(series)


def test_ig_is_exact_where_the_metric_is_linear_and_close_elsewhere(llama64):
    lm = llama64
    batch = lm.batch(TEXTS[:3])
    metric = direction(direction_for(lm, 1), layer=2, lm=lm)
    base = _mean(lm, ("neurons", "heads"))
    ig = attribute(lm, batch, metric, base, types=("neurons",), layers=[2], estimator="ig", steps=3)
    atp = attribute(lm, batch, metric, base, types=("neurons",), layers=[2])
    np.testing.assert_allclose(_table(ig, "neurons").to_numpy(), _table(atp, "neurons").to_numpy(),
                               **EXACT)
    assert ig.compute.forward_passes == 3 + 1 and ig.compute.backward_passes == 3


def test_ig_on_sites_adds_up_to_ablating_everything_at_once(llama64):
    """Completeness: sum over components = M(every component at its mean) - M."""
    lm = llama64
    batch = lm.batch(TEXTS[:3])
    metric = direction(direction_for(lm, 6), layer=2, lm=lm)
    types = ("heads", "neurons")
    base = _mean(lm, types)
    ig = attribute(lm, batch, metric, base, types=types, estimator="ig", steps=24)
    total = sum(v.sum(1) for v in ig.per_row.values())
    sites = [g.site for g in ig.groups]
    src = base.bind(lm, batch, sites)
    with torch.no_grad(), lm.hooks({s: (lambda t, ctx: src(ctx.site, t)) for s in sites}):
        _, cache = run_with_cache(lm, batch, metric.sites)
    _, clean = run_with_cache(lm, batch, metric.sites)
    want = metric(cache, batch) - metric(clean, batch)
    assert want.abs().min() > 1e-2
    torch.testing.assert_close(total, want, rtol=2e-2, atol=1e-3)


def test_qk_fix_is_exact_when_the_metric_is_linear_in_the_pattern(llama64):
    lm = llama64
    batch = lm.batch(TEXTS[:4])
    L = 2
    metric = direction(direction_for(lm, 2), layer=L, lm=lm, kind="hook_resid_mid")
    base = _mean(lm, ("queries", "keys"))
    star = attribute(lm, batch, metric, base, types=("queries", "keys"), layers=[L],
                     estimator="atp*", graddrop=False)
    plain = attribute(lm, batch, metric, base, types=("queries", "keys"), layers=[L])
    comps = [g.component(u) for g in star.groups for u in range(g.n_units)]
    truth = patch(lm, batch, metric, base, comps).table(n_boot=0).set_index("component")["value"]
    for t in ("queries", "keys"):
        est = _table(star, t)
        np.testing.assert_allclose(est.to_numpy(), truth[est.index].to_numpy(), **EXACT)
    lin = pd_concat(_table(plain, "queries"), _table(plain, "keys"))
    assert not np.allclose(lin.to_numpy(), truth[lin.index].to_numpy(), rtol=1e-4, atol=1e-6), \
        "plain AtP should differ from the exact effect through the softmax"


def test_graddrop_keeps_the_magnitude_of_a_component_with_one_path(llama64):
    """A neuron of the metric's own block reaches it through that block only: dropping any other
    layer leaves its AtP unchanged, so sum_l |AtP_l| / (L - 1) = |AtP|."""
    lm = llama64
    batch = lm.batch(TEXTS[:2])
    metric = direction(direction_for(lm, 3), layer=2, lm=lm)
    base = ZeroBaseline()
    star = attribute(lm, batch, metric, base, types=("neurons", "heads"), estimator="atp*")
    atp = attribute(lm, batch, metric, base, types=("neurons", "heads"))
    assert not star.signed and star.compute.backward_passes == 1 + 3
    for g in star.groups:
        if g.type == "neurons" and g.site.layer == 2:
            np.testing.assert_allclose(star.per_row[g].numpy(), atp.per_row[g].abs().numpy(),
                                       **EXACT)
        assert (star.per_row[g] >= 0).all()


def test_batched_rows_equal_rows_alone(llama):
    batch = llama.batch(TEXTS)
    metric = direction(direction_for(llama), layer=2, lm=llama)
    base = ZeroBaseline()
    full = attribute(llama, batch, metric, base, types=("heads", "resid"), batch_size=4,
                     resid_positions=3)
    one = attribute(llama, take(batch, [4]), metric, base, types=("heads", "resid"),
                    resid_positions=3)
    for g in full.groups:
        torch.testing.assert_close(full.per_row[g][4:5], one.per_row[g], rtol=1e-4, atol=1e-5)


def test_pairs_attribution_tracks_patching_loosely(llama):
    a, b = llama.batch(TEXTS[:3]), llama.batch(TEXTS[3:6])
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])
    texts = TEXTS[:6]
    both = llama.batch(texts)
    del width
    target, source = take(both, [0, 1, 2]), take(both, [3, 4, 5])
    metric = direction(direction_for(llama, 4), layer=2, lm=llama)
    base = PairBaseline(source, positions="suffix")
    attr = attribute(llama, target, metric, base, types=("heads", "sublayers"))
    comps = [g.component(u) for g in attr.groups for u in range(g.n_units)]
    truth = patch(llama, target, metric, base, comps).table(n_boot=0).set_index("component")["value"]
    est = attr.table(n_boot=0).set_index("component")["value"][truth.index]
    assert np.corrcoef(est, truth)[0, 1] > 0.5


def test_a_metric_without_a_gradient_path_is_an_error(llama):
    batch = llama.batch(TEXTS[:2])
    site = Site("hook_resid_post", 1)
    flat = Metric(name="flat", fn=lambda values, b: values[site][:, -1, 0] * 0, sites=(site,))
    with pytest.raises(AttributionError, match="exactly zero"):
        attribute(llama, batch, flat, ZeroBaseline(), types=("heads",))


def test_identical_pairs_give_zero_everywhere_and_say_so(llama):
    batch = llama.batch(TEXTS[:2])
    metric = direction(direction_for(llama), layer=1, lm=llama)
    with pytest.raises(AttributionError, match="baseline equals the target"):
        attribute(llama, batch, metric, PairBaseline(batch), types=("heads",))


def test_components_after_the_metric_are_dropped_with_a_note(llama):
    batch = llama.batch(TEXTS[:2])
    metric = direction(direction_for(llama), layer=1, lm=llama)
    attr = attribute(llama, batch, metric, ZeroBaseline(), types=("sublayers",), layers=[0, 1, 2])
    assert {g.site.layer for g in attr.groups} == {0, 1}
    assert "layers 2-2 come after" in attr.notes[0]
    with pytest.raises(AttributionError, match="no requested layer"):
        attribute(llama, batch, metric, ZeroBaseline(), types=("sublayers",), layers=[2])


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(0).normal(size=(40, 3)) + [0, 1, 5]
    lo, hi = bootstrap_ci(x, [str(i // 2) for i in range(40)], n_boot=300)
    m = x.mean(0)
    assert (lo < m).all() and (m < hi).all() and (hi - lo < 1.5).all()
