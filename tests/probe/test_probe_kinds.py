"""Probe kinds: one registry decides what a sweep fits; a registered kind runs end to end."""

from __future__ import annotations

import numpy as np
import pytest

from probe.engine import ProbeFit
from probe.evaluate import EvalConfig
from probe.probe_kinds import PROBE_KINDS, probe_kind, register_probe_kind
from probe.stats import ProbeError
from probe.sweep import probe_store

from .test_sweep import FAST, store  # noqa: F401  (the fixture)


def test_defaults_and_clear_errors():
    assert probe_kind(None, "classification").name == "logistic"
    assert probe_kind(None, "regression").name == "ridge"
    with pytest.raises(ProbeError, match="unknown probe kind 'svm'; choose from .*logistic.*ridge"):
        probe_kind("svm", "classification")
    with pytest.raises(ProbeError, match="fits regression targets.*choose from logistic"):
        probe_kind("ridge", "classification")
    with pytest.raises(ProbeError, match="'classification' or 'regression'"):
        register_probe_kind("x", task="ranking", cross_val=None, fit=None)


def test_default_kind_is_the_same_computation_as_naming_it(store):  # noqa: F811
    a = probe_store(store, target="label", sites="blocks.1.hook_resid_post", poolings=["last"],
                    config=FAST, progress=False)
    b = probe_store(store, target="label", sites="blocks.1.hook_resid_post", poolings=["last"],
                    config=EvalConfig(**{**FAST.__dict__, "probe": "logistic"}), progress=False)
    assert a.attrs["probe"] == b.attrs["probe"] == "logistic"
    assert a["value"].equals(b["value"])


def test_a_registered_kind_is_what_the_sweep_fits(store, monkeypatch):  # noqa: F811
    """A constant-prior 'probe' scores at chance, and the sweep saves its (zero) weights."""
    calls = []

    def cv(X, y, folds, config, site_labels=None):
        calls.append("cv")
        classes, y = np.unique(np.asarray(y), return_inverse=True)
        out = np.full((X.shape[0], len(y), len(classes)), np.nan)
        for train, test in folds:
            out[:, test] = np.bincount(y[train], minlength=len(classes)) / len(train)
        return out

    def fit(X, y, config, site_labels=None):
        calls.append("fit")
        S, d = X.shape[0], X.shape[2]
        classes = np.unique(np.asarray(y))
        K = len(classes)
        return ProbeFit(coef=np.zeros((S, K, d), "float32"), intercept=np.zeros((S, K), "float32"),
                        classes=classes, mean=np.zeros((S, d), "float32"),
                        scale=np.ones((S, d), "float32"), n_iter=np.zeros(S, int),
                        converged=np.ones(S, bool))

    monkeypatch.setitem(PROBE_KINDS, "prior", None)
    register_probe_kind("prior", task="classification", cross_val=cv, fit=fit)
    cfg = EvalConfig(**{**FAST.__dict__, "probe": "prior", "control": False})
    df = probe_store(store, target="label", sites="blocks.1.hook_resid_post", poolings=["last"],
                     config=cfg, progress=False)
    assert df.attrs["probe"] == "prior" and "cv" in calls
    acc = df[(df.estimator == "probe") & (df.metric == "accuracy")]["value"].iloc[0]
    assert acc <= 0.5   # three balanced classes and a prior: no better than guessing
    with pytest.raises(ProbeError, match="fits classification targets"):
        probe_store(store, target="score", task="regression", config=cfg, progress=False)
