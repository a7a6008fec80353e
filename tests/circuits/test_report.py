"""The tidy results table: fixed columns and dtypes, JSON without NaN, atomic files."""

from __future__ import annotations

import json

import pandas as pd

from circuits import report


def test_tidy_rows_have_the_schema_and_round_trip(tmp_path):
    attr = pd.DataFrame({"component": ["blocks.0.attn.hook_z[1]"], "type": ["heads"], "layer": [0],
                         "unit": [1], "value": [0.5], "ci_low": [0.1], "ci_high": [0.9], "n": [8],
                         "estimator": ["atp"], "kind": ["attn.hook_z"]})
    rows = report.tidy(attr, emotion="joy", split="train")
    assert tuple(rows.columns) == report.COLUMNS and rows["measure"].iloc[0] == "atp"
    assert str(rows["layer"].dtype) == "Int64" and rows["size"].isna().all()
    val = pd.DataFrame({"type": ["heads"], "n": [81], "spearman": [0.9], "recall@20": [float("nan")]})
    vrows = report.validation_rows(val, emotion="joy", estimator="atp")
    assert set(vrows["measure"]) == {"spearman", "recall@20"} and (vrows["n"] == 81).all()
    paths = report.write(tmp_path, [rows, vrows], {"command": "circuits", "x": float("nan")})
    back = pd.read_csv(paths["results.csv"])
    assert len(back) == 3 and list(back.columns) == list(report.COLUMNS)
    records = json.loads(paths["results.json"].read_text())
    assert records[2]["value"] is None  # NaN -> null
    run = json.loads(paths["run.json"].read_text())
    assert run["command"] == "circuits" and "environment" in run and run["x"] is None
    assert not list(tmp_path.glob(".*.tmp"))
