"""The tidy results table of a probe sweep: schema, files on disk, and the end-of-sweep summary.

A sweep's results are one :class:`pandas.DataFrame` with one row per
``(site, layer, pooling, evaluation, estimator, metric)`` and exactly these columns:

``site``       activation site kind (``"hook_resid_post"``, ``"hook_embed"``, ...); NA for
               ``lexical`` and ``chance`` rows
``layer``      nullable ``Int64``; NA for ``"hook_embed"`` (before layer 0) and for
               ``lexical`` / ``chance`` rows
``pooling``    how each sample's tokens were pooled (``"last"``, ``"content-mean"``, ...); NA
               for ``lexical`` / ``chance`` rows. Optional on input (filled with NA)
``evaluation`` ``"cv"``: group k-fold cross-validation on one set of rows (in-distribution);
               ``"heldout"``: fitted on one set (a store, or the rows of a train split) and
               scored on another (another store, or the other splits), CIs over the held-out
               rows' groups. Optional on input (filled with ``"cv"``)
``estimator``  ``"probe"``, ``"control"`` (control task), ``"lexical"`` or ``"chance"``
``metric``     ``"accuracy"``, ``"macro_f1"``, ``"auroc"``, ``"r2"``, ``"pearson_r"`` or
               ``"selectivity"`` (probe minus control task; probe and chance rows only)
``value``, ``ci_low``, ``ci_high``  the estimate and its confidence interval (NaN: no CI)
``n_folds``, ``n``  nullable ``Int64``; ``n`` counts the scored rows, ``n_folds`` is NA for
               ``heldout`` rows (one fit, no folds)

``(site, layer, pooling, evaluation, estimator, metric)`` is a key: a sweep with a held-out set
has one ``cv`` and one ``heldout`` row per site, layer, pooling, estimator and metric.

>>> df = pd.DataFrame({"site": ["hook_resid_post", None], "layer": pd.array([3, None], "Int64"),
...     "estimator": ["probe", "chance"], "metric": ["accuracy", "accuracy"],
...     "value": [0.9, 0.25], "ci_low": [0.85, None], "ci_high": [0.95, None],
...     "n_folds": [5, None], "n": [200, None]})
>>> peak(df, "hook_resid_post", "accuracy").label
'L3: 0.90'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probe.io import atomic_write
from probe.io import environment
from probe.io import json_default

COLUMNS = ("site", "layer", "pooling", "evaluation", "estimator", "metric", "value", "ci_low",
           "ci_high", "n_folds", "n")
EVALUATIONS = ("cv", "heldout")
ESTIMATORS = ("probe", "control", "lexical", "chance")
METRICS = ("accuracy", "macro_f1", "auroc", "r2", "pearson_r", "selectivity")
EMBED_SITE = "hook_embed"
KEY = ["site", "layer", "pooling", "evaluation", "estimator", "metric"]
FILES = {"csv": "results.csv", "json": "results.json", "run": "run.json"}

_STR = pd.Series(["x"]).dtype  # pandas' default string dtype ("str" in pandas 3, object before)
_DTYPES = {"site": _STR, "layer": "Int64", "pooling": _STR, "evaluation": _STR,
           "estimator": _STR, "metric": _STR,
           "value": "float64", "ci_low": "float64", "ci_high": "float64",
           "n_folds": "Int64", "n": "Int64"}


# ---------------------------------------------------------------------------- schema


def select_pooling(df: pd.DataFrame, pooling: str | None = None) -> pd.DataFrame:
    """Rows of one pooling (plus the pooling-free lexical/chance rows).

    With ``pooling=None`` the table must hold a single pooling; otherwise a ValueError lists
    them, since curves of different poolings cannot share a site's line.
    """
    have = sorted({p for p in df["pooling"].dropna()})
    if pooling is None:
        if len(have) > 1:
            raise ValueError(f"results hold several poolings {have}; pass pooling=... to pick one")
        return df
    if pooling not in have:
        raise ValueError(f"no results for pooling {pooling!r}; the table has {have}")
    return df[df["pooling"].isna() | (df["pooling"] == pooling)].reset_index(drop=True)


def validate_results(df: pd.DataFrame) -> pd.DataFrame:
    """Check a results table against the schema and return it in canonical form.

    Args:
        df: A tidy results table (see the module docstring).

    Returns:
        A copy with the columns in schema order, a fresh index and canonical dtypes.

    Raises:
        TypeError: if ``df`` is not a DataFrame.
        ValueError: naming the first schema problem found and how to fix it.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(df).__name__}")
    if "pooling" not in df.columns:
        df = df.assign(pooling=pd.Series([None] * len(df), index=df.index, dtype=object))
    if "evaluation" not in df.columns:
        df = df.assign(evaluation="cv")
    missing = [c for c in COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in COLUMNS]
    if missing or extra:
        raise ValueError(f"results columns must be exactly {list(COLUMNS)}; "
                         f"missing {missing}, unexpected {extra}")
    if len(df) == 0:
        raise ValueError("results table has no rows")
    if df["layer"].dtype != "Int64":
        raise ValueError(f"column 'layer' must have dtype Int64 (nullable integer), got "
                         f"{df['layer'].dtype}; use df['layer'] = df['layer'].astype('Int64')")
    _check_values(df, "evaluation", EVALUATIONS)
    _check_values(df, "estimator", ESTIMATORS)
    _check_values(df, "metric", METRICS)
    _check_rows(df)
    for col in ("value", "ci_low", "ci_high", "n_folds", "n"):
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise ValueError(f"column {col!r} must be numeric, got {df[col].dtype}")
    bad_ci = df["ci_low"] > df["ci_high"]
    if bad_ci.any():
        raise ValueError(f"ci_low > ci_high in {int(bad_ci.sum())} row(s), first:\n"
                         f"{df[bad_ci].head(1).to_string()}")
    dup = df.duplicated(subset=KEY, keep=False)
    if dup.any():
        raise ValueError(f"{int(dup.sum())} rows share a (site, layer, pooling, evaluation, "
                         f"estimator, metric) key, "
                         f"first:\n{df[dup].head(2).to_string()}")
    return _canonical(df)


