"""Cluster-bootstrap confidence intervals for measurements made on the same items.

Everything ``probe behave`` compares (probe vs zero-shot, with vs without a system prompt or
an emotional stimulus) is measured on the same items, so one set of resampling weights serves
both sides and their difference: paired intervals. Groups (scenarios, dialogues, documents),
not rows, are resampled, as in the probe sweep (:func:`probe.stats.group_bootstrap_weights`);
the same seed gives the same resamples as the sweep's.

>>> import numpy as np
>>> w = Bootstrap.of(groups=np.arange(40) // 2, n_boot=200, seed=0)
>>> v, lo, hi = w.mean(np.r_[np.ones(30), np.zeros(10)])
>>> float(v), bool(lo < v < hi)
(0.75, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probe.stats import Task, group_bootstrap_weights, percentile_ci, score


@dataclass(frozen=True)
class Bootstrap:
    """Row weights ``[1 + B, n]``: row 0 all ones (the estimate), rows 1.. cluster resamples."""

    weights: np.ndarray
    ci: float = 0.95

    @classmethod
    def of(cls, groups: Sequence, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
           ) -> Bootstrap:
        ones = np.ones((1, len(groups)))
        if n_boot <= 0:
            return cls(ones, ci)
        return cls(np.concatenate([ones, group_bootstrap_weights(groups, n_boot, seed)]), ci)

    def subset(self, rows: np.ndarray) -> Bootstrap:
        """The same resamples restricted to some rows (e.g. items a parser could read)."""
        return Bootstrap(self.weights[:, rows], self.ci)

    def interval(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, ci_low, ci_high)`` from ``[1 + B, ...]`` statistics (NaN CI without B)."""
        if len(samples) == 1:
            nan = np.full(samples.shape[1:], np.nan)
            return samples[0], nan, nan
        lo, hi = percentile_ci(samples[1:], self.ci)
        return samples[0], lo, hi

    def mean(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted mean of ``x`` (``[n]`` or ``[n, S]``) over rows, with its interval."""
        x = np.asarray(x, dtype=float)
        flat = x.reshape(len(x), -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = (self.weights @ flat) / self.weights.sum(1, keepdims=True)
        value, lo, hi = self.interval(samples)
        shape = x.shape[1:]
        return value.reshape(shape), lo.reshape(shape), hi.reshape(shape)

    def metrics(self, task: Task, y: np.ndarray, pred: np.ndarray
                ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:func:`probe.stats.score` metrics of ``[S, n, K]`` probabilities (classification,
        ``y`` class codes) or ``[S, n]`` predictions (regression), with intervals."""
        out = score(task, y, pred, self.weights)
        return {m: self.interval(s) for m, s in out.items()}

    def auroc(self, label: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """AUROC of ``scores`` (``[S, n]``) for a binary ``label`` (``[n]``), with intervals;
        NaN when a side is empty."""
        label = np.asarray(label).astype(int)
        s = np.asarray(scores, dtype=float)
        pred = np.stack([-s, s], -1)  # two-class "probabilities": only their order matters
        return self.interval(score("classification", label, pred, self.weights)["auroc"])
