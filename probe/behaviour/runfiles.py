"""The run folder of ``probe behave``: the same kind of folder as ``probe sweep`` writes.

``results.csv`` / ``results.json``: one tidy table, one row per measurement with ``value``,
``ci_low``, ``ci_high`` (and ``n``), an ``experiment`` column (``recognition``, ``compare``,
``personas``, ``persona-answers``, ``emotionprompt``, ``emotionprompt-shift``) and the columns
that locate the measurement (template, variant, condition, estimator, site, layer, pooling,
class, metric); ``items_<name>.csv``: per-item answers keyed by the store's sample ids;
``run.json``: command, configuration, provenance and environment; figures as PNG + SVG.
Files are written atomically (a temporary file renamed into place), as JSON and CSV only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ("experiment", "template", "variant", "condition", "kind", "estimator", "direction",
           "task",
           "site", "layer", "pooling", "distance", "class", "metric", "value", "ci_low", "ci_high",
           "n", "n_folds")


def tidy(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One table from ``{experiment: table}`` with the columns of :data:`COLUMNS`."""
    parts = []
    for name, df in tables.items():
        df = df.rename(columns={"persona": "condition"})
        extra = sorted(set(df.columns) - set(COLUMNS))
        if extra:
            raise ValueError(f"table {name!r} has columns outside the schema: {extra}")
        parts.append(df.assign(experiment=name).reindex(columns=list(COLUMNS)))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMNS))
    for col in ("layer", "n", "n_folds"):
        out[col] = pd.array([None if pd.isna(v) else int(v) for v in out[col]], dtype="Int64")
    return out


def _jsonable(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    return v


def write_run(out: str | os.PathLike, results: pd.DataFrame, items: Mapping[str, pd.DataFrame],
              run: Mapping[str, Any]) -> dict[str, Path]:
    """Write the run folder; returns the written paths by name.

    ``run.json`` is written last, so a folder with a ``run.json`` is complete.
    """
    from probe.io import atomic_write
    from probe.io import environment

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json"}
    atomic_write(paths["csv"], results.to_csv(index=False))
    records = [{k: _jsonable(v) for k, v in r.items()} for r in results.to_dict("records")]
    atomic_write(paths["json"], json.dumps(records, indent=1, allow_nan=False) + "\n")
    for name, df in items.items():
        paths[f"items_{name}"] = out / f"items_{name}.csv"
        atomic_write(paths[f"items_{name}"], df.to_csv(index=False))
    paths["run"] = out / "run.json"
    body = {**_jsonable(dict(run)), "environment": environment()}
    atomic_write(paths["run"], json.dumps(body, indent=2, allow_nan=False) + "\n")
    return paths