def _check_values(df: pd.DataFrame, col: str, allowed: tuple[str, ...]) -> None:
    bad = sorted({str(v) for v in df[col] if v not in allowed})
    if bad:
        raise ValueError(f"column {col!r} has unknown values {bad}; allowed: {list(allowed)}")


def _check_rows(df: pd.DataFrame) -> None:
    """Per-row rules linking site, layer, estimator and metric."""
    baseline = df["estimator"].isin(["lexical", "chance"])
    site_na, layer_na = df["site"].isna(), df["layer"].isna()
    rules = [
        (baseline & ~site_na, "lexical/chance rows must have site NA"),
        (baseline & ~layer_na, "lexical/chance rows must have layer NA"),
        (~baseline & site_na, "probe/control rows need a site"),
        (~baseline & ~site_na & (df["site"] == EMBED_SITE) & ~layer_na,
         f"{EMBED_SITE!r} rows must have layer NA (the embedding sits before layer 0)"),
        (~baseline & ~site_na & (df["site"] != EMBED_SITE) & layer_na,
         f"probe/control rows at a site other than {EMBED_SITE!r} need a layer"),
        ((df["metric"] == "selectivity") & df["estimator"].isin(["control", "lexical"]),
         "'selectivity' rows must have estimator 'probe' (or 'chance')"),
    ]
    for mask, message in rules:
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            raise ValueError(f"{message}; {int(mask.sum())} row(s) break this, first:\n"
                             f"{df[mask].head(1).to_string()}")


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    out = df.loc[:, list(COLUMNS)].reset_index(drop=True).copy()
    for col in ("site", "pooling", "evaluation", "estimator", "metric"):
        obj = out[col].astype(object)
        out[col] = obj.where(obj.notna(), np.nan).astype(_STR)
    for col in ("value", "ci_low", "ci_high"):
        out[col] = out[col].astype("float64")
    for col in ("n_folds", "n"):
        out[col] = out[col].astype("Int64")
    return out


