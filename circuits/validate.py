"""How well attribution matches activation patching, per component type, and at what cost.

:func:`compare` takes an attribution table and a patching table (the same components, the same
prompts, the same baseline) and reports per component type: Spearman and Pearson between
estimate and truth, Spearman of the magnitudes, top-k recall (the fraction of the k components
with the largest true ``|effect|`` that are also among the k largest estimated; k = 10, 20, 50)
and sign agreement (among components whose true effect is at least 1% of the largest).
:func:`verdicts` turns the table into plain sentences, saying where an estimator fails and
what to use instead.

>>> table = compare(attr.table(), truth.table())  # doctest: +SKIP
>>> print(summary(table, attr.compute, truth.compute))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from circuits.runs import Compute

KS = (10, 20, 50)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When an estimator counts as failing for a component type."""

    recall_k: int = 20
    min_recall: float = 0.8
    min_spearman: float = 0.5


def _corr(fn, x, y) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(fn(x, y)[0])


def recall_at(est: np.ndarray, truth: np.ndarray, k: int) -> float:
    """``|top-k(|est|) & top-k(|truth|)| / k``; NaN when there are no more than k components."""
    if len(truth) <= k:
        return float("nan")
    top = lambda z: set(np.argsort(-np.abs(z), kind="stable")[:k])  # noqa: E731
    return len(top(est) & top(truth)) / k


def compare(attr: pd.DataFrame, truth: pd.DataFrame, *, ks: Sequence[int] = KS,
            signed: bool = True) -> pd.DataFrame:
    """One row per component type (see the module docstring)."""
    merged = attr[["component", "type", "value"]].merge(
        truth[["component", "value"]], on="component", suffixes=("_est", "_true"))
    if merged.empty:
        raise ValueError("the attribution and patching tables share no component")
    rows = []
    for t, d in merged.groupby("type", sort=False):
        x, y = d["value_est"].to_numpy(float), d["value_true"].to_numpy(float)
        big = np.abs(y) >= 0.01 * np.abs(y).max() if len(y) and np.abs(y).max() > 0 else np.zeros(len(y), bool)
        row = {"type": t, "n": len(d),
               "spearman": _corr(spearmanr, x, y) if signed else float("nan"),
               "pearson": _corr(pearsonr, x, y) if signed else float("nan"),
               "spearman_abs": _corr(spearmanr, np.abs(x), np.abs(y)),
               "pearson_abs": _corr(pearsonr, np.abs(x), np.abs(y)),
               "sign_agreement": float(np.mean(np.sign(x[big]) == np.sign(y[big])))
               if signed and big.any() else float("nan")}
        row.update({f"recall@{k}": recall_at(x, y, k) for k in ks})
        rows.append(row)
    return pd.DataFrame(rows)


def compute_row(name: str, compute: Compute, n_components: int | None = None) -> dict:
    return {"method": name, **compute.as_dict(), "components": n_components}


def verdicts(table: pd.DataFrame, estimator: str, th: Thresholds = Thresholds()) -> list[str]:
    """Sentences per type: passes, or fails with the estimator to use instead."""
    out = []
    for _, r in table.iterrows():
        rec = r.get(f"recall@{th.recall_k}", float("nan"))
        rho = r["spearman"] if not np.isnan(r["spearman"]) else r["spearman_abs"]
        fails = (not np.isnan(rec) and rec < th.min_recall) or (not np.isnan(rho) and rho < th.min_spearman)
        stats = (f"recall@{th.recall_k} {_fmt(rec)}, Spearman {_fmt(r['spearman'])}, "
                 f"Pearson {_fmt(r['pearson'])}, n={int(r['n'])}")
        if fails:
            alt = "--estimator ig, or " if estimator != "ig" else ""
            out.append(f"{estimator} FAILS for {r['type']} here ({stats}): rank {r['type']} with "
                       f"{alt}activation patching itself (--validate all patches every one)")
        else:
            out.append(f"{estimator} agrees with patching for {r['type']} ({stats})")
    return out


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def summary(table: pd.DataFrame, estimator: str, attr: Compute, truth: Compute, *,
            n_truth_components: int, n_all_components: int | None = None) -> str:
    """A printable report: the table, the compute of both sides, and the verdicts."""
    cols = ["type", "n", "spearman", "pearson", "spearman_abs", *[c for c in table if c.startswith("recall@")],
            "sign_agreement"]
    lines = [f"validation of {estimator} against activation patching:",
             table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    ratio_t = truth.seconds / attr.seconds if attr.seconds else float("nan")
    ratio_c = truth.cost / attr.cost if attr.cost else float("nan")
    lines.append(f"compute: {estimator} {attr.seconds:.1f} s ({attr.forward_passes} forward + "
                 f"{attr.backward_passes} backward passes); patching {n_truth_components} "
                 f"components {truth.seconds:.1f} s ({truth.forward_passes} forward passes); "
                 f"patching / {estimator}: {ratio_t:.1f}x wall time, {ratio_c:.1f}x rows x blocks")
    if n_all_components and n_all_components > n_truth_components:
        scale = n_all_components / n_truth_components
        lines.append(f"patching all {n_all_components} components would cost about "
                     f"{ratio_c * scale:.0f}x the attribution (extrapolated from the sample)")
    lines += [f"- {v}" for v in verdicts(table, estimator)]
    return "\n".join(lines)
