"""Does the model know more than it says? Probe accuracy per layer vs its own zero-shot answers.

:func:`compare` takes an activation store and the zero-shot items table of the same dataset
(:func:`probe.behaviour.recognition.recognise`), lines them up by sample id, and measures on the
same items, the same group-aware folds and the same cluster-bootstrap resamples as ``probe
sweep`` (``probe.evaluate.make_folds``, ``probe.stats.group_bootstrap_weights``):

* ``probe``: the probe's out-of-fold accuracy / macro-F1 / AUROC per layer (R², Pearson r for
  ratings), trained on the gold labels;
* ``zero-shot``: the model's own answers, per template and variant, with CIs;
* ``probe-vs-zero-shot`` per layer: ``gap`` (probe minus zero-shot, a paired CI), ``agreement``
  and Cohen's ``kappa`` of the two per-item answers, ``auroc_confidence`` and
  ``auroc_gold_prob`` (does the probe's confidence, or its probability of the gold label, tell
  when the model's answer is right?); for ratings ``gap`` in Pearson r and ``agreement`` as the
  correlation of the two predictions;
* ``chance``: the majority-class accuracy on these items;
* ``probe-on-answer`` per layer: a probe trained to predict the model's own answer rather than
  the gold label (its accuracy, or r for ratings), and ``first_layer``: the first layer where
  that answer is decodable (the CI lies above the majority-answer rate, above r = 0 for
  ratings, at that layer and the next).

Rows are tidy (``COLUMNS``); ``template``/``variant`` are empty for rows that do not depend on
them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from probe.behaviour.paired import Bootstrap
from probe.behaviour.recognition import probabilities
from probe.evaluate import EvalConfig, cross_val_predict, make_folds
from probe.stats import ProbeError, ProbeWarning, chance_levels
from probe.store import cached_layers, open_store
from probe.sweep import probe_targets

COLUMNS = ("template", "variant", "estimator", "site", "layer", "pooling", "metric", "value",
           "ci_low", "ci_high", "n", "n_folds")
ANSWER_VARIANTS = ("sum", "calibrated", "expected", "generate")  # probe-on-answer fits these


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Which activations to probe and how (the sweep's protocol by default).

    Attributes:
        site: Store array with a layer dimension to probe.
        poolings: Poolings to probe (None: every pooling in the store).
        eval: Folds, regularisation, bootstrap and seed, as in ``probe sweep``.
        answer_variants: Variants whose answers get a probe-on-answer fit.
    """

    site: str = "hook_resid_post"
    poolings: tuple[str, ...] | None = None
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(control=False, lexical=False))
    answer_variants: tuple[str, ...] = ANSWER_VARIANTS


@dataclass
class _Data:
    """The store's usable rows, aligned with the items table."""

    ids: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    task: str
    classes: list[str]
    layers: list[int]
    rows: np.ndarray  # store rows


def _align(ds, items: pd.DataFrame, target: str | None, site: str) -> _Data:
    t = probe_targets(ds, target or items.attrs.get("target"))
    target, task, y, rows = t.target, t.task, t.y, t.rows
    ids = ds["sample"].values.astype(str)[rows]
    have = set(items["id"].astype(str))
    keep = np.array([i in have for i in ids])
    if not keep.any():
        raise ProbeError("no sample id of the store is in the zero-shot items table; were they "
                         "made from the same dataset (and --limit)?")
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} of {len(ids)} store rows have no zero-shot answer; "
                      "comparing on the other rows", ProbeWarning, stacklevel=3)
    if site not in ds.data_vars or "layer" not in ds[site].dims:
        raise ProbeError(f"the store has no layered array {site!r}; it has {list(ds.data_vars)}")
    layers = cached_layers(ds, site)
    if not layers:
        raise ProbeError(f"no layer of {site} is fully cached in this store")
    # Probe probabilities come in sorted class order (probe.engine): code everything that way.
    classes = [str(c) for c in np.unique(y)] if task == "classification" else []
    return _Data(ids=ids[keep], y=y[keep], groups=ds["group"].values.astype(str)[rows][keep],
                 task=task, classes=classes, layers=layers, rows=rows[keep])


def _read(ds, site: str, pooling: str, layers: list[int], rows: np.ndarray) -> np.ndarray:
    x = np.asarray(ds[site].sel(pooling=pooling, layer=layers).values, dtype=np.float32)[rows]
    return np.ascontiguousarray(x.reshape(len(rows), len(layers), -1).transpose(1, 0, 2))