# ---------------------------------------------------------------------------- files


def write_results(out_dir: str | os.PathLike, df: pd.DataFrame,
                  config: dict[str, Any], *, record: bool = True) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json`` and ``run.json`` into ``out_dir``, atomically.

    Args:
        out_dir: Folder to write into (created if needed).
        df: The results table; validated first.
        config: The run's configuration and provenance (JSON-serialisable; paths, numpy
            scalars and dataclasses are converted). ``run.json`` holds it plus an
            ``"environment"`` entry: timestamp and emoprobe/python/torch/transformers versions.
        record: write ``run.json`` (the completion record) too. A command that writes more
            afterwards (figures) passes ``False`` and calls :func:`write_run_record` last; an
            older ``run.json`` in ``out_dir`` is removed first, so the folder reads as
            unfinished until then.

    Returns:
        The written paths, keyed ``"csv"``, ``"json"`` and (with ``record``) ``"run"``.
    """
    df = validate_results(df)
    if "environment" in config:
        raise ValueError("config key 'environment' is reserved for the provenance that "
                         "write_results adds")
    run_text = _run_text(config)  # refuse an unserialisable config before writing anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILES["run"]).unlink(missing_ok=True)  # until this run's record: unfinished
    records = [{k: _json_scalar(v) for k, v in row.items()} for row in df.to_dict("records")]
    texts = {"csv": df.to_csv(index=False),
             "json": json.dumps(records, indent=1, allow_nan=False) + "\n"}
    paths = {key: out_dir / FILES[key] for key in texts}
    for key, text in texts.items():
        atomic_write(paths[key], text)
    if record:
        paths["run"] = out_dir / FILES["run"]
        atomic_write(paths["run"], run_text)
    return paths


def write_run_record(out_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``run.json`` (``config`` plus ``"environment"``): a run's completion record,
    written after everything else the run writes, so a folder with one is complete."""
    path = Path(out_dir) / FILES["run"]
    atomic_write(path, _run_text(config))
    return path


def _run_text(config: dict[str, Any]) -> str:
    run = {**config, "environment": environment()}
    return json.dumps(run, indent=2, default=json_default, allow_nan=False) + "\n"


