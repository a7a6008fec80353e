"""The results folder of ``probe circuits``: one tidy table, run.json, scores, circuits, figures.

``results.csv`` / ``results.json`` hold one row per measurement with these columns:

``emotion``    the class whose metric is explained (``happiness``)
``measure``    ``atp``, ``atp*``, ``ig`` (attribution); ``patch:pairs``, ``patch:mean``,
               ``patch:zero`` (ground truth); ``spearman``, ``pearson``, ``spearman_abs``,
               ``recall@10/20/50`` (with ``_low``/``_high`` bootstrap bounds and
               ``_random_p95``), ``sign_agreement``, ``false_negatives`` (validation);
               ``error`` (normalised ``|M_k - M| / |M_0 - M|``), ``faithfulness``,
               ``completeness`` (circuit curves); ``influence`` (Wang et al.'s sublayer influence)
``type``       component type (``heads``, ``neurons``, ...); NA for circuit curves
``component``  the component (``blocks.5.attn.hook_z[3]``); NA for summaries
``layer``, ``unit``  nullable integers
``size``       circuit size (curves only)
``split``      ``train`` / ``test`` prompts (NA where not applicable)
``value``, ``ci_low``, ``ci_high``, ``n``  estimate, 95% bootstrap CI over scenario groups, prompts

Attribution rows for neurons keep the 200 largest ``|estimate|`` per emotion; every score is in
``scores.safetensors`` (``{emotion}/{estimator}/{site}`` -> ``[n_units]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ("emotion", "measure", "type", "component", "layer", "unit", "size", "split", "value",
           "ci_low", "ci_high", "n")


def tidy(df: pd.DataFrame, **fixed) -> pd.DataFrame:
    """``df`` with the schema's columns (missing ones NA) in order; ``fixed`` fills columns."""
    df = df.assign(**fixed)
    if "estimator" in df and "measure" not in df:
        df = df.rename(columns={"estimator": "measure"})
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    out = df[list(COLUMNS)].copy()
    for c in ("layer", "unit", "size", "n"):
        out[c] = pd.array(pd.to_numeric(out[c], errors="coerce"), dtype="Int64")
    for c in ("value", "ci_low", "ci_high"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


def validation_rows(table: pd.DataFrame, *, emotion: str, estimator: str) -> pd.DataFrame:
    """The :func:`circuits.validate.compare` table as tidy rows (one per type x statistic)."""
    stats = [c for c in table.columns if c not in ("type", "n")]
    long = table.melt(id_vars=["type", "n"], value_vars=stats, var_name="measure")
    return tidy(long, emotion=emotion, component=f"{estimator} vs patching")


def curve_rows(curves: pd.DataFrame, *, emotion: str) -> pd.DataFrame:
    parts = []
    for m in ("error", "faithfulness", "completeness"):
        if m not in curves:
            continue
        d = curves[curves[m].notna()]
        parts.append(tidy(pd.DataFrame({"size": d["size"], "split": d["split"], "value": d[m],
                                        "ci_low": d[f"{m}_low"], "ci_high": d[f"{m}_high"],
                                        "n": d["n"]}), emotion=emotion, measure=m))
    return pd.concat(parts, ignore_index=True)


def write(out_dir: str | os.PathLike, rows: list[pd.DataFrame], run: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json`` and ``run.json`` atomically."""
    from probe.io import atomic_write
    from probe.io import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.concat([r for r in rows if len(r)], ignore_index=True) if rows else tidy(pd.DataFrame())
    records = [{k: _scalar(v) for k, v in r.items()} for r in df.to_dict("records")]
    texts = {"results.csv": df.to_csv(index=False),
             "results.json": json.dumps(records, indent=1, allow_nan=False) + "\n",
             "run.json": json.dumps(clean_json({**run, "environment": environment()}), indent=2,
                                    default=_default, allow_nan=False) + "\n"}
    paths = {}
    for name, text in texts.items():
        paths[name] = out / name
        atomic_write(paths[name], text)
    return paths


def _scalar(v):
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and np.isnan(obj):
        return None
    raise TypeError(f"not JSON-serialisable: {obj!r}")


def clean_json(obj):
    """Replace NaN and infinite floats by None recursively (JSON has neither; e.g. a split-half
    check with too few scenarios, an error whose empty circuit equals the model)."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj
