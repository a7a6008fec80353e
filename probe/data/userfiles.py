"""Read the user's own stimulus file (CSV, TSV, JSON Lines or JSON) into the schema.

The user names the columns; everything else in the file is kept as extra columns.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "mine.csv"
>>> _ = f.write_text("sentence,score\\nI won!,0.9\\nHe left.,0.1\\n")
>>> ds = read_user_file(f, text_column="sentence", label_column="score")
>>> ds.ids, ds.targets
(['row-0', 'row-1'], {'score': 'continuous'})
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from probe.data.readers import VALENCES, build, read_jsonl
from probe.data.schema import DatasetError, EmotionDataset, TargetKind

USER_SUFFIXES = frozenset({".csv", ".tsv", ".jsonl", ".json"})
_RESERVED = ("id", "text", "split", "group")
_SPLIT_ALIASES = {"val": "dev", "valid": "dev", "validation": "dev", "": "all"}


def read_user_file(path: Path, *, text_column: str | None = None,
                   label_column: str | None = None, group_column: str | None = None,
                   id_column: str | None = None) -> EmotionDataset:
    """Load a user file; see :func:`probe.data.loaders.load_dataset` for the options."""
    records, where = _records(path)
    if not records:
        raise DatasetError(f"{path} has no rows (only a header, or nothing); add data rows")
    text_col, label_col = text_column or "text", label_column or "label"
    if label_col in _RESERVED:
        raise DatasetError(f"{path}: label column {label_col!r} clashes with the schema's "
                           f"{_RESERVED}; rename it in the file")
    columns = list(dict.fromkeys(k for r in records for k in r))
    for option, col in (("text_column", text_col), ("label_column", label_col),
                        ("group_column", group_column), ("id_column", id_column)):
        if col is not None and col not in columns:
            raise DatasetError(f"{path}: no column {col!r} (its columns: {columns}); pass "
                               f"{option}= (CLI: --{option.replace('_', '-')}) to name yours")
    kind, labels = _targets([r.get(label_col) for r in records], label_col, path)
    used = {text_col, label_col, group_column, id_column, "split"}
    rows = []
    for i, rec in enumerate(records):
        text = rec.get(text_col)
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}: {where(i)} has no text in column {text_col!r}")
        rid = _cell(rec, id_column, path, where(i)) if id_column else f"row-{i}"
        group = _cell(rec, group_column, path, where(i)) if group_column else rid
        split = _SPLIT_ALIASES.get(str(rec.get("split", "")).strip().lower(),
                                   str(rec.get("split", "")).strip().lower())
        extras = {k: v for k, v in rec.items() if k not in used and k not in _RESERVED}
        rows.append({**extras, "id": rid, "text": text, "split": split, "group": group,
                     label_col: labels[i]})
    order = {} if kind == "continuous" else {label_col: _class_order(labels, kind)}
    return build(path.stem, rows, targets={label_col: kind}, default_target=label_col,
                 class_order=order, source=path)


def _records(path: Path) -> tuple[list[dict], Any]:
    """The file's rows as dicts, and a function naming row ``i`` for error messages."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False, encoding="utf-8")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: cannot be read as {suffix[1:].upper()}: {err}") from None
        return frame.to_dict("records"), lambda i: f"data row {i + 1} (line {i + 2})"
    if suffix == ".jsonl":
        pairs = list(read_jsonl(path))
        return [obj for _, obj in pairs], lambda i: f"line {pairs[i][0]}"
    if suffix == ".json":
        return _json_records(path), lambda i: f"record {i}"
    raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; "
                       f"use one of {sorted(USER_SUFFIXES)}")


def _json_records(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a JSON list of objects, one per row "
                           f"(or use JSON Lines, one object per line)")
    return data


def _cell(rec: dict, col: str, path: Path, where: str) -> str:
    value = rec.get(col)
    if value is None or str(value).strip() == "":
        raise DatasetError(f"{path}: {where} has an empty {col!r}")
    return str(value)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or \
        (isinstance(v, float) and math.isnan(v))


def _targets(values: list, col: str, path: Path) -> tuple[TargetKind, list]:
    """Infer the target kind; missing values become ``None`` (labels) or NaN (numbers)."""
    present = [v for v in values if not _missing(v)]
    if not present:
        raise DatasetError(f"{path}: label column {col!r} is empty in every row")
    if any(isinstance(v, (list, tuple)) for v in present):
        if not all(isinstance(v, (list, tuple)) for v in present):
            raise DatasetError(f"{path}: column {col!r} mixes lists and single values")
        return "multilabel", [None if _missing(v) else tuple(map(str, v)) for v in values]
    numbers = [_number(v) for v in present]
    if all(n is not None for n in numbers):
        return "continuous", [math.nan if _missing(v) else _number(v) for v in values]
    return "label", [None if _missing(v) else str(v).strip() for v in values]


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _class_order(labels: list, kind: TargetKind) -> tuple[str, ...]:
    """Sorted class names; valence names in their usual order; ``neutral`` always last."""
    names = {c for v in labels if v is not None for c in (v if kind == "multilabel" else (v,))}
    if names <= set(VALENCES):
        return tuple(v for v in VALENCES if v in names)
    return tuple(sorted(names, key=lambda c: (c.lower() == "neutral", c)))