def read_results(out_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back what :func:`write_results` wrote: ``(results, run)``.

    ``results`` equals the validated table that was written, dtypes included; ``run`` is the
    config given to :func:`write_results` plus its ``"environment"`` entry.
    """
    out_dir = Path(out_dir)
    df = pd.read_csv(out_dir / FILES["csv"], float_precision="round_trip",
                     dtype={"layer": "Int64", "n_folds": "Int64", "n": "Int64"})
    run = json.loads((out_dir / FILES["run"]).read_text())
    return validate_results(df), run


def _json_scalar(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------------------- summary

SITE_ORDER = ("hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
              "hook_attn_out", "hook_mlp_out")


@dataclasses.dataclass(frozen=True)
class Peak:
    """The best layer of one site for one metric (``layer`` is None for ``hook_embed``)."""

    site: str
    metric: str
    layer: int | None
    value: float
    ci_low: float
    ci_high: float

    @property
    def label(self) -> str:
        """Short annotation such as ``"L19: 0.93"`` (``"emb: 0.41"`` for the embedding)."""
        return f"{'emb' if self.layer is None else f'L{self.layer}'}: {self.value:.2f}"


def sites_in(df: pd.DataFrame) -> list[str]:
    """Sites of a results table in reading order: embedding, residual stream, attention, MLP."""
    present = set(df["site"].dropna())
    known = [s for s in SITE_ORDER if s in present]
    return known + sorted(present - set(known))


def default_metric(df: pd.DataFrame) -> str:
    """``"r2"`` for a regression sweep, ``"accuracy"`` for classification, else the first found."""
    present = set(df.loc[df["estimator"] == "probe", "metric"])
    for metric in ("r2", "accuracy", *METRICS):
        if metric in present:
            return metric
    raise ValueError("results table has no probe rows")


def main_evaluation(df: pd.DataFrame) -> str:
    """``"cv"`` when the table has cross-validated probe rows, else ``"heldout"`` (a sweep
    that only trains on one split and tests on another)."""
    probe = df[df["estimator"] == "probe"]
    evaluations = set(probe["evaluation"]) if "evaluation" in probe else {"cv"}
    return "cv" if "cv" in evaluations or not evaluations else "heldout"


def peak(df: pd.DataFrame, site: str, metric: str, evaluation: str | None = None) -> Peak:
    """The layer where the probe scores highest at ``site`` (the earliest one on ties).

    Args:
        df: A results table.
        site: The site kind.
        metric: The metric.
        evaluation: ``"cv"`` or ``"heldout"``; default :func:`main_evaluation`.

    Raises:
        ValueError: if the table has no probe value for this site and metric.
    """
    evaluation = evaluation or main_evaluation(df)
    rows = _rows(df, "probe", metric, site, evaluation).dropna(subset=["value"])
    if rows.empty:
        raise ValueError(f"no probe {metric!r} values ({evaluation}) at site {site!r}; "
                         f"sites: {sites_in(df)}, metrics: {sorted(set(df['metric']))}")
    rows = rows.sort_values("layer", na_position="first", kind="stable")
    best = rows.loc[rows["value"].idxmax()]
    layer = None if pd.isna(best["layer"]) else int(best["layer"])
    return Peak(site, metric, layer, float(best["value"]), float(best["ci_low"]),
                float(best["ci_high"]))


def summarize(df: pd.DataFrame, metric: str | None = None,
              pooling: str | None = None) -> pd.DataFrame:
    """One row per site: peak layer and value with CI, last layer, selectivity, baselines.

    The peak is that of the main evaluation (:func:`main_evaluation`). When the table also
    holds held-out rows next to cross-validated ones, the held-out score at the same layer and
    the held-out peak are added.

    Args:
        df: A results table.
        metric: The metric to summarise; default :func:`default_metric`.
        pooling: The pooling to summarise (required when the table holds several).

    Returns:
        Columns ``site, metric, evaluation, peak_layer, peak_value, peak_ci_low,
        peak_ci_high, last_layer, last_value, selectivity`` (at the peak layer), ``lexical,
        chance``, and ``heldout_value, heldout_ci_low, heldout_ci_high`` (at the peak layer),
        ``heldout_peak_layer, heldout_peak_value`` (NaN/NA without held-out rows).
    """
    df = select_pooling(validate_results(df), pooling)
    metric = metric or default_metric(df)
    main = main_evaluation(df)
    transfer = main == "cv" and not _rows(df, "probe", metric, evaluation="heldout").empty
    out = []
    for site in sites_in(df):
        curve = _rows(df, "probe", metric, site, main).dropna(subset=["value"])
        if curve.empty:
            continue
        pk = peak(df, site, metric, main)
        last = curve.sort_values("layer", na_position="first").iloc[-1]
        row = {"site": site, "metric": metric, "evaluation": main, "peak_layer": pk.layer,
               "peak_value": pk.value, "peak_ci_low": pk.ci_low, "peak_ci_high": pk.ci_high,
               "last_layer": last["layer"], "last_value": float(last["value"]),
               "selectivity": _first(_at(_rows(df, "probe", "selectivity", site, main), pk.layer)),
               "lexical": _first(_rows(df, "lexical", metric, evaluation=main)),
               "chance": _first(_rows(df, "chance", metric, evaluation=main))}
        held = _at(_rows(df, "probe", metric, site, "heldout"), pk.layer) if transfer else None
        hpk = peak(df, site, metric, "heldout") if transfer and not held.empty else None
        row.update({"heldout_value": _first(held) if hpk else math.nan,
                    "heldout_ci_low": float(held["ci_low"].iloc[0]) if hpk else math.nan,
                    "heldout_ci_high": float(held["ci_high"].iloc[0]) if hpk else math.nan,
                    "heldout_peak_layer": hpk.layer if hpk else None,
                    "heldout_peak_value": hpk.value if hpk else math.nan})
        out.append(row)
    table = pd.DataFrame(out)
    for col in ("peak_layer", "last_layer", "heldout_peak_layer"):
        table[col] = pd.array([None if pd.isna(v) else int(v) for v in table[col]], "Int64")
    return table


def format_summary(df: pd.DataFrame, metric: str | None = None, pooling: str | None = None) -> str:
    """A plain-text table of :func:`summarize` for the terminal at the end of a sweep.

    With held-out rows next to cross-validated ones, two columns follow: the held-out score at
    the cross-validated peak layer (with its CI) and the held-out peak.
    """
    df = select_pooling(validate_results(df), pooling)
    metric = metric or default_metric(df)
    table = summarize(df, metric)
    transfer = table["heldout_value"].notna().any()
    head = ["site", "peak", metric, "CI", "last", "selectivity"]
    head += ["held-out", "CI", "held-out peak"] if transfer else []
    rows = []
    for r in table.itertuples():
        row = [_short(r.site), _layer(r.peak_layer), f"{r.peak_value:.3f}",
               _ci(r.peak_ci_low, r.peak_ci_high), f"{r.last_value:.3f} ({_layer(r.last_layer)})",
               "—" if pd.isna(r.selectivity) else f"{r.selectivity:+.3f}"]
        if transfer:
            row += ["—", "", "—"] if pd.isna(r.heldout_value) else [
                f"{r.heldout_value:.3f}", _ci(r.heldout_ci_low, r.heldout_ci_high),
                f"{r.heldout_peak_value:.3f} ({_layer(r.heldout_peak_layer)})"]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in [head, ["-" * w for w in widths], *rows]]
    notes = []
    main = main_evaluation(df)
    for evaluation in (main, "heldout") if transfer else (main,):
        for estimator in ("lexical", "chance"):
            row = _rows(df, estimator, metric, evaluation=evaluation)
            if not row.empty:
                r = row.iloc[0]
                ci = "" if pd.isna(r["ci_low"]) else f" {_ci(r['ci_low'], r['ci_high'])}"
                prefix = "held-out " if transfer and evaluation == "heldout" else ""
                notes.append(f"{prefix}{estimator} {r['value']:.3f}{ci}")
    return "\n".join(lines + (["; ".join(notes)] if notes else []))


def _rows(df: pd.DataFrame, estimator: str, metric: str, site: str | None = None,
          evaluation: str | None = None) -> pd.DataFrame:
    mask = (df["estimator"] == estimator) & (df["metric"] == metric)
    if site is not None:
        mask &= df["site"] == site
    if evaluation is not None and "evaluation" in df:
        mask &= df["evaluation"] == evaluation
    return df[mask.fillna(False).astype(bool)]


def _at(rows: pd.DataFrame, layer: int | None) -> pd.DataFrame:
    return rows[rows["layer"].isna() if layer is None else (rows["layer"] == layer).fillna(False)]


def _first(rows: pd.DataFrame) -> float:
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def _short(site: str) -> str:
    return site.removeprefix("hook_")


def _layer(layer: Any) -> str:
    return "emb" if pd.isna(layer) else f"L{int(layer)}"


def _ci(low: float, high: float) -> str:
    return "" if pd.isna(low) or pd.isna(high) else f"[{low:.3f}, {high:.3f}]"
