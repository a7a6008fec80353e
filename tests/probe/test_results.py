"""Tests for probe.results: schema validation, files on disk, summaries.

The synthetic tables built here (``synthetic_classification``, ``synthetic_regression``) are
also used by ``test_figures.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import probe
from probe.results import (
    COLUMNS,
    format_summary,
    peak,
    read_results,
    summarize,
    validate_results,
    write_results,
)

SITES = ("hook_resid_post", "hook_mlp_out")


def _curve(n_layers: int, top: float, at: int, floor: float, width: float) -> np.ndarray:
    """A rise-and-fall curve over layers peaking at ``at`` with value ``top``."""
    x = np.arange(n_layers)
    left = floor + (top - floor) * np.exp(-(((x - at) / width) ** 2))
    late = top - 0.6 * (top - floor) * (1 - np.exp(-(((x - at) / (2 * width)) ** 2)))
    return np.where(x <= at, left, late)


def _row(site, layer, estimator, metric, value, half=None, n_folds=5, n=800, evaluation="cv"):
    lo, hi = (np.nan, np.nan) if half is None else (value - half, value + half)
    pooling = None if estimator in ("lexical", "chance") else "last"
    return {"site": site, "layer": layer, "pooling": pooling, "evaluation": evaluation,
            "estimator": estimator, "metric": metric, "value": value, "ci_low": lo,
            "ci_high": hi, "n_folds": n_folds, "n": n}


def _table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["layer"] = df["layer"].astype("Int64")
    df["n_folds"] = df["n_folds"].astype("Int64")
    df["n"] = df["n"].astype("Int64")
    df["pooling"] = df["pooling"].astype(object).where(df["pooling"].notna(), np.nan).astype(
        pd.Series(["x"]).dtype)
    return df


def synthetic_classification(n_layers: int = 30, sites=SITES, embed: bool = True,
                             layers=None, control: bool = True,
                             lexical: bool = True, heldout: bool = False) -> pd.DataFrame:
    """8-class sweep: resid_post peaks at layer 19 (0.93), mlp_out at layer 14 (0.74).

    With ``heldout``, held-out rows follow each probe curve 0.05 lower, except resid_post at
    layer 17 (0.91, the held-out peak), plus a held-out lexical baseline and chance."""
    peaks = {"hook_resid_post": (0.93, 19, 9.0), "hook_mlp_out": (0.74, 14, 6.0),
             "hook_attn_out": (0.68, 22, 7.0)}
    layers = range(n_layers) if layers is None else layers
    rows = []
    for site in sites:
        top, at, width = peaks[site]
        acc = _curve(n_layers, top, min(at, n_layers - 1), 0.30, width)
        f1 = acc - 0.04
        ctrl = 0.22 + (0.1 if site == "hook_resid_post" else 0.05) * np.linspace(0, 1, n_layers)
        for layer in layers:
            rows += [_row(site, layer, "probe", "accuracy", acc[layer], 0.02),
                     _row(site, layer, "probe", "macro_f1", f1[layer], 0.025),
                     _row(site, layer, "probe", "auroc", 0.5 + acc[layer] / 2, 0.01)]
            if control:
                rows += [_row(site, layer, "control", "accuracy", ctrl[layer], 0.02),
                         _row(site, layer, "probe", "selectivity", acc[layer] - ctrl[layer],
                              0.03)]
    if embed:
        rows += [_row("hook_embed", None, "probe", "accuracy", 0.41, 0.02),
                 _row("hook_embed", None, "probe", "macro_f1", 0.37, 0.02),
                 _row("hook_embed", None, "probe", "auroc", 0.70, 0.01)]
        if control:
            rows += [_row("hook_embed", None, "control", "accuracy", 0.20, 0.02),
                     _row("hook_embed", None, "probe", "selectivity", 0.21, 0.03)]
    if lexical:
        rows += [_row(None, None, "lexical", m, v, 0.03)
                 for m, v in (("accuracy", 0.62), ("macro_f1", 0.58), ("auroc", 0.80))]
    rows += [_row(None, None, "chance", m, v, None, None, 800)
             for m, v in (("accuracy", 0.125), ("macro_f1", 0.125), ("auroc", 0.5),
                          ("selectivity", 0.0))]
    if heldout:
        probe = [r for r in rows if r["estimator"] == "probe" and r["metric"] != "selectivity"]
        for r in probe:
            value = 0.91 if (r["site"], r["layer"], r["metric"]) == (
                "hook_resid_post", 17, "accuracy") else r["value"] - 0.05
            rows.append(_row(r["site"], r["layer"], "probe", r["metric"], value, 0.03, None,
                             400, "heldout"))
        rows += [_row(None, None, "lexical", "accuracy", 0.55, 0.04, None, 400, "heldout"),
                 _row(None, None, "chance", "accuracy", 0.125, None, None, 400, "heldout")]
    return _table(rows)


def synthetic_regression(n_layers: int = 32) -> pd.DataFrame:
    """EmoBank-valence-like sweep: r2 and pearson_r, negative r2 at the first layers."""
    rows = []
    for site in SITES:
        top, at = (0.58, 20) if site == "hook_resid_post" else (0.41, 16)
        r2 = _curve(n_layers, top, at, -0.05, 8.0)
        for layer in range(n_layers):
            rows += [_row(site, layer, "probe", "r2", r2[layer], 0.04),
                     _row(site, layer, "probe", "pearson_r", np.sqrt(max(r2[layer], 0)), 0.03),
                     _row(site, layer, "control", "r2", -0.02, 0.01),
                     _row(site, layer, "probe", "selectivity", r2[layer] + 0.02, 0.04)]
    rows += [_row(None, None, "lexical", "r2", 0.31, 0.04),
             _row(None, None, "lexical", "pearson_r", 0.56, 0.03),
             _row(None, None, "chance", "r2", 0.0, None, None),
             _row(None, None, "chance", "pearson_r", 0.0, None, None)]
    return _table(rows)


# ---------------------------------------------------------------------------- validation


def test_synthetic_tables_are_valid():
    for df in (synthetic_classification(), synthetic_regression()):
        out = validate_results(df)
        assert list(out.columns) == list(COLUMNS)
        assert isinstance(out["layer"].dtype, pd.Int64Dtype)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.drop(columns="n"), r"missing \['n'\]"),
    (lambda d: d.assign(extra=1), r"unexpected \['extra'\]"),
    (lambda d: d.assign(layer=d["layer"].astype("float64")), "dtype Int64"),
    (lambda d: d.replace({"estimator": {"control": "ctrl"}}), r"unknown values \['ctrl'\]"),
    (lambda d: d.replace({"metric": {"auroc": "auc"}}), r"unknown values \['auc'\]"),
    (lambda d: d.iloc[:0], "no rows"),
    (lambda d: pd.concat([d, d.iloc[:1]]), "share a"),
])
def test_validate_rejects_schema_errors(mutate, match):
    with pytest.raises(ValueError, match=match):
        validate_results(mutate(synthetic_classification()))


def _set(df: pd.DataFrame, mask, **values) -> pd.DataFrame:
    df = df.copy()
    for col, v in values.items():
        df.loc[mask, col] = v
    return df


def test_validate_rejects_inconsistent_rows():
    df = synthetic_classification()
    cases = [
        (_set(df, df["estimator"] == "chance", site="hook_resid_post"), "must have site NA"),
        (_set(df, df["estimator"] == "lexical", layer=3), "must have layer NA"),
        (_set(df, df["site"] == "hook_embed", layer=0), "'hook_embed' rows must have layer NA"),
        (_set(df, (df["site"] == "hook_mlp_out") & (df["layer"] == 4), layer=pd.NA),
         "need a layer"),
        (_set(df, df["estimator"] == "control", site=np.nan), "need a site"),
        (_set(df, (df["metric"] == "selectivity") & df["site"].notna(), estimator="control"),
         "'selectivity' rows"),
        (_set(df, df.index == 0, ci_low=0.99), "ci_low > ci_high"),
        (df.assign(value=df["value"].astype(str)), "'value' must be numeric"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            validate_results(bad)


def test_validate_rejects_non_dataframe():
    with pytest.raises(TypeError, match="DataFrame"):
        validate_results({"site": []})


# ---------------------------------------------------------------------------- files


def test_write_read_round_trip(tmp_path):
    df = synthetic_classification()
    config = {"model": "smollm2-135m", "dataset": "goemotions", "seed": 0,
              "layers": [0, 1, 2], "store": tmp_path / "store", "alpha": np.float64(0.5)}
    paths = write_results(tmp_path / "run", df, config)
    assert {p.name for p in paths.values()} == {"results.csv", "results.json", "run.json"}
    assert not list((tmp_path / "run").glob("*.tmp"))
    back, run = read_results(tmp_path / "run")
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    pd.testing.assert_frame_equal(back, validate_results(df), check_exact=True)
    assert back["layer"].dtype == "Int64"
    assert run["model"] == "smollm2-135m" and run["store"] == str(tmp_path / "store")
    env = run["environment"]
    assert env["emoprobe"] == probe.__version__
    assert {"timestamp", "python", "torch", "transformers"} <= set(env)


def test_results_json_uses_null_for_missing(tmp_path):
    df = synthetic_classification()
    paths = write_results(tmp_path, df, {})
    text = paths["json"].read_text()
    assert "NaN" not in text
    records = json.loads(text)
    assert len(records) == len(df) and set(records[0]) == set(COLUMNS)
    chance = next(r for r in records if r["estimator"] == "chance")
    assert chance["site"] is None and chance["layer"] is None and chance["ci_low"] is None
    embed = next(r for r in records if r["site"] == "hook_embed")
    assert embed["layer"] is None and isinstance(embed["n"], int)


def test_write_rejects_invalid_and_reserved(tmp_path):
    with pytest.raises(ValueError, match="dtype Int64"):
        bad = synthetic_classification()
        write_results(tmp_path, bad.assign(layer=bad["layer"].astype(float)), {})
    with pytest.raises(ValueError, match="reserved"):
        write_results(tmp_path, synthetic_classification(), {"environment": 1})
    assert not list(tmp_path.iterdir())


def test_write_overwrites_previous_run(tmp_path):
    write_results(tmp_path, synthetic_regression(), {"run": 1})
    write_results(tmp_path, synthetic_classification(), {"run": 2})
    back, run = read_results(tmp_path)
    assert run["run"] == 2 and "accuracy" in set(back["metric"])


# ---------------------------------------------------------------------------- summary


def test_peak_finds_the_best_layer():
    df = synthetic_classification()
    pk = peak(df, "hook_resid_post", "accuracy")
    assert (pk.layer, round(pk.value, 2), pk.label) == (19, 0.93, "L19: 0.93")
    assert pk.ci_low < pk.value < pk.ci_high
    assert peak(df, "hook_mlp_out", "accuracy").layer == 14
    assert peak(df, "hook_embed", "accuracy").label == "emb: 0.41"
    with pytest.raises(ValueError, match="no probe 'r2'"):
        peak(df, "hook_resid_post", "r2")


def test_peak_ties_pick_the_earliest_layer():
    df = synthetic_classification(n_layers=6)
    df.loc[(df["site"] == "hook_mlp_out") & (df["metric"] == "accuracy")
           & (df["estimator"] == "probe"), "value"] = 0.5
    assert peak(df, "hook_mlp_out", "accuracy").layer == 0


def test_summarize_classification():
    table = summarize(synthetic_classification())
    assert list(table["site"]) == ["hook_embed", "hook_resid_post", "hook_mlp_out"]
    row = table.set_index("site").loc["hook_resid_post"]
    assert row["metric"] == "accuracy" and row["peak_layer"] == 19
    assert row["peak_value"] == pytest.approx(0.93)
    assert row["last_layer"] == 29 and row["last_value"] < row["peak_value"]
    control_at_19 = 0.22 + 0.1 * 19 / 29
    assert row["selectivity"] == pytest.approx(0.93 - control_at_19)
    assert row["lexical"] == 0.62 and row["chance"] == 0.125
    assert pd.isna(table.set_index("site").loc["hook_embed", "peak_layer"])


def test_summarize_regression_defaults_to_r2_and_handles_missing_rows():
    table = summarize(synthetic_regression())
    assert set(table["metric"]) == {"r2"}
    assert list(table["peak_layer"]) == [20, 16]
    bare = synthetic_classification(control=False, lexical=False)
    row = summarize(bare, "macro_f1").iloc[-1]
    assert np.isnan(row["selectivity"]) and np.isnan(row["lexical"])


def test_format_summary_is_a_readable_table():
    text = format_summary(synthetic_classification())
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["site", "peak", "accuracy"]
    resid = next(line for line in lines if line.startswith("resid_post"))
    assert "L19" in resid and "0.930" in resid and "(L29)" in resid
    assert lines[-1].startswith("lexical 0.620 [0.590, 0.650]; chance 0.125")


def test_several_poolings_must_be_chosen():
    from probe.results import select_pooling

    a = synthetic_classification()
    b = a.copy()
    b.loc[b["pooling"].notna(), "pooling"] = "content-mean"
    both = pd.concat([a, b[b["pooling"].notna()]], ignore_index=True)
    validate_results(both)  # (site, layer, pooling, estimator, metric) stays a key
    with pytest.raises(ValueError, match="several poolings"):
        summarize(both)
    one = select_pooling(validate_results(both), "content-mean")
    assert set(one["pooling"].dropna()) == {"content-mean"}
    assert len(one) == len(a)
    with pytest.raises(ValueError, match="no results for pooling"):
        select_pooling(validate_results(both), "token")
