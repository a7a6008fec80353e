"""In-memory stand-ins for activation stores and items tables (behaviour tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def fake_store(X: np.ndarray, y, groups, *, target: str = "label", kind: str = "label",
               poolings=("last",), ids=None) -> xr.Dataset:
    """An opened store: ``X`` is ``[n, layers, poolings, d]``; every layer committed."""
    n, L = X.shape[:2]
    ids = np.asarray(ids if ids is not None else [f"s{i}" for i in range(n)], dtype=object)
    y = np.asarray(y, dtype=float if kind == "continuous" else object)
    ds = xr.Dataset(
        {"hook_resid_post": (("sample", "layer", "pooling", "d_model"), X.astype(np.float32))},
        coords={"sample": ids, "layer": np.arange(L), "pooling": list(poolings),
                "group": ("sample", np.asarray(groups, dtype=object)),
                "text": ("sample", np.array([f"text {i}" for i in range(n)], dtype=object)),
                target: ("sample", y)})
    ds.attrs["emoprobe"] = {"n_samples": n, "n_layers": L, "targets": {target: kind},
                            "default_target": target}
    ds.attrs["progress"] = {f"hook_resid_post/{layer}": n for layer in range(L)}
    return ds


def items_table(ids, groups, gold, answers, classes, *, template="t", variant="sum",
                values=None) -> pd.DataFrame:
    """An items table as :func:`probe.behaviour.recognition.recognise` returns it."""
    answers = list(answers)
    df = pd.DataFrame({"id": ids, "group": groups, "template": template, "variant": variant,
                       "gold": gold, "answer": pd.Series(answers, dtype=object),
                       "correct": [float(a == g) if a is not None else 0.0
                                   for a, g in zip(answers, gold)],
                       "value": values if values is not None else np.nan, "mass": 1.0,
                       "reply": None})
    for c in classes:
        df[f"p:{c}"] = [float(a == c) for a in answers]
    df.attrs.update(target="label", kind="emotion", classes=list(classes), context=False)
    return df
