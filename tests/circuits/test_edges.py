"""Edge attribution against edge patching on a tiny model: exact where the model is linear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from circuits.baselines import MeanBaseline
from circuits.components import groups
from circuits.edges import EdgeError, change_ratios, edge_attribution, edge_patch, nodes
from circuits.metrics import direction
from circuits.runs import forward_metric
from probe.forward import run_with_cache
from probe.hooks import module_input_hooks, module_output_hooks
from probe.sites import Site
from tests.circuits.conftest import direction_for, load64
from tests.tiny import CORPUS


@pytest.fixture(scope="module")
def setup(llama64):
    lm = llama64
    metric = direction(direction_for(lm, 3), layer=2, lm=lm)
    means = MeanBaseline.fit(lm, CORPUS[:12], [g.site for g in groups(lm, ("heads", "neurons"),
                                                                          range(3))])
    batch = lm.batch(CORPUS[:4])
    return lm, metric, means, batch, edge_attribution(lm, batch, metric, means, batch_size=2,
                                                      estimator="eap")


def test_the_graph_has_the_edges_the_residual_stream_allows(setup):
    lm, metric, means, batch, ea = setup
    up, down, _ = nodes(lm, 2)
    assert len(up) == 3 * (4 + 1) and len(down) == 3 * 2 + 1
    t = ea.table()
    edges = set(t["edge"])
    assert "blocks.0.attn.hook_z[1]->blocks.0.mlp_in" in edges          # head feeds its MLP
    assert "blocks.0.hook_mlp_out->blocks.0.mlp_in" not in edges         # an MLP not itself
    assert "blocks.1.attn.hook_z[0]->blocks.1.attn_in" not in edges      # nor its own layer's heads
    assert "blocks.2.hook_mlp_out->metric" in edges
    assert len(t) == np.isfinite(ea.scores).sum() and t["value"].abs().is_monotonic_decreasing


def test_edges_into_the_metric_are_exact_and_the_rest_track_patching(setup):
    lm, metric, means, batch, ea = setup
    t = ea.table()
    direct = t[t["downstream"] == "metric"]
    truth = edge_patch(lm, batch, metric, means, list(direct["edge"]))
    # the metric is linear in the residual it reads: EAP equals edge patching there
    want = truth.mean(0)
    np.testing.assert_allclose(direct["value"], want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    inner = t[t["downstream"] != "metric"].head(40)
    truth = edge_patch(lm, batch, metric, means, list(inner["edge"]), rows_per_forward=16).mean(0)
    assert spearmanr(inner["value"], truth)[0] > 0.8
    assert np.sign(inner["value"].iloc[0]) == np.sign(truth[0])


def _through_the_norm(lm, batch, metric, means, edge, eps=1e-2):
    """What ``eap-norm`` claims for ``edge``, computed another way: patch the edge, read what
    the downstream norm hands on, and take the metric's finite difference along that change."""
    u, d = edge.split("->")
    layer, kind = int(d.split(".")[1]), d.split(".")[2]
    norm = lm.arch.part(lm.model, layer, kind)
    seen = {}
    keep = lambda name: (lambda y: seen.__setitem__(name, y.detach()) or y)
    with module_output_hooks([(norm, keep("clean"))]):
        forward_metric(lm, batch, metric)
    # the edge's change at v's input, recovered from edge patching's own hook
    from circuits import edges as E
    deltas = E._deltas(lm, batch, means, metric.layer)
    up, _, info = nodes(lm, metric.layer)
    k, lu, h = info[up.index(u)]
    delta = deltas[(k, lu)][:, :, h] if k == "head" else deltas[(k, lu)]
    with module_input_hooks([(norm, lambda x: x + delta)]), module_output_hooks([(norm, keep("patched"))]):
        forward_metric(lm, batch, metric)
    step = seen["patched"] - seen["clean"]
    m = []
    for sign in (1, -1):  # a central difference: the metric is not computed in float64 throughout
        with module_output_hooks([(norm, lambda y, s=sign: y + s * eps * step)]):
            m.append(forward_metric(lm, batch, metric).numpy())
    return (m[0] - m[1]) / (2 * eps)


