"""The closeness search: its forward is the circuit's, each step is measured, the loss only falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.assemble import CircuitConfig, find_circuit, ranking
from circuits.attribution import attribute
from circuits.baselines import MeanBaseline
from circuits.closeness import evaluate_sets
from circuits.components import Component, groups
from circuits.metrics import direction
from circuits.runs import Compute
from circuits.search import MaskedForward, search
from tests.circuits.conftest import direction_for
from tests.tiny import CORPUS

TYPES = ("heads", "neurons")


@pytest.fixture(scope="module")
def setup(llama64):
    lm = llama64
    metric = direction(direction_for(lm, 5), layer=2, lm=lm)
    gs = groups(lm, TYPES, range(3))
    means = MeanBaseline.fit(lm, CORPUS[:12], [g.site for g in gs])
    train, test = lm.batch(CORPUS[:8]), lm.batch(CORPUS[12:18])
    attr = attribute(lm, train, metric, means, types=TYPES)
    ranked, _, gs = ranking(attr, TYPES)
    return lm, metric, means, train, test, attr, ranked, gs


def _loss(lm, batch, metric, gs, means, comps):
    m, m0, ms = evaluate_sets(lm, batch, metric, [comps], gs, means)
    return float(((ms[0] - m) ** 2).sum() / ((m0 - m) ** 2).sum()), m, ms[0]


def test_the_masked_forward_at_a_0_1_mask_is_the_circuit(setup):
    lm, metric, means, train, _, _, ranked, gs = setup
    net = MaskedForward(lm, train, metric, gs, means, chunk=3, compute=Compute())
    chosen = ranked[:40]
    index = {c: i for i, c in enumerate(c for g in gs for c in g.components())}
    mask = torch.zeros(net.n_units)
    mask[[index[c] for c in chosen]] = 1
    _, m, mk = _loss(lm, train, metric, gs, means, chosen)
    got = net.rows(mask).numpy()
    # src + 1 * (value - src) vs value: the same numbers up to rounding
    assert np.allclose(got, mk, rtol=1e-5, atol=1e-5 * np.abs(mk).max())
    assert np.allclose(net.rows(torch.ones(net.n_units)).numpy(), m, rtol=1e-5,
                       atol=1e-5 * np.abs(m).max())


def test_the_search_only_takes_measured_improvements(setup):
    lm, metric, means, train, _, _, ranked, gs = setup
    start = ranked[-30:]   # the ranking's worst 30: far from the model
    res = search(lm, train, metric, gs, means, start, rounds=6, chunk=4)
    assert len(res.components) == len(start) == len(set(res.components))
    before, _, _ = _loss(lm, train, metric, gs, means, start)
    after, _, _ = _loss(lm, train, metric, gs, means, res.components)
    assert res.loss_start == pytest.approx(before, rel=1e-4)
    assert res.loss == pytest.approx(after, rel=1e-4, abs=1e-7)
    assert after < 0.9 * before and res.changed > 0
    losses = [h["loss"] for h in res.history]
    assert all(b <= a for a, b in zip([res.loss_start] + losses, losses))
    assert res.compute.forward_passes > 0 and res.compute.backward_passes > 0
    kept = [c for c in res.components if c in set(start)]
    assert kept == [c for c in start if c in set(res.components)]  # the start's order is kept


def test_the_search_refuses_a_component_that_is_no_candidate(setup):
    lm, metric, means, train, _, _, _, gs = setup
    with pytest.raises(ValueError, match="not among the candidates"):
        search(lm, train, metric, gs[:2], means, [Component.parse("blocks.2.mlp.hook_post[5]")])


def test_find_circuit_searches_when_the_ranking_is_not_close_and_judges_what_it_found(setup):
    lm, metric, means, train, test, attr, _, _ = setup
    tg = [str(i % 4) for i in range(8)]
    te = [str(i % 3) for i in range(6)]
    # a budget of 10% (39 components) and a limit the ranking cannot meet below every candidate
    config = CircuitConfig(types=TYPES, max_error=0.01, max_fraction=0.1, sizes=(1, 5, 20),
                           n_boot=50, n_random=3, n_splits=10, search_rounds=4,
                           search_halvings=1, search_splits=1)
    circuit, _ = find_circuit(lm, attr, metric, train, test, means, name="joy", config=config,
                               train_groups=tg, test_groups=te)
    sr = circuit.info["search"]
    assert sr is not None and sr["tried"][0]["size"] == 39
    assert sr["tried"][0]["loss"] <= sr["tried"][0]["loss_start"]
    if sr["chosen"]:
        f = circuit.faithfulness
        _, _, mk = _loss(lm, test, metric, groups(lm, TYPES, range(3)), means, circuit.components)
        m, m0, _ = evaluate_sets(lm, test, metric, [], groups(lm, TYPES, range(3)), means)
        assert f["error"] == pytest.approx(abs(mk.mean() - m.mean()) / abs(m0.mean() - m.mean()),
                                           rel=1e-6)
        assert circuit.info["stability"]["of"] == "search"
        assert circuit.info["ranking_stability"]["k"] == circuit.size
    # without the search, the same call judges the ranking's circuit
    plain, _ = find_circuit(lm, attr, metric, train, test, means, name="joy",
                            config=CircuitConfig(**{**config.__dict__, "search_rounds": 0}),
                            train_groups=tg, test_groups=te)
    assert plain.info["search"] is None and plain.info["stability"]["of"] == "ranking"


def test_halves_split_every_stratum_in_half():
    from circuits.stability import halves
    train = np.array([f"t{i}" for i in range(9)])
    others = np.array([f"o{i}" for i in range(20)])
    a, b = halves(train, others, rng=np.random.default_rng(0))
    assert not set(a) & set(b) and set(a) | set(b) == set(train) | set(others)
    for stratum in (train, others):
        na, nb = np.isin(a, stratum).sum(), np.isin(b, stratum).sum()
        assert na == len(stratum) // 2 and nb == len(stratum) - na
    # random: another draw puts the groups elsewhere
    c, _ = halves(train, others, rng=np.random.default_rng(1))
    assert set(c) != set(a)


def test_a_halving_is_kept_only_while_the_halved_circuit_is_stable():
    from types import SimpleNamespace

    from circuits.assemble import CircuitConfig, _stable_choice

    def found(*closes):  # largest first, as the search halves
        return [(SimpleNamespace(components=list(range(40 >> i))),
                 {"signed_low": -0.05, "signed_high": 0.05 if ok else 0.5, "error": 0.02})
                for i, ok in enumerate(closes)]

    def stability(stable_sizes):
        seen = []

        def fn(size):
            seen.append(size)
            return {"jaccard": 0.7 if size in stable_sizes else 0.4, "stable": size in stable_sizes}
        return fn, seen

    cfg = CircuitConfig(max_error=0.2)
    fn, seen = stability({40})
    j, stab, checked = _stable_choice(found(True, True, True), 2, "upper CI", cfg, fn)
    assert (j, stab["stable"], seen) == (0, True, [10, 20, 40])
    assert [c["stable"] for c in checked] == [False, False, True]
    # the next larger circuit is not close by the rule that chose: keep the first choice
    fn, seen = stability({40})
    j, stab, _ = _stable_choice(found(True, False, True), 2, "upper CI", cfg, fn)
    assert (j, stab["stable"], seen) == (2, False, [10])
    # ... but it is by the point estimate, when that is the rule that chose
    fn, seen = stability({20})
    j, stab, _ = _stable_choice(found(True, False, True), 2, "point estimate", cfg, fn)
    assert (j, stab["stable"], seen) == (1, True, [10, 20])
    # none stable: the smallest close one, with its own check
    fn, seen = stability(set())
    j, stab, checked = _stable_choice(found(True, True, True), 2, "upper CI", cfg, fn)
    assert (j, stab["jaccard"], len(checked)) == (2, 0.4, 3)
    # switched off: one check, as before
    fn, seen = stability({40})
    j, _, _ = _stable_choice(found(True, True, True), 2, "upper CI",
                             CircuitConfig(max_error=0.2, search_stable=False), fn)
    assert (j, seen) == (2, [10])
