"""What the run says about a circuit follows from its numbers."""

from __future__ import annotations

from circuits.assemble import Circuit
from circuits.components import Component
from circuits.verdict import describe, verdict


def _circuit(error, ci, m_k, share_as_close=0.0, jaccard=0.7, size=2, n=100):
    comps = [Component.parse(f"blocks.{i}.attn.hook_z[0]") for i in range(size)]
    f = {"error": error, "error_ci": list(ci), "error_train": error, "error_train_ci": list(ci),
         "max_error": 0.2, "chosen_by": "upper CI", "area_error": 0.3, "area_faithfulness": 0.6,
         "test": 1.0, "ci_low": 0.9, "ci_high": 1.1, "n_test": 10, "M": 10.0, "M_0": 0.0,
         "M_k": m_k, "random": {"n": 10, "median": 0.9, "p05": 0.7, "p95": 1.0,
                                "share_as_close": share_as_close},
         "ablations": {"mean": {"error": error, "error_ci": list(ci)},
                       "zero": {"error": 0.9, "error_ci": [0.8, 1.0]}}}
    info = {"order": "abs", "max_fraction": 0.05,
            "stability": {"k": size, "jaccard": jaccard, "ci_low": 0.5, "ci_high": 0.8,
                          "n_splits": 50, "groups": 10, "stable": jaccard >= 0.6}}
    return Circuit("joy", "m", comps, [1.0] * size, n, f, {"test": 0.0, "ci_low": 0.0,
                                                           "ci_high": 0.0}, info)


def test_a_close_small_stable_circuit_far_from_random_meets_the_targets():
    c = _circuit(0.1, (0.05, 0.15), 9.0)
    v = verdict(c)
    assert v["all"] and v["close_upper_ci"] and not v["close_under_every_ablation"]
    text = "\n".join(describe(c, ("heads",)))
    assert "targets: all met" in text and "the verdict depends on the ablation" in text


def test_overshoot_instability_and_random_closeness_are_named():
    c = _circuit(1.5, (1.2, 1.9), 25.0, share_as_close=0.4, jaccard=0.3, size=10)
    v = verdict(c)
    assert not v["close"] and not v["far_from_random"] and not v["stable"] and not v["small"]
    text = "\n".join(describe(c, ("heads",)))
    assert "OVERSHOOTS" in text and "NOT far from random" in text and "NOT stable" in text
    assert "missed: small, close, far_from_random, stable" in text


def test_close_by_the_point_estimate_only_is_said():
    text = "\n".join(describe(_circuit(0.1, (0.01, 2.2), 9.0), ("heads",)))
    assert "close by the point estimate only (CI reaches 2.20 > 0.2)" in text


def test_the_signed_interval_decides_how_far_the_error_reaches_and_is_printed():
    """Near 0 the percentile CI of |E| can exclude the estimate; the signed one brackets it."""
    c = _circuit(0.05, (0.08, 0.15), 10.5)      # |E| CI above its own estimate, within 0.2
    assert verdict(c)["close_upper_ci"]           # without a signed interval: |E|'s upper bound
    c.faithfulness.update(signed_error=0.05, signed_error_ci=[-0.3, 0.12])
    v = verdict(c)
    assert v["close"] and not v["close_upper_ci"]   # the signed CI reaches 0.3 below the model
    text = "\n".join(describe(c, ("heads",)))
    assert "signed (M_k - M) / (M - M_0) +0.05 [-0.30, +0.12] (> 0 overshoots, < 0 falls short)" in text
    assert "CI reaches 0.30 > 0.2" in text
    c.faithfulness["signed_error_ci"] = [-0.1, 0.15]
    assert verdict(c)["close_upper_ci"]