def test_eap_norm_takes_the_norm_exactly_and_tracks_patching_at_least_as_well(setup):
    lm, metric, means, batch, ea = setup
    en = edge_attribution(lm, batch, metric, means, batch_size=3, estimator="eap-norm")
    t = en.table()
    # an edge from a head other than 0 (heads are scored a layer at a time) and from an MLP
    for edge in ("blocks.0.attn.hook_z[2]->blocks.1.attn_in", "blocks.0.hook_mlp_out->blocks.2.mlp_in"):
        want = _through_the_norm(lm, batch, metric, means, edge)
        i, j = en.upstream.index(edge.split("->")[0]), en.downstream.index(edge.split("->")[1])
        got = en.per_row[:, i, j]
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4 * np.abs(want).max())
        assert not np.allclose(got, ea.per_row[:, i, j], rtol=1e-3)  # not EAP under another name
    direct = t["downstream"] == "metric"  # nothing between the edge and a linear metric: EAP's value
    np.testing.assert_allclose(t[direct].set_index("edge")["value"],
                               ea.table().set_index("edge").loc[t[direct]["edge"], "value"], rtol=1e-9)
    inner = ea.table().query("downstream != 'metric'").head(60)
    truth = edge_patch(lm, batch, metric, means, list(inner["edge"]), rows_per_forward=16).mean(0)
    norm = t.set_index("edge").loc[inner["edge"], "value"].to_numpy()
    assert np.abs(norm - truth).mean() < np.abs(inner["value"].to_numpy() - truth).mean()
    with pytest.raises(EdgeError, match="unknown edge estimator"):
        edge_attribution(lm, batch, metric, means, estimator="eap-ig")


def test_eap_sublayer_is_edge_patching_where_nothing_nonlinear_follows(setup):
    lm, metric, means, batch, ea = setup
    es = edge_attribution(lm, batch, metric, means, batch_size=3, estimator="eap-sublayer",
                          edges_per_call=4)
    t = es.table()
    # the metric reads the residual after block 2: behind block 2's MLP everything is linear
    last = t[t["downstream"] == "blocks.2.mlp_in"]
    truth = edge_patch(lm, batch, metric, means, list(last["edge"]))
    j = es.downstream.index("blocks.2.mlp_in")
    i = [es.upstream.index(u) for u in last["upstream"]]
    np.testing.assert_allclose(es.per_row[:, i, j], truth, rtol=1e-5, atol=1e-6 * np.abs(truth).max())
    assert not np.allclose(ea.per_row[:, i, j], truth, rtol=1e-3)
    # with block 2's MLP silenced, block 2's attention is all that follows its edges: exact too
    # (the attention runs on padded rows with rotary positions, several edges stacked per call)
    w = lm.arch.part(lm.model, 2, "mlp_out").weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.zero_()
        es2 = edge_attribution(lm, batch, metric, means, batch_size=3, estimator="eap-sublayer",
                               edges_per_call=4)
        into = es2.table().query("downstream == 'blocks.2.attn_in'")
        truth2 = edge_patch(lm, batch, metric, means, list(into["edge"]))
    finally:
        with torch.no_grad():
            w.copy_(saved)
    j2, i2 = es2.downstream.index("blocks.2.attn_in"), [es2.upstream.index(u) for u in into["upstream"]]
    np.testing.assert_allclose(es2.per_row[:, i2, j2], truth2, rtol=1e-5,
                               atol=1e-6 * np.abs(truth2).max())
    assert lm.batch(CORPUS[:4]).attention_mask.float().mean() < 1  # the rows are padded
    # elsewhere it is an estimate, closer to edge patching than EAP on the top 60 inner edges
    inner = ea.table().query("downstream != 'metric'").head(60)
    truth = edge_patch(lm, batch, metric, means, list(inner["edge"]), rows_per_forward=16).mean(0)
    sub = t.set_index("edge").loc[inner["edge"], "value"].to_numpy()
    assert np.abs(sub - truth).mean() < 0.6 * np.abs(inner["value"].to_numpy() - truth).mean()
    assert spearmanr(sub, truth)[0] > 0.95