def compare(store, items: pd.DataFrame, *, target: str | None = None,
            config: CompareConfig = CompareConfig()) -> pd.DataFrame:
    """Probe vs zero-shot behaviour on the same items, folds and resamples (see module doc).

    Args:
        store: A store path or an opened store of the same model and dataset.
        items: The items table of :func:`probe.behaviour.recognition.recognise`.
        target: The target (default: the items table's).
        config: See :class:`CompareConfig`.

    Returns:
        The tidy comparison table (``COLUMNS``); ``attrs`` hold target, task and row counts.
    """
    ds = store if not isinstance(store, (str, bytes)) and hasattr(store, "data_vars") \
        else open_store(store)
    data = _align(ds, items, target, config.site)
    cfg = config.eval
    folds = make_folds(data.y, data.groups, data.task, cfg)
    boot = Bootstrap.of(data.groups, cfg.n_bootstrap, cfg.seed, cfg.ci)
    poolings = list(config.poolings or [str(p) for p in ds["pooling"].values])
    by_key = {k: df.set_index("id").loc[data.ids] for k, df in
              items.astype({"id": str}).groupby(["template", "variant"], sort=False)}
    out: list[dict] = []
    zero_shot_done = False
    for pooling in poolings:
        X = _read(ds, config.site, pooling, data.layers, data.rows)
        pred = cross_val_predict(X, data.y, folds, task=data.task, config=cfg)
        where = dict(site=config.site, pooling=pooling, n_folds=len(folds), n=len(data.y))
        out += _probe_rows(data, boot, pred, where)
        if not zero_shot_done and data.task == "classification":
            out += _rows("chance", {"accuracy": (chance_levels(data.y, "classification")[
                "majority_accuracy"], np.nan, np.nan)}, [None], {"n": len(data.y)})
        for (template, variant), df in by_key.items():
            key = dict(template=template, variant=variant)
            if not zero_shot_done:
                out += _zero_shot_rows(data, boot, df, key)
            out += _paired_rows(data, boot, pred, df, {**key, **where})
            if variant in config.answer_variants:
                out += _answer_rows(data, X, df, cfg, {**key, **where})
        zero_shot_done = True
    table = pd.DataFrame(out, columns=list(COLUMNS))
    table["layer"] = pd.array(table["layer"].tolist(), dtype="Int64")
    table.attrs.update(task=data.task, n=len(data.y), n_folds=len(folds))
    return table


def _rows(estimator: str, stats: dict, layers: Sequence[int | None], base: dict) -> list[dict]:
    out = []
    for metric, (v, lo, hi) in stats.items():
        v, lo, hi = (np.atleast_1d(a) for a in (v, lo, hi))
        for i, layer in enumerate(layers):
            out.append({**base, "estimator": estimator, "layer": layer, "metric": metric,
                        "value": float(v[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i])})
    return out


def _codes(data: _Data, labels) -> np.ndarray:
    index = {c: k for k, c in enumerate(data.classes)}
    return np.array([index.get(v, -1) if v is not None else -1 for v in labels])


def _probe_rows(data: _Data, boot: Bootstrap, pred: np.ndarray, where: dict) -> list[dict]:
    y = _codes(data, data.y) if data.task == "classification" else data.y.astype(float)
    return _rows("probe", boot.metrics(data.task, y, pred), data.layers, where)


def _zero_shot_rows(data: _Data, boot: Bootstrap, df: pd.DataFrame, key: dict) -> list[dict]:
    base = {**key, "n": len(df)}
    if data.task == "regression":
        ok = df["value"].notna().to_numpy()
        stats = boot.subset(np.flatnonzero(ok)).metrics(
            "regression", data.y.astype(float)[ok], df["value"].to_numpy(float)[ok][None])
        return _rows("zero-shot", stats, [None], {**base, "n": int(ok.sum())})
    stats = {"accuracy": boot.mean(df["correct"].to_numpy(float))}
    return _rows("zero-shot", stats, [None], base)


def _paired_rows(data: _Data, boot: Bootstrap, pred: np.ndarray, df: pd.DataFrame,
                 base: dict) -> list[dict]:
    if data.task == "regression":
        return _paired_regression(data, boot, pred, df, base)
    gold = _codes(data, data.y)
    probe_answer = pred.argmax(-1)  # [S, n]
    said = _codes(data, df["answer"].tolist())  # -1: unparsed
    right = df["correct"].to_numpy(float)
    stats = {"gap": boot.mean((probe_answer == gold).T - right[:, None]),
             "agreement": boot.mean((probe_answer == said).T.astype(float)),
             "kappa": _kappa(boot, probe_answer, said, len(data.classes))}
    if 0 < right.sum() < len(right):
        stats["auroc_confidence"] = boot.auroc(right, pred.max(-1))
        stats["auroc_gold_prob"] = boot.auroc(right, np.take_along_axis(
            pred, gold[None, :, None], -1)[..., 0])
    return _rows("probe-vs-zero-shot", stats, data.layers, base)


