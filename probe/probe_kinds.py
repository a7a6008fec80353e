"""Probe kinds: what a sweep fits at each site, one entry per kind.

A probe kind is two functions and a task:

* ``cross_val(X, y, folds, config, site_labels)`` -> out-of-fold predictions at every site:
  ``[S, n, K]`` class probabilities (classes in sorted order) for ``"classification"``, ``[S, n]``
  predicted values for ``"regression"``; NaN for rows in no test fold.
* ``fit(X, y, config, site_labels)`` -> a :class:`probe.engine.ProbeFit` on all rows, weights in
  raw activation space (``X @ coef.T + intercept`` are the logits or predictions), which a sweep
  saves as each site's probe and direction.

``X`` is ``[S, n, d]`` (numpy or torch, any float dtype); ``config`` is the sweep's
:class:`probe.evaluate.EvalConfig` (``C``, ``alpha``, ``tol``, ``max_iter``, ``device``,
``site_batch``). Everything else a sweep does (folds, bootstrap CIs, the control task and
selectivity, baselines, held-out stores, saved probes, figures) is the same for every kind.

Built in: ``logistic`` (multinomial logistic regression, L2, standardised features; the default
for categorical targets) and ``ridge`` (the default for continuous ones), both solved for all
sites and folds at once by :mod:`probe.engine`. Another kind is one :func:`register_probe_kind`
call; ``probe sweep --probe NAME`` and ``EvalConfig(probe=NAME)`` then use it.

>>> sorted(PROBE_KINDS)
['logistic', 'ridge']
>>> probe_kind(None, "regression").name, probe_kind("logistic", "classification").name
('ridge', 'logistic')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from probe.engine import ProbeFit, fit_logistic_cv, fit_probes, fit_ridge_cv
from probe.stats import ProbeError, Task


@dataclass(frozen=True)
class ProbeKind:
    """One kind of linear probe (see the module docstring)."""

    name: str
    task: Task
    cross_val: Callable[..., np.ndarray]
    fit: Callable[..., ProbeFit]
    description: str = ""


PROBE_KINDS: dict[str, ProbeKind] = {}
#: The kind a task gets when none is named.
DEFAULT_KIND: dict[str, str] = {"classification": "logistic", "regression": "ridge"}


def register_probe_kind(name: str, *, task: Task, cross_val: Callable[..., np.ndarray],
                        fit: Callable[..., ProbeFit], description: str = "") -> ProbeKind:
    """Register a probe kind under ``name`` (replacing one of that name) and return it."""
    if task not in DEFAULT_KIND:
        raise ProbeError(f"a probe kind's task is 'classification' or 'regression', got {task!r}")
    kind = ProbeKind(name, task, cross_val, fit, description)
    PROBE_KINDS[name] = kind
    return kind


def probe_kind(name: str | None, task: Task) -> ProbeKind:
    """The kind called ``name`` (None: the task's default), checked against the task."""
    name = name or DEFAULT_KIND[task]
    if name not in PROBE_KINDS:
        raise ProbeError(f"unknown probe kind {name!r}; choose from {', '.join(sorted(PROBE_KINDS))} "
                         "(or register one with probe.probe_kinds.register_probe_kind)")
    kind = PROBE_KINDS[name]
    if kind.task != task:
        fits = sorted(k for k, v in PROBE_KINDS.items() if v.task == task)
        raise ProbeError(f"probe kind {name!r} fits {kind.task} targets, but this target is a "
                         f"{task} target; choose from {', '.join(fits)}")
    return kind


def _logistic_cv(X, y, folds, config, site_labels=None) -> np.ndarray:
    return fit_logistic_cv(X, y, folds, C=config.C, tol=config.tol, device=config.device,
                           max_iter=config.max_iter, site_batch=config.site_batch,
                           site_labels=site_labels).predictions


def _ridge_cv(X, y, folds, config, site_labels=None) -> np.ndarray:
    return fit_ridge_cv(X, np.asarray(y, float), folds, alpha=config.alpha, device=config.device,
                        site_batch=config.site_batch).predictions[..., 0]


def _full(task: Task):
    def fit(X, y, config, site_labels=None) -> ProbeFit:
        return fit_probes(X, y, task=task, C=config.C, alpha=config.alpha, tol=config.tol,
                          max_iter=config.max_iter, device=config.device,
                          site_batch=config.site_batch, site_labels=site_labels)
    return fit


register_probe_kind("logistic", task="classification", cross_val=_logistic_cv,
                    fit=_full("classification"),
                    description="multinomial logistic regression, L2 (C), standardised features")
register_probe_kind("ridge", task="regression", cross_val=_ridge_cv, fit=_full("regression"),
                    description="ridge regression (alpha), standardised features")
