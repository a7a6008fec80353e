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

from probe.baselines import (
    control_labels,
    key_coverage,
    last_word_keys,
    lexical_predictions,
    prior_predictions,
    same_labelling,
)
from probe.probe_kinds import probe_kind
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
COLUMNS = ("site", "layer", "evaluation", "estimator", "metric", "value", "ci_low", "ci_high",
           "n_folds", "n")


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
        probe: The probe kind (:mod:`probe.probe_kinds`; None: ``logistic`` for categorical
            targets, ``ridge`` for continuous ones).
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
    probe: str | None = None


# ---------------------------------------------------------------------------- building blocks


def make_folds(y: Sequence, groups: Sequence, task: Task, config: EvalConfig) -> FoldList:
    """The sweep's folds: :func:`probe.stats.group_stratified_folds` with the config's knobs."""
    return group_stratified_folds(y, groups, config.n_folds, config.seed, task=task,
                                  fallback=config.fold_fallback)


def cross_val_predict(X, y: Sequence, folds: FoldList, *, task: Task, config: EvalConfig,
                      site_labels: Sequence[str] | None = None) -> np.ndarray:
    """Out-of-fold predictions at every site: ``[S, n, K]`` probabilities (classes in sorted
    order) or ``[S, n]`` predicted values; NaN for rows in no test fold. ``site_labels`` name
    the sites in the solver's convergence warnings."""
    return probe_kind(config.probe, task).cross_val(X, y, folds, config, site_labels)


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


def _scored(folds: FoldList, n: int) -> np.ndarray:
    """Rows that some fold tests (all rows under k-fold; the test part of a split)."""
    mask = np.zeros(n, dtype=bool)
    for _, test in folds:
        mask[np.asarray(test, dtype=int)] = True
    return mask