def _kappa(boot: Bootstrap, a: np.ndarray, b: np.ndarray, K: int):
    """Cohen's kappa of ``a`` ([S, n] codes) and ``b`` ([n], -1 = no answer) per resample."""
    W = boot.weights / boot.weights.sum(1, keepdims=True)  # [B, n]
    A = np.eye(K)[a]  # [S, n, K]
    Bh = np.zeros((len(b), K))
    Bh[b >= 0, b[b >= 0]] = 1
    observed = W @ (a == b).T  # [B, S]
    expected = np.einsum("bsk,bk->bs", np.einsum("bn,snk->bsk", W, A), W @ Bh)
    with np.errstate(invalid="ignore", divide="ignore"):
        return boot.interval((observed - expected) / (1 - expected))


def _paired_regression(data, boot, pred, df, base) -> list[dict]:
    ok = np.flatnonzero(df["value"].notna().to_numpy())
    sub, y = boot.subset(ok), data.y.astype(float)[ok]
    value = df["value"].to_numpy(float)[ok]
    from probe.stats import score

    r_probe = score("regression", y, pred[:, ok], sub.weights)["pearson_r"]  # [B, S]
    r_said = score("regression", y, value[None], sub.weights)["pearson_r"]  # [B, 1]
    agree = score("regression", value, pred[:, ok], sub.weights)["pearson_r"]
    stats = {"gap": sub.interval(r_probe - r_said), "agreement": sub.interval(agree)}
    return _rows("probe-vs-zero-shot", stats, data.layers, {**base, "n": len(ok)})


def _answer_rows(data: _Data, X: np.ndarray, df: pd.DataFrame, cfg: EvalConfig, base: dict
                 ) -> list[dict]:
    """A probe trained on the model's own answers; its first decodable layer."""
    if data.task == "regression":
        ok = np.flatnonzero(df["value"].notna().to_numpy())
        labels, task = df["value"].to_numpy(float)[ok], "regression"
    else:
        ok, labels = _answer_labels(df["answer"].to_numpy(object), data.groups, cfg.n_folds)
        task = "classification"
    if ok is None or len(ok) < 2 * cfg.n_folds:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProbeWarning)
            folds = make_folds(labels, data.groups[ok], task, EvalConfig(
                n_folds=cfg.n_folds, seed=cfg.seed, fold_fallback="reduce"))
            pred = cross_val_predict(X[:, ok], labels, folds, task=task, config=cfg)
    except ProbeError:
        return []  # e.g. the model gives one answer only: nothing to decode
    boot = Bootstrap.of(data.groups[ok], cfg.n_bootstrap, cfg.seed, cfg.ci)
    where = {**base, "n": len(ok), "n_folds": len(folds), "estimator": "probe-on-answer"}
    if task == "regression":
        stats = {"pearson_r": boot.metrics(task, labels, pred)["pearson_r"]}
        floor = np.zeros(len(data.layers))
    else:
        codes = np.unique(labels, return_inverse=True)[1]
        stats = {"accuracy": boot.metrics(task, codes, pred)["accuracy"]}
        floor = np.full(len(data.layers), np.bincount(codes).max() / len(codes))
        stats["majority"] = (floor, np.full_like(floor, np.nan), np.full_like(floor, np.nan))
    rows = _rows("probe-on-answer", stats, data.layers, where)
    metric = "pearson_r" if task == "regression" else "accuracy"
    above = stats[metric][1] > floor
    twice = np.flatnonzero(above[:-1] & above[1:])  # two layers in a row: one of 30 CIs can
    first = data.layers[twice[0]] if len(twice) else np.nan  # miss by chance alone
    rows.append({**where, "layer": None, "metric": "first_layer", "value": float(first),
                 "ci_low": np.nan, "ci_high": np.nan})
    return rows


def _answer_labels(answers: np.ndarray, groups: np.ndarray, n_folds: int):
    """Rows with an answer, as labels a probe can be cross-validated on: answers given in
    fewer than ``n_folds`` groups are merged into ``"(other)"``, which is dropped if it is
    itself that rare. ``(None, None)`` when fewer than two answers remain."""
    ok = np.flatnonzero(pd.notna(answers))
    labels = answers[ok].astype(str)
    for _ in range(2):  # merge the rare answers, then drop "(other)" if it is rare too
        counts = pd.Series(groups[ok]).groupby(labels).nunique()
        rare = set(counts[counts < n_folds].index)
        if "(other)" in rare:
            keep = labels != "(other)"
            ok, labels = ok[keep], labels[keep]
        else:
            labels = np.array(["(other)" if a in rare else a for a in labels], dtype=object)
    if len(set(labels)) < 2:
        return None, None
    return ok, labels
