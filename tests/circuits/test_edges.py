"""Edge attribution against edge patching on a tiny model: exact where the model is linear."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from circuits.baselines import MeanBaseline
from circuits.components import groups
from circuits.edges import EdgeError, edge_attribution, edge_patch, nodes
from circuits.metrics import direction
from tests.circuits.conftest import direction_for
from tests.tiny import CORPUS


@pytest.fixture(scope="module")
def setup(llama64):
    lm = llama64
    metric = direction(direction_for(lm, 3), layer=2, lm=lm)
    means = MeanBaseline.fit(lm, CORPUS[:12], [g.site for g in groups(lm, ("heads", "neurons"),
                                                                          range(3))])
    batch = lm.batch(CORPUS[:4])
    return lm, metric, means, batch, edge_attribution(lm, batch, metric, means, batch_size=2)


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


def test_bad_edges_and_metrics_are_refused(setup):
    lm, metric, means, batch, _ = setup
    with pytest.raises(EdgeError, match="no edge"):
        edge_patch(lm, batch, metric, means, ["blocks.2.hook_mlp_out->blocks.1.attn_in"])
    from circuits.metrics import label_logprob

    with pytest.raises(EdgeError, match="reads one residual site"):
        edge_attribution(lm, batch, label_logprob(lm, "a"), means)
