"""Closeness to the model: the error's arithmetic, overshoot rejected, random circuits matched."""

from __future__ import annotations

import numpy as np
import pytest

from circuits.assemble import ranking
from circuits.attribution import attribute
from circuits.baselines import MeanBaseline
from circuits.closeness import (
    area,
    choose_size,
    composition,
    error_ci,
    evaluate_sets,
    matched_random,
    normalised_error,
    random_summary,
)
from circuits.components import Component, groups
from circuits.metrics import direction
from tests.circuits.conftest import direction_for
from tests.tiny import CORPUS

TYPES = ("heads", "neurons")


def test_error_is_distance_to_the_model_over_distance_of_the_empty_circuit():
    m, m0 = np.full(4, 10.0), np.zeros(4)
    assert normalised_error(m, np.full(4, 8.0), m0) == pytest.approx(0.2)
    assert normalised_error(m, m, m0) == 0
    assert normalised_error(m, m0, m0) == 1
    # overshoot: 15 is as far from the model (10) as 5 is; 25 is further than the empty circuit
    assert normalised_error(m, np.full(4, 15.0), m0) == pytest.approx(0.5)
    assert normalised_error(m, np.full(4, 25.0), m0) == pytest.approx(1.5)
    assert normalised_error(m, m, m) == float("inf")


def test_error_ci_resamples_groups_and_brackets_the_value():
    rng = np.random.default_rng(0)
    m = 10 + rng.normal(size=12)
    m0 = rng.normal(size=12)
    mk = m - 0.2 * (m - m0) + 0.3 * rng.normal(size=12)
    e, lo, hi = error_ci(m, mk, m0, [str(i // 2) for i in range(12)], n_boot=500)
    assert lo <= e <= hi and 0 < lo < hi
    assert np.isnan(error_ci(m, mk, m0, ["a"] * 12)[1])  # one group: no CI


def test_signed_error_says_which_way_and_its_ci_brackets_it_near_zero():
    from circuits.closeness import signed_error, signed_error_ci

    m, m0 = np.full(4, 10.0), np.zeros(4)
    assert signed_error(m, np.full(4, 12.0), m0) == pytest.approx(0.2)     # past the model
    assert signed_error(m, np.full(4, 8.0), m0) == pytest.approx(-0.2)     # short of it
    assert signed_error(m, m0, m0) == -1 and np.isnan(signed_error(m, m, m))
    # a circuit whose mean lands on the model's: |E|'s percentile CI excludes its estimate,
    # the signed CI brackets it, and its far end is what |E|'s upper bound was
    rng = np.random.default_rng(1)
    m = 10 + rng.normal(size=20)
    m0 = rng.normal(size=20)
    mk = m + rng.normal(size=20)
    mk += m.mean() - mk.mean()                     # exactly on the model, on average
    groups = [str(i) for i in range(20)]
    e, lo, hi = error_ci(m, mk, m0, groups, n_boot=500)
    assert e == pytest.approx(0, abs=1e-12) and lo > e       # the issue with |E|
    s, slo, shi = signed_error_ci(m, mk, m0, groups, n_boot=500)
    assert slo < s < shi and slo < 0 < shi
    assert max(-slo, shi) == pytest.approx(hi, rel=0.15)
    assert np.isnan(signed_error_ci(m, mk, m0, ["a"] * 20)[1])


def test_overshoot_is_rejected_where_faithfulness_above_target_accepted_it():
    # issue 18: F = 2.79 at size 100 passed "faithfulness >= 0.8"; its error |1 - F| = 1.79
    sizes = [0, 10, 100, 1000, 5000]
    faith = np.array([0.0, 0.3, 2.79, 0.9, 1.0])
    error = np.abs(1 - faith)
    old_rule = min(k for k, f in zip(sizes, faith) if f >= 0.8)
    k, how = choose_size(sizes, error, error + 0.05)
    assert old_rule == 100 and (k, how) == (1000, "upper CI")
    k, how = choose_size(sizes, error, error + 0.25)  # no upper bound within 0.2
    assert (k, how) == (1000, "point estimate")
    k, how = choose_size(sizes, [1, 0.9, 1.79, 0.5, 0.3], [np.nan] * 5)
    assert (k, how) == (5000, "not reached")
    # keeping every candidate reproduces the model by definition: never chosen; the closest
    # size within the budget is judged instead
    sizes, err = [0, 10, 100, 1000, 5000], [1, 0.9, 0.6, 0.5, 0.0]
    assert choose_size(sizes, err, err, n_all=5000, budget=500) == (100, "not reached")
    assert choose_size(sizes, err, err, n_all=5000, budget=5) == (1000, "not reached")


def test_area_is_the_trapezoid_over_the_share_of_candidates():
    assert area([0, 50, 100], [1, 0, 0], 100) == pytest.approx(0.25)
    assert area([100, 0], [1, 1], 100) == pytest.approx(1.0)


def _comps():
    out = [Component.parse(f"blocks.{layer}.attn.hook_z[{h}]") for layer in range(10) for h in range(4)]
    return out + [Component.parse(f"blocks.{layer}.mlp.hook_post[{n}]") for layer in range(10)
                  for n in range(20)]


def test_random_circuits_match_the_composition_per_type_and_layer_band():
    cands = _comps()
    circuit = [cands[0], cands[1], cands[25], cands[40], cands[41], cands[230]]
    draws = matched_random(circuit, cands, n=30, band=5, seed=1)
    assert len(draws) == 30
    want = composition(circuit, band=5)
    assert want == {"heads L0-4": 2, "heads L5-9": 1, "neurons L0-4": 2, "neurons L5-9": 1}
    for d in draws:
        assert composition(d, band=5) == want and len(set(d)) == len(d) and set(d) <= set(cands)
    assert len({tuple(map(str, d)) for d in draws}) > 1  # they differ
    s = random_summary(np.ones(3) * 10, np.zeros(3), np.array([[9.0] * 3, [5.0] * 3]), 0.2)
    assert s["median"] == pytest.approx(0.3) and s["share_as_close"] == 0.5


@pytest.fixture(scope="module")
def setup(llama64):
    lm = llama64
    metric = direction(direction_for(lm, 5), layer=2, lm=lm)
    means = MeanBaseline.fit(lm, CORPUS[:12], [g.site for g in groups(lm, TYPES, range(3))])
    batch = lm.batch(CORPUS[:6])
    attr = attribute(lm, batch, metric, means, types=TYPES)
    return lm, metric, means, batch, attr


def test_keeping_everything_is_the_model_and_nothing_the_empty_circuit(setup):
    lm, metric, means, batch, attr = setup
    ranked, _, gs = ranking(attr, TYPES)
    m, m0, ms = evaluate_sets(lm, batch, metric, [ranked, [], ranked[:5], ranked[:5]], gs, means,
                              drop=[False, False, False, True])
    scale = np.abs(m).max()
    assert np.allclose(ms[0], m, rtol=0, atol=1e-9 * scale)      # every candidate kept
    assert np.allclose(ms[1], m0, rtol=0, atol=1e-9 * scale)     # none kept
    assert not np.allclose(m, m0, rtol=0, atol=1e-6 * scale)     # ablating moves the metric
    # keeping 5 and dropping the same 5 are different interventions
    assert not np.allclose(ms[2], ms[3], rtol=0, atol=1e-6 * scale)
    assert normalised_error(m, ms[0], m0) == pytest.approx(0, abs=1e-9)
