"""One call from cached activations to the tidy results table of a probe sweep.

:func:`evaluate` fits the probe at every site on group-safe folds, scores the pooled
out-of-fold predictions with cluster-bootstrap CIs, and adds the control task (selectivity),
the lexical baseline and chance. The pieces are public for notebooks:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(["neg", "pos"], 30); groups = np.arange(60) // 2
>>> X = rng.normal(size=(1, 60, 16)) + (y == "pos")[None, :, None]  # one site
>>> cfg = EvalConfig(n_bootstrap=200)
>>> folds = make_folds(y, groups, "classification", cfg)
>>> proba = cross_val_predict(X, y, folds, task="classification", config=cfg)  # [1, 60, 2]
>>> value, low, high = score_with_ci("classification", y, proba, groups, cfg)["accuracy"]
>>> bool(low[0] <= value[0] <= high[0])
True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from probe.baselines import control_labels, key_coverage, last_word_keys, lexical_predictions
from probe.engine import fit_logistic_cv, fit_ridge_cv
from probe.stats import (
    FoldList,
    ProbeError,
    ProbeWarning,
    Task,
    chance_scores,
    group_bootstrap_weights,
    group_stratified_folds,
    percentile_ci,
    score,
)

SiteKey = tuple[str, int | None]
COLUMNS = ("site", "layer", "estimator", "metric", "value", "ci_low", "ci_high", "n_folds", "n")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How a sweep is evaluated; saved next to the results it produced.

    Attributes:
        n_folds: Group k-fold splits.
        C: Inverse L2 strength of the logistic probe on standardised features. 0.05 is the
            protocol of the FACTS.md reference numbers (SEV peak 0.933); at d=576 and a few
            hundred to a few thousand rows, C=1 nearly interpolates the training folds.
        alpha: Ridge L2 strength for continuous targets; 10 = 1/(2C), the same penalty per
            unit of squared error as C=0.05 puts per unit of log-loss.
        n_bootstrap: Cluster-bootstrap resamples for CIs (0: no CIs).
        seed: Seed of folds, bootstrap and control labels (chunked calls agree).
        control: Fit the control task and report selectivity.
        lexical: Report the TF-IDF baseline (needs texts).
        device: Torch device of the probe solve.
        ci: Confidence level of the percentile intervals.
        fold_fallback: ``"error"`` or ``"reduce"`` when the data support fewer folds.
        tol: Solver tolerance (scikit-learn's criterion; sklearn's default is 1e-4).
        max_iter: Solver iteration cap.
        site_batch: Sites solved at a time (None: all); bounds peak memory.
    """

    n_folds: int = 5
    C: float = 0.05
    alpha: float = 10.0
    n_bootstrap: int = 1000
    seed: int = 0
    control: bool = True
    lexical: bool = True
    device: str = "cpu"
    ci: float = 0.95
    fold_fallback: Literal["error", "reduce"] = "error"
    tol: float = 1e-5
    max_iter: int = 300
    site_batch: int | None = None


# ---------------------------------------------------------------------------- building blocks


def make_folds(y: Sequence, groups: Sequence, task: Task, config: EvalConfig) -> FoldList:
    """The sweep's folds: :func:`probe.stats.group_stratified_folds` with the config's knobs."""
    return group_stratified_folds(y, groups, config.n_folds, config.seed, task=task,
                                  fallback=config.fold_fallback)


def cross_val_predict(X, y: Sequence, folds: FoldList, *, task: Task,
                      config: EvalConfig) -> np.ndarray:
    """Out-of-fold predictions at every site: ``[S, n, K]`` probabilities (classes in sorted
    order) or ``[S, n]`` predicted values."""
    if task == "classification":
        return fit_logistic_cv(X, y, folds, C=config.C, tol=config.tol, device=config.device,
                               max_iter=config.max_iter, site_batch=config.site_batch).predictions
    return fit_ridge_cv(X, np.asarray(y, float), folds, alpha=config.alpha, device=config.device,
                        site_batch=config.site_batch).predictions[..., 0]


