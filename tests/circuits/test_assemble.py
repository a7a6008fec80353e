"""Circuit curves hit their fixed points, the size is chosen on training prompts, files round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from circuits.assemble import (
    Circuit,
    CircuitConfig,
    CircuitError,
    curves,
    default_sizes,
    find_circuit,
    overlap,
    ranking,
)
from circuits.attribution import attribute
from circuits.baselines import MeanBaseline
from circuits.components import Component, groups
from circuits.metrics import direction
from tests.circuits.conftest import direction_for
from tests.tiny import CORPUS

TYPES = ("heads", "neurons")


@pytest.fixture(scope="module")
def setup(llama64):
    lm = llama64
    metric = direction(direction_for(lm, 5), layer=2, lm=lm)
    means = MeanBaseline.fit(lm, CORPUS[:12], [g.site for g in groups(lm, TYPES, range(3))])
    train, test = lm.batch(CORPUS[:6]), lm.batch(CORPUS[12:18])
    attr = attribute(lm, train, metric, means, types=TYPES)
    return lm, metric, means, train, test, attr


def test_curves_hit_their_fixed_points(setup):
    lm, metric, means, train, _, attr = setup
    ranked, scores, gs = ranking(attr, TYPES)
    n = len(ranked)
    assert n == 12 + 384 and list(scores) == sorted(scores)  # most harmful-to-remove first
    df = curves(lm, train, metric, ranked, gs, means, (0, 10, n), n_boot=50,
                row_groups=[str(i % 3) for i in range(6)]).set_index("size")
    assert df.loc[0, "faithfulness"] == 0 and df.loc[0, "completeness"] == pytest.approx(1, abs=1e-6)
    assert df.loc[n, "faithfulness"] == pytest.approx(1, abs=1e-6)
    assert df.loc[n, "completeness"] == pytest.approx(0, abs=1e-6)
    assert df.loc[10, "faithfulness_low"] <= df.loc[10, "faithfulness"] <= df.loc[10, "faithfulness_high"]
    assert df.loc[0, "M"] != df.loc[0, "M_0"]


def test_the_size_is_the_smallest_close_to_the_model_on_training_prompts(setup, tmp_path):
    lm, metric, means, train, test, attr = setup
    config = CircuitConfig(types=TYPES, max_error=0.4, sizes=(1, 5, 20, 100), n_boot=50,
                           n_random=4, n_splits=20)
    tg = [str(i % 3) for i in range(6)]
    circuit, cv = find_circuit(lm, attr, metric, train, test, means, name="joy", config=config,
                               train_groups=tg, test_groups=tg)
    tr = cv[cv["split"] == "train"].set_index("size")
    how = circuit.faithfulness["chosen_by"]
    # "upper CI": how far the signed error's CI reaches from 0 (it brackets the estimate)
    reach = np.fmax(tr["signed_low"].abs(), tr["signed_high"].abs())
    err = reach if how == "upper CI" else tr["error"]
    if how != "not reached":
        assert circuit.size == min(k for k, e in err.items() if e <= 0.4)
        assert all(e > 0.4 for k, e in err.items() if k < circuit.size)
    te = cv[cv["split"] == "test"].set_index("size")
    assert circuit.faithfulness["error"] == pytest.approx(te.loc[circuit.size, "error"])
    # the signed error is E with its sign, (M_k - M) / (M - M_0) = F - 1
    assert np.allclose(te["signed_error"].abs(), te["error"], rtol=1e-6, atol=1e-9)
    assert np.allclose(te["signed_error"], te["faithfulness"] - 1, rtol=1e-6, atol=1e-6)
    f = circuit.faithfulness
    assert f["signed_error"] == pytest.approx(te.loc[circuit.size, "signed_error"])
    lo, hi = f["signed_error_ci"]
    assert lo <= f["signed_error"] <= hi
    # E = |1 - F| on the same forwards
    assert np.allclose(te["error"], (1 - te["faithfulness"]).abs(), rtol=1e-6, atol=1e-6)
    assert set(cv["split"]) == {"train", "test"} and te["completeness"].notna().all()
    assert circuit.info["order"] in ("signed", "abs") and len(circuit.info["orders_tried"]) == 2
    assert circuit.info["stability"]["k"] == circuit.size
    back = Circuit.load(circuit.save(tmp_path / "c.json"))
    assert back.components == circuit.components and back.faithfulness == circuit.faithfulness
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["format"] == "emoprobe.circuit/1" and data["size"] == circuit.size


def test_overlap_and_bad_inputs(setup, tmp_path):
    a = Circuit("a", "m", [Component.parse("blocks.0.attn.hook_z[1]"),
                           Component.parse("blocks.1.mlp.hook_post[3]")], [1.0, 0.5], 10)
    b = Circuit("b", "m", [Component.parse("blocks.0.attn.hook_z[1]")], [1.0], 10)
    ov = overlap([a, b])
    assert ov.loc["a", "b"] == 0.5 and ov.loc["a", "a"] == 1
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    # what JSON cannot hold (a split-half check with too few scenarios, an infinite error) is
    # written as null, and the file still loads
    c = Circuit("c", "m", [], [], 10, faithfulness={"error": float("inf")},
                info={"stability": {"jaccard": float("nan")}})
    back = Circuit.load(c.save(tmp_path / "nan.json"))
    assert back.faithfulness["error"] is None and back.info["stability"]["jaccard"] is None
    with pytest.raises(CircuitError, match="not a circuit file"):
        Circuit.load(tmp_path / "x.json")
    with pytest.raises(CircuitError, match="no sublayers"):
        ranking(setup[-1], ("sublayers",))


def test_default_sizes_are_a_1_2_5_grid():
    assert default_sizes(396) == (0, 1, 2, 5, 10, 20, 50, 100, 200, 396)
    assert np.all(np.diff(default_sizes(38625)) > 0)