@pytest.mark.parametrize("family", ["mistral", "qwen3", "gemma"])
def test_eap_sublayer_runs_each_llama_like_family_exactly_where_nothing_follows(family, tiny_dir):
    """The sublayer calls replay each family's own attention with the arguments it was called
    with (Qwen3's attention has q/k norms), checked where the estimate is exact
    (in float64, as the Llama fixture, so that patching's differences are not rounding)."""
    lm = load64(tiny_dir, family)
    metric = direction(direction_for(lm, 1), layer=2, lm=lm)
    means = MeanBaseline.fit(lm, CORPUS[:8], [g.site for g in groups(lm, ("heads", "neurons"),
                                                                         range(3))])
    batch = lm.batch(CORPUS[4:7])
    es = edge_attribution(lm, batch, metric, means, batch_size=2, edges_per_call=5)
    last = es.table().query("downstream == 'blocks.2.mlp_in'")
    truth = edge_patch(lm, batch, metric, means, list(last["edge"]))
    j, i = es.downstream.index("blocks.2.mlp_in"), [es.upstream.index(u) for u in last["upstream"]]
    np.testing.assert_allclose(es.per_row[:, i, j], truth, rtol=1e-3, atol=1e-4 * np.abs(truth).max())
    assert np.isfinite(es.scores[np.isfinite(es.scores)]).all() and len(es.table()) > len(last)


def test_hybrid_patches_the_edges_of_the_nodes_that_change_most_and_estimates_the_rest(setup):
    lm, metric, means, batch, _ = setup
    sub = edge_attribution(lm, batch, metric, means, batch_size=3, estimator="eap-sublayer")
    hy = edge_attribution(lm, batch, metric, means, batch_size=3, estimator="hybrid", exact_nodes=2,
                          rows_per_forward=8)
    ratios = change_ratios(lm, batch, means, 2)
    assert hy.exact == tuple(ratios.index[:2]) and not sub.exact
    t = hy.table()
    mine = t["upstream"].isin(hy.exact)
    assert mine.sum() == sum(1 for d in hy.downstream for u in hy.exact
                             if f"{u}->{d}" in set(sub.table()["edge"]))
    truth = edge_patch(lm, batch, metric, means, list(t.loc[mine, "edge"]))
    i = [hy.upstream.index(u) for u in t.loc[mine, "upstream"]]
    j = [hy.downstream.index(d) for d in t.loc[mine, "downstream"]]
    np.testing.assert_allclose(hy.per_row[:, i, j], truth, rtol=1e-6, atol=1e-9 * np.abs(truth).max())
    # every other edge keeps eap-sublayer's estimate (the same computation, the same numbers)
    rest = np.isfinite(sub.per_row)
    rest[:, i, j] = False
    assert np.array_equal(hy.per_row[rest], sub.per_row[rest])
    assert not np.allclose(sub.per_row[:, i, j], truth, rtol=1e-3)   # where it was an estimate
    with pytest.raises(EdgeError, match="exact_nodes >= 1"):
        edge_attribution(lm, batch, metric, means, estimator="hybrid", exact_nodes=0)


def test_change_ratios_are_the_ablation_change_relative_to_the_residual(setup):
    lm, _, means, batch, _ = setup
    r = change_ratios(lm, batch, means, 2)
    _, cache = run_with_cache(lm, batch, [Site("mlp.hook_post", 1), Site("hook_resid_post", 1)])
    post = cache[Site("mlp.hook_post", 1)]
    rows = torch.arange(len(batch))
    src = means.bind(lm, batch, [Site("mlp.hook_post", 1)])
    delta = (src(Site("mlp.hook_post", 1), post, rows) - post) @ lm.arch.part(lm.model, 1, "mlp_out").weight.T
    m = batch.attention_mask.bool()
    want = (delta.norm(dim=-1) / cache[Site("hook_resid_post", 1)].norm(dim=-1))[m].mean()
    assert abs(r["blocks.1.hook_mlp_out"] - float(want)) <= 1e-6 * float(want)
    assert r.is_monotonic_decreasing and len(r) == 3 * 5


def test_bad_edges_and_metrics_are_refused(setup):
    lm, metric, means, batch, _ = setup
    with pytest.raises(EdgeError, match="no edge"):
        edge_patch(lm, batch, metric, means, ["blocks.2.hook_mlp_out->blocks.1.attn_in"])
    from circuits.metrics import label_logprob

    with pytest.raises(EdgeError, match="reads one residual site"):
        edge_attribution(lm, batch, label_logprob(lm, "a"), means)


def test_the_command_line_offers_exactly_the_estimators_there_are():
    """``circuits/cli.py`` names them without importing torch (start-up): kept equal here."""
    from circuits.edges import ESTIMATORS
    from probe.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "circuits" in a.choices)
    opt = next(a for a in sub.choices["circuits"]._actions if "--edge-estimator" in a.option_strings)
    assert tuple(opt.choices) == ESTIMATORS and opt.default in ESTIMATORS