def score_with_ci(task: Task, y: Sequence, pred: np.ndarray, groups: Sequence,
                  config: EvalConfig) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{metric: (value, ci_low, ci_high)}``, each ``[S]``: pooled out-of-fold score and its
    cluster-bootstrap percentile interval (NaN without resamples)."""
    samples = _scores(task, y, pred, groups, config)
    return {m: (s[0], *_ci(s[1:], config)) for m, s in samples.items()}


def per_fold_scores(task: Task, y: Sequence, pred: np.ndarray, folds: FoldList) -> pd.DataFrame:
    """Each metric on each test fold (pred: ``[S, n, K]`` or ``[S, n]``): a table with columns
    ``site_index, fold, metric, value``."""
    masks = np.zeros((len(folds), len(y)))
    for f, (_, test) in enumerate(folds):
        masks[f, test] = 1
    out = score(task, _codes(y, task), pred, masks)
    return pd.DataFrame([{"site_index": s, "fold": f, "metric": m, "value": v[f, s]}
                         for m, v in out.items() for f in range(len(folds))
                         for s in range(v.shape[1])])


def _codes(y: Sequence, task: Task) -> np.ndarray:
    y = np.asarray(y)
    return np.unique(y, return_inverse=True)[1] if task == "classification" else y.astype(float)


def _scores(task, y, pred, groups, config) -> dict[str, np.ndarray]:
    """``{metric: [1 + B, S]}``: row 0 is the pooled score, rows 1.. the bootstrap."""
    weights = np.ones((1, len(y)))
    if config.n_bootstrap:
        boot = group_bootstrap_weights(groups, config.n_bootstrap, config.seed)
        weights = np.concatenate([weights, boot])
    return score(task, _codes(y, task), pred, weights)


def _ci(samples: np.ndarray, config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    if len(samples) == 0:
        nan = np.full(samples.shape[1], np.nan)
        return nan, nan
    return percentile_ci(samples, config.ci)


# ------------------------------------------------------------------------------- evaluate


def evaluate(
    X,
    *,
    y: Sequence,
    groups: Sequence,
    texts: Sequence[str] | None,
    site_keys: Sequence[SiteKey],
    task: Task,
    config: EvalConfig = EvalConfig(),
    include_text_baselines: bool = True,
    control_keys: Sequence | None = None,
) -> pd.DataFrame:
    """Probe every site and return the tidy results table.

    Args:
        X: ``[S, n, d]`` pooled activations (numpy or torch), site s described by
            ``site_keys[s]``. For big models pass a few sites per call with
            ``include_text_baselines=False`` and add :func:`text_baselines` once: folds,
            bootstrap resamples and control labels depend only on the seed, so chunks agree.
        y: n class labels (classification) or floats (regression).
        groups: n group ids; no group is ever in both train and test.
        texts: n texts, for the lexical baseline and the default control keys.
        site_keys: ``(site, layer)`` per site, e.g. ``("hook_resid_post", 3)`` or
            ``("hook_embed", None)``.
        task: ``"classification"`` or ``"regression"``.
        config: See :class:`EvalConfig`.
        include_text_baselines: Add lexical and chance rows.
        control_keys: Surface key per row for the control task (default: last word of texts).

    Returns:
        One row per (site, layer, estimator, metric); columns ``site, layer, estimator,
        metric, value, ci_low, ci_high, n_folds, n`` (see ``probe.results``).

    Raises:
        ProbeError: Mismatched lengths, NaN/inf in X (naming sites and rows), NaN targets, one
            class, too few groups for the folds, ...
    """
    y, groups = _check_inputs(X, y, groups, texts, site_keys, task, config, control_keys)
    folds = make_folds(y, groups, task, config)
    check_finite(X, site_keys)
    probe = _scores(task, y, cross_val_predict(X, y, folds, task=task, config=config),
                    groups, config)
    n = len(y)
    rows = _rows("probe", probe, site_keys, config, len(folds), n)
    fake = _control_task(y, texts, control_keys, folds, task, config) if config.control else None
    if fake is not None:
        control = _scores(task, fake, cross_val_predict(X, fake, folds, task=task,
                                                        config=config), groups, config)
        rows += _rows("control", control, site_keys, config, len(folds), n)
        main = "accuracy" if task == "classification" else "r2"
        # R^2 is unbounded below: a control probe on unseen keys can score far under 0, which
        # would inflate selectivity past the probe's own R^2. Credit it with no less than
        # predicting the mean (R^2 = 0, the chance level). Accuracy is used as is (H&L 2019).
        floor = control[main] if task == "classification" else np.maximum(control[main], 0.0)
        selectivity = {"selectivity": probe[main] - floor}
        rows += _rows("probe", selectivity, site_keys, config, len(folds), n)
    table = _table(rows)
    if include_text_baselines:
        extra = text_baselines(y=y, groups=groups, texts=texts, task=task, config=config)
        table = pd.concat([table, extra], ignore_index=True)
    return table


def _control_task(y, texts, control_keys, folds, task, config) -> np.ndarray | None:
    """Control labels, or None (with a ProbeWarning) when the keys cannot support them."""
    keys = last_word_keys(texts) if control_keys is None else np.asarray(control_keys)
    try:
        fake = control_labels(keys, y, folds if task == "classification" else None, config.seed)
    except ProbeError as err:
        warnings.warn(f"control task skipped (no control/selectivity rows): {err}",
                      ProbeWarning, stacklevel=3)
        return None
    coverage = key_coverage(keys, folds)
    if coverage < 0.2:
        warnings.warn(f"control task is weak: only {coverage:.0%} of test rows have a control "
                      "key seen in training, so control scores sit near chance whatever the "
                      "representation", ProbeWarning, stacklevel=3)
    return fake


def text_baselines(*, y: Sequence, groups: Sequence, texts: Sequence[str] | None, task: Task,
                   config: EvalConfig = EvalConfig()) -> pd.DataFrame:
    """Lexical (if ``config.lexical``) and chance rows, which do not depend on activations."""
    y, groups = np.asarray(y), np.asarray(groups)
    rows = []
    if config.lexical:
        if texts is None:
            raise ProbeError("the lexical baseline needs texts; pass texts or lexical=False")
        folds = make_folds(y, groups, task, config)
        pred = lexical_predictions(texts, y, folds, task)
        rows += _rows("lexical", _scores(task, y, pred[None], groups, config), [(None, None)],
                      config, len(folds), len(y))
    chance = {m: np.array([[v]]) for m, v in chance_scores(y, task).items()}
    rows += _rows("chance", chance, [(None, None)], config, None, n=len(y))
    return _table(rows)


def _rows(estimator, samples: dict, site_keys, config, n_folds, n) -> list[dict]:
    rows = []
    for metric, s in samples.items():
        lo, hi = _ci(s[1:], config)
        for i, (site, layer) in enumerate(site_keys):
            rows.append({"site": site, "layer": layer, "estimator": estimator, "metric": metric,
                         "value": float(s[0, i]), "ci_low": float(lo[i]),
                         "ci_high": float(hi[i]), "n_folds": n_folds, "n": n})
    return rows


def _table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["site"] = df["site"].astype(object).where(df["site"].notna(), None)
    for col in ("layer", "n_folds", "n"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    return df


# ----------------------------------------------------------------------------- validation


def _check_inputs(X, y, groups, texts, site_keys, task, config, control_keys):
    if task not in ("classification", "regression"):
        raise ProbeError(f"task must be 'classification' or 'regression', got {task!r}")
    if len(X.shape) != 3:
        raise ProbeError(f"X must be [sites, samples, features], got shape {tuple(X.shape)}")
    n = X.shape[1]
    lengths = {"y": len(y), "groups": len(groups), "site_keys": len(site_keys)}
    if texts is not None:
        lengths["texts"] = len(texts)
    if control_keys is not None:
        lengths["control_keys"] = len(control_keys)
    expected = {**{k: n for k in lengths}, "site_keys": X.shape[0]}
    bad = {k: v for k, v in lengths.items() if v != expected[k]}
    if bad:
        raise ProbeError(f"X is {tuple(X.shape)} (sites, samples, features) but got lengths "
                         f"{bad}; expected {({k: expected[k] for k in bad})}")
    if texts is None and ((config.control and control_keys is None) or config.lexical):
        raise ProbeError("texts are needed for the lexical baseline and default control keys")
    y = np.asarray(y)
    if task == "classification" and y.dtype.kind == "f":
        raise ProbeError("float targets with task='classification'; pass labels or ints")
    return y, np.asarray(groups)


def check_finite(X, site_keys: Sequence[SiteKey]) -> None:
    """Raise :class:`ProbeError` naming the sites and rows of X that hold NaN or inf."""
    problems = []
    for s in range(X.shape[0]):
        Xs = X[s]
        if isinstance(Xs, torch.Tensor):
            ok = torch.isfinite(Xs).all(-1).cpu().numpy()
        else:
            ok = np.isfinite(np.asarray(Xs)).all(-1)
        rows = np.flatnonzero(~ok)
        if len(rows):
            site, layer = site_keys[s]
            name = site if layer is None else f"blocks.{layer}.{site}"
            problems.append(f"{name} (rows {rows[:5].tolist()}{', ...' if len(rows) > 5 else ''})")
    if problems:
        raise ProbeError(f"X holds NaN or inf at {len(problems)} site(s): "
                         f"{'; '.join(problems[:5])}. fp16 overflow? store in float32")
