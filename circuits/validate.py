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
from scipy.stats import hypergeom, pearsonr, spearmanr

from circuits.runs import Compute

KS = (10, 20, 50)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When an estimator counts as failing for a component type."""

    recall_k: int = 20
    min_recall: float = 0.8
    min_recall_low: float = 0.7  # the lower 95% CI bound, where the CI was bootstrapped
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


def verdicts(table: pd.DataFrame, estimator: str, th: Thresholds = Thresholds(), *,
             alternative: str | None = None) -> list[str]:
    """Sentences per type: passes, or fails with what to do instead (``alternative``: advice in
    place of the node estimators')."""
    out = []
    for _, r in table.iterrows():
        key = f"recall@{th.recall_k}"
        rec = r.get(key, float("nan"))
        low = r.get(f"{key}_low", float("nan"))
        rho = r["spearman"] if not np.isnan(r["spearman"]) else r["spearman_abs"]
        bad_rec = (low < th.min_recall_low) if not np.isnan(low) else (
            not np.isnan(rec) and rec < th.min_recall)
        fails = bad_rec or (not np.isnan(rho) and rho < th.min_spearman)
        ci = (f" [{_fmt(low)}, {_fmt(r.get(f'{key}_high'))}]" if not np.isnan(low) else "")
        rand = r.get(f"{key}_random_p95", float("nan"))
        stats = (f"{key} {_fmt(rec)}{ci}"
                 + (f" (random p95 {_fmt(rand)})" if not np.isnan(rand) else "")
                 + f", Spearman {_fmt(r['spearman'])}, Pearson {_fmt(r['pearson'])}, n={int(r['n'])}")
        if fails:
            alt = (", or try --estimator ig and validate it too (on SmolLM2's sublayers it "
                   "helped in one case of four)") if estimator != "ig" else ""
            advice = alternative or (f"rank {r['type']} by activation patching itself "
                                     f"(--validate all patches every one){alt}")
            out.append(f"{estimator} FAILS for {r['type']} here ({stats}): {advice}")
        else:
            out.append(f"{estimator} agrees with patching for {r['type']} ({stats})")
    return out


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def summary(table: pd.DataFrame, estimator: str, attr: Compute, truth: Compute, *,
            n_truth_components: int, n_all_components: int | None = None,
            alternative: str | None = None) -> str:
    """A printable report: the table, the compute of both sides, and the verdicts."""
    cols = ["type", "n", "spearman", "pearson", "spearman_abs",
            *[c for c in table if c.startswith("recall@") and c[7:].isdigit()], "sign_agreement"]
    cols += [c for c in ("false_negatives",) if c in table]
    lines = [f"validation of {estimator} against activation patching:",
             table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    if "spearman_low" in table:
        lines.append("95% bootstrap CIs over prompts (random ranking's 95th percentile of recall):")
        for _, r in table.iterrows():
            parts = [f"Spearman {_fmt(r['spearman'])} [{_fmt(r['spearman_low'])}, "
                     f"{_fmt(r['spearman_high'])}]"]
            parts += [f"recall@{k} {_fmt(r[f'recall@{k}'])} [{_fmt(r[f'recall@{k}_low'])}, "
                      f"{_fmt(r[f'recall@{k}_high'])}] (random {_fmt(r[f'recall@{k}_random_p95'])})"
                      for k in KS if f"recall@{k}_low" in r and not np.isnan(r[f"recall@{k}"])]
            sampled = f"; {r['sampled']}" if "sampled" in r and r["sampled"] != "all" else ""
            lines.append(f"  {r['type']} (n={int(r['n'])}{sampled}): " + ", ".join(parts))
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
    lines += [f"- {v}" for v in verdicts(table, estimator, alternative=alternative)]
    return "\n".join(lines)


# -------------------------------------------------------------- what to patch, and CIs
def random_recall_p95(n: int, k: int) -> float:
    """95th percentile of recall@k of a random ranking of ``n`` components (hypergeometric)."""
    if n <= k:
        return float("nan")
    return float(hypergeom.ppf(0.95, n, k, k)) / k


def select(names: Sequence[str], scores: np.ndarray, layers: Sequence[int], n: int | None, *,
           seed: int = 0) -> tuple[list[int], str]:
    """Which components of one type to patch: all (``n`` None or at least their number), else
    the top ``n`` by ``|score|`` (the false-negative check looks beside them) plus ``n`` drawn
    at random, stratified by layer, from the rest. Returns indices and how they were chosen."""
    total = len(names)
    if n is None or total <= 2 * n:
        return list(range(total)), "all"
    order = np.argsort(-np.abs(np.asarray(scores, float)), kind="stable")
    top = order[:n]
    rest = order[n:]
    rng = np.random.default_rng(seed)
    by_layer: dict[int, list[int]] = {}
    for i in rest:
        by_layer.setdefault(int(layers[i]), []).append(int(i))
    keys = sorted(by_layer)
    share = np.array([len(by_layer[k]) for k in keys], float)
    quota = np.floor(share / share.sum() * n).astype(int)
    for j in np.argsort(-(share / share.sum() * n - quota))[: n - quota.sum()]:
        quota[j] += 1
    pick = [int(i) for k, q in zip(keys, quota) for i in rng.choice(by_layer[k], q, replace=False)]
    return sorted(map(int, top)) + sorted(pick), f"top {n} + {n} random (stratified by layer) of {total}"


def compare_ci(est: np.ndarray, truth: np.ndarray, types: Sequence[str], groups=None, *,
               ks: Sequence[int] = KS, n_boot: int = 200, seed: int = 0,
               top: Sequence[bool] | None = None) -> pd.DataFrame:
    """Bootstrap CIs over prompts (scenario groups) of recall@k and Spearman, per type.

    ``est`` and ``truth`` are ``[rows, components]`` per-prompt estimated and patched effects
    of the same components. ``top`` marks components chosen as the estimator's top (the rest a
    random sample): ``false_negatives`` counts sampled ones whose true ``|effect|`` reaches the
    k-th largest (k = 20, or the number of top components if fewer), i.e. big effects the ranker
    put outside its top.
    """
    est, truth = np.asarray(est, float), np.asarray(truth, float)
    keys = np.asarray(groups if groups is not None else np.arange(len(est))).astype(str)
    uniq, inv = np.unique(keys, return_inverse=True)
    rng = np.random.default_rng(seed)
    w = (rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)[:, inv]
         if len(uniq) > 1 else np.zeros((0, len(est))))
    types = np.asarray(types)
    rows = []
    for t in dict.fromkeys(types.tolist()):
        cols = types == t
        e, y = est[:, cols], truth[:, cols]
        boots = [((wi @ e) / wi.sum(), (wi @ y) / wi.sum()) for wi in w]
        row = {"type": t}
        for k in ks:
            vals = [recall_at(a, b, k) for a, b in boots]
            row[f"recall@{k}_low"], row[f"recall@{k}_high"] = _q(vals)
            row[f"recall@{k}_random_p95"] = random_recall_p95(int(cols.sum()), k)
        row["spearman_low"], row["spearman_high"] = _q([_corr(spearmanr, a, b) for a, b in boots])
        if top is not None:
            tp = np.asarray(top)[cols]
            mag = np.abs(y.mean(0))
            kk = min(20, int(tp.sum())) if tp.any() else 20
            thr = np.sort(mag)[-min(kk, len(mag))] if len(mag) else np.inf
            row["false_negatives"] = int(np.sum(~tp & (mag >= thr))) if (~tp).any() else 0
        rows.append(row)
    return pd.DataFrame(rows)


def _q(vals) -> tuple[float, float]:
    v = np.asarray(vals, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [0.025, 0.975])
    return float(lo), float(hi)
