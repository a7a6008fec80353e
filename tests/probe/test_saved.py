"""Saved probes: safetensors + JSON round trip, predictions and unit directions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probe.saved import load_probe, save_probes
from probe.sites import Site


def _arrays(rng, L, K, d):
    coef = rng.normal(size=(L, K, d))
    coef = coef - coef.mean(1, keepdims=True) if K > 1 else coef  # softmax rows sum to 0
    return {"coef": coef, "intercept": rng.normal(size=(L, K)),
            "mean": rng.normal(size=(L, d)), "scale": rng.uniform(1, 2, (L, d))}


def test_round_trip_and_predictions(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"last": _arrays(rng, 3, 3, 8), "content-mean": _arrays(rng, 3, 3, 8)}
    path = save_probes(tmp_path, "hook_resid_post", [4, 5, 6], arrays,
                       {"task": "classification", "classes": ["anger", "joy", "sadness"],
                        "model_id": "m", "n_train": 10})
    assert path.name == "hook_resid_post.safetensors" and path.read_bytes()[:8] != b"\x80\x04"
    assert json.loads(path.with_suffix(".json").read_text())["poolings"] == ["last",
                                                                             "content-mean"]
    probe = load_probe(tmp_path, "blocks.5.hook_resid_post", pooling="content-mean")
    assert probe.site == Site("hook_resid_post", 5) and probe.meta["model_id"] == "m"
    np.testing.assert_allclose(probe.coef, arrays["content-mean"]["coef"][1], rtol=1e-6)
    assert load_probe(tmp_path, "hook_resid_post", 5, "content-mean").coef.shape == (3, 8)
    X = rng.normal(size=(20, 8))
    logits = X @ probe.coef.T + probe.intercept
    np.testing.assert_allclose(probe.predict_proba(X).sum(1), 1)
    assert probe.predict(X).tolist() == np.array(probe.classes)[logits.argmax(1)].tolist()
    eps = 4 * np.finfo(np.float32).eps  # stored as float32
    np.testing.assert_allclose(np.linalg.norm(probe.directions, axis=1), 1, rtol=eps)
    joy = probe.direction("joy")
    np.testing.assert_allclose(joy, probe.coef[1] / np.linalg.norm(probe.coef[1]), rtol=eps)
    with pytest.raises(ValueError, match="not one of the classes"):
        probe.direction("fear")
    with pytest.raises(ValueError, match="has 5 features; this probe reads 8"):
        probe.predict(X[:, :5])


def test_regression_and_embedding_probes(tmp_path):
    rng = np.random.default_rng(1)
    save_probes(tmp_path, "hook_embed", None, {"last": _arrays(rng, 1, 1, 6)},
                {"task": "regression", "classes": None})
    probe = load_probe(tmp_path, "hook_embed")
    assert probe.site == Site("hook_embed") and probe.classes is None
    X = rng.normal(size=(4, 6))
    assert probe.predict(X).shape == (4,)
    assert probe.direction() @ probe.coef[0] > 0
    with pytest.raises(ValueError, match="classification probe"):
        probe.predict_proba(X)


def test_clear_errors(tmp_path):
    rng = np.random.default_rng(2)
    save_probes(tmp_path, "hook_resid_post", [0, 1], {"last": _arrays(rng, 2, 2, 4),
                                                      "mean": _arrays(rng, 2, 2, 4)},
                {"task": "classification", "classes": ["neg", "pos"]})
    with pytest.raises(ValueError, match=r"choose one of \['last', 'mean'\]"):
        load_probe(tmp_path, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"has layers \[0, 1\]"):
        load_probe(tmp_path, "blocks.3.hook_resid_post", pooling="last")
    with pytest.raises(FileNotFoundError, match=r"saved: \['hook_resid_post'\]"):
        load_probe(tmp_path, "hook_embed", pooling="last")
    with pytest.raises(ValueError, match="disagree"):
        load_probe(tmp_path, "blocks.0.hook_resid_post", 1, "last")