def _scores(task, y, pred, groups, config, scored=None) -> dict[str, np.ndarray]:
    """``{metric: [1 + B, S]}``: row 0 is the pooled score, rows 1.. the bootstrap over the
    groups of the scored rows (default: every row)."""
    scored = np.ones(len(y), dtype=bool) if scored is None else scored
    weights = scored[None].astype(np.float64)
    if config.n_bootstrap:
        boot = np.zeros((config.n_bootstrap, len(y)))
        boot[:, scored] = group_bootstrap_weights(np.asarray(groups)[scored],
                                                  config.n_bootstrap, config.seed)
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
    split: tuple[Sequence[int], Sequence[int]] | None = None,
    site_labels: Sequence[str] | None = None,
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
        control_keys: Surface key per row for the control task (default: the last word of
            each text; see :func:`probe.baselines.control_keys` for the key of a pooling).
        split: ``(train_rows, test_rows)``: fit once on the train rows and score the test
            rows (``evaluation`` ``"heldout"``; rows in neither are ignored), instead of group
            k-fold over all rows (``"cv"``). Bootstrap CIs resample the test rows' groups.
        site_labels: A name per site for messages (default ``blocks.{layer}.{site}``).

    Returns:
        One row per (site, layer, estimator, metric); columns ``site, layer, evaluation,
        estimator, metric, value, ci_low, ci_high, n_folds, n`` (see ``probe.results``).

    Raises:
        ProbeError: Mismatched lengths, NaN/inf in X (naming sites and rows), NaN targets, one
            class, too few groups for the folds, a split that leaks groups, ...
    """
    y, groups = _check_inputs(X, y, groups, texts, site_keys, task, config, control_keys)
    folds = _folds(y, groups, task, config, split)
    check_finite(X, site_keys)
    scored, evaluation = _scored(folds, len(y)), "cv" if split is None else "heldout"
    labels = list(site_labels) if site_labels is not None else [_name(k) for k in site_keys]
    fit = {"folds": folds, "task": task, "config": config}
    probe = _scores(task, y, cross_val_predict(X, y, **fit, site_labels=labels), groups, config,
                    scored)
    meta = {"evaluation": evaluation, "n_folds": len(folds) if split is None else None,
            "n": int(scored.sum())}
    rows = _rows("probe", probe, site_keys, config, **meta)
    fake = _control_task(y, texts, control_keys, folds, task, config) if config.control else None
    if fake is not None:
        pred = cross_val_predict(X, fake, **fit, site_labels=[f"{s}, control task" for s in labels])
        control = _scores(task, fake, pred, groups, config, scored)
        rows += _rows("control", control, site_keys, config, **meta)
        selectivity = _selectivity(task, probe, control, y, fake, folds, groups, config, scored)
        rows += _rows("probe", {"selectivity": selectivity}, site_keys, config, **meta)
    table = _table(rows)
    if include_text_baselines:
        extra = text_baselines(y=y, groups=groups, texts=texts, task=task, config=config,
                               split=split)
        table = pd.concat([table, extra], ignore_index=True)
    return table


def _folds(y, groups, task, config, split) -> FoldList:
    if split is None:
        return make_folds(y, groups, task, config)
    train, test = (np.unique(np.asarray(part, dtype=int)) for part in split)
    if not len(train) or not len(test):
        raise ProbeError(f"a held-out split needs train and test rows; got {len(train)} train "
                         f"and {len(test)} test rows")
    if len(np.intersect1d(train, test)):
        raise ProbeError("a row is in both the train and the test part of the split")
    leaked = np.intersect1d(groups[train], groups[test])
    if len(leaked):
        raise ProbeError(f"{len(leaked)} group(s) have rows in both the train and the test part "
                         f"(first: {leaked[:3].tolist()}); a held-out split must keep each group "
                         "on one side")
    if task == "classification":
        missing = sorted(set(y[test].tolist()) - set(y[train].tolist()))
        if missing:
            raise ProbeError(f"classes {missing} occur only in the test part of the split; the "
                             "probe cannot predict a class it never saw")
    return [(train, test)]


def _selectivity(task, probe, control, y, fake, folds, groups, config, scored) -> np.ndarray:
    """Probe minus control, each measured against its own chance on these folds.

    ``selectivity = (probe - prior(y)) - (control - prior(control))``, where ``prior`` is the
    label-blind predictor of :func:`probe.baselines.prior_predictions` (what the same probe
    predicts from a constant representation). Under group folds the two tasks' priors
    differ (the control labels are not balanced within groups, so the training folds'
    majority control class is rare in the test fold), and a plain difference would credit an
    uninformative representation with that gap. Resamples are paired (same bootstrap
    weights), so the interval is that of the difference.
    """
    main = "accuracy" if task == "classification" else "r2"
    prior_y = _scores(task, y, prior_predictions(y, folds, task)[None], groups, config, scored)
    prior_c = _scores(task, fake, prior_predictions(fake, folds, task)[None], groups, config,
                      scored)
    gain = probe[main] - prior_y[main]
    control_gain = control[main] - prior_c[main]
    if task == "regression":
        # R^2 is unbounded below: a control probe on unseen keys can score far under the
        # blind predictor, which would inflate selectivity past the probe's own gain. Credit it
        # with no less than the blind predictor. Accuracy is used as is (H&L 2019).
        control_gain = np.maximum(control_gain, 0.0)
    return gain - control_gain


def _name(key: SiteKey) -> str:
    site, layer = key
    return str(site) if layer is None else f"blocks.{layer}.{site}"


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
    if (same_labelling(fake, y) if task == "classification" else np.array_equal(fake, y)):
        warnings.warn("the control labelling equals the real labelling (the surface key "
                      "determines the label), so selectivity is 0 by construction and says "
                      "nothing; key the control on something else (control_keys)",
                      ProbeWarning, stacklevel=3)
    return fake


def text_baselines(*, y: Sequence, groups: Sequence, texts: Sequence[str] | None, task: Task,
                   config: EvalConfig = EvalConfig(),
                   split: tuple[Sequence[int], Sequence[int]] | None = None) -> pd.DataFrame:
    """Lexical (if ``config.lexical``) and chance rows, which do not depend on activations.

    With ``split``, the lexical model is trained on the train rows and both are scored on the
    test rows (``evaluation`` ``"heldout"``); chance is that of the test rows' labels.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    folds = _folds(y, groups, task, config, split)
    scored = _scored(folds, len(y))
    meta = {"evaluation": "cv" if split is None else "heldout", "n": int(scored.sum())}
    rows = []
    if config.lexical:
        if texts is None:
            raise ProbeError("the lexical baseline needs texts; pass texts or lexical=False")
        pred = lexical_predictions(texts, y, folds, task)
        rows += _rows("lexical", _scores(task, y, pred[None], groups, config, scored),
                      [(None, None)], config, n_folds=len(folds) if split is None else None,
                      **meta)
    chance = {m: np.array([[v]]) for m, v in chance_scores(y[scored], task).items()}
    rows += _rows("chance", chance, [(None, None)], config, n_folds=None, **meta)
    return _table(rows)


def _rows(estimator, samples: dict, site_keys, config, *, evaluation, n_folds, n) -> list[dict]:
    rows = []
    for metric, s in samples.items():
        lo, hi = _ci(s[1:], config)
        for i, (site, layer) in enumerate(site_keys):
            rows.append({"site": site, "layer": layer, "evaluation": evaluation,
                         "estimator": estimator, "metric": metric, "value": float(s[0, i]),
                         "ci_low": float(lo[i]), "ci_high": float(hi[i]), "n_folds": n_folds,
                         "n": n})
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
