"""The tune half of ``steer-eval``: score grid points, pick configurations, select a point.

:func:`score_points` generates and judges grid points on tune prompts and returns one record
per point (the ``tune.csv`` rows). :func:`best_configs` ranks configurations (method x layers
x positions) by their best feasible strength; :func:`select` chooses, per emotion, the ladder
point with the highest selection score whose perplexity ratio and capability drop meet the
constraints. The selection score is the mean over the judges of the gated, echo-free
expression rate (:func:`steering.eval.score.hits`); nothing of the test half is read here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from steering.eval.grid import Arm, GridPoint


def score_points(scorer, prompts, points: Sequence[GridPoint], vectors: Mapping, *, stage: str,
                 reference: float, n_boot: int = 100, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate and judge ``points`` on ``prompts``; ``(records, replies frame)``."""
    from steering.eval.score import summarize

    arms = [Arm(condition="grid", emotion=p.emotion, setting=p.setting(vectors), point=p)
            for p in points]
    frame = scorer.frame(prompts, arms)
    frame["stage"] = stage
    records = []
    for a, part in frame.groupby("arm", sort=True):
        pt = points[int(a)]
        rows = summarize(part, reference=reference, n_boot=n_boot, seed=seed)
        first = rows[0]
        records.append({
            "stage": stage, "emotion": pt.emotion, **pt.record(), "n": len(part),
            "score": float(np.mean([r["value"] for r in rows])),
            "with_echoes": float(np.mean([r["with_echoes"] for r in rows])),
            **{f"value:{r['judge']}": r["value"] for r in rows},
            **{k: first[k] for k in ("gate_pass", "echo_share", "ppl_ratio", "regime", "loop_share")},
            "capability": math.nan, "capability_drop": math.nan, "point": pt})
    return pd.DataFrame(records), frame


def _rank_key(rec, max_ppl: float) -> tuple:
    feasible = rec["ppl_ratio"] <= max_ppl
    return (feasible, rec["score"] if feasible else -1.0, rec["with_echoes"] if feasible else -1.0,
            -rec["ppl_ratio"])


def best_configs(records: pd.DataFrame, *, k: int, max_ppl: float) -> dict[str, list[GridPoint]]:
    """Per emotion, the best point of each of the ``k`` best configurations.

    A configuration (method, layers, positions) ranks by its best feasible strength (perplexity
    ratio within ``max_ppl``): selection score, then expression with echoes; a configuration
    with no feasible strength ranks last and contributes its weakest strength.
    """
    out: dict[str, list[GridPoint]] = {}
    for emotion, part in records.groupby("emotion", sort=False):
        best = []
        for _, cfg in part.groupby(["method", "layers", "positions"], sort=False):
            recs = cfg.to_dict("records")
            top = max(recs, key=lambda r: _rank_key(r, max_ppl))
            if not top["ppl_ratio"] <= max_ppl:
                top = min(recs, key=lambda r: r["strength"])
            best.append((_rank_key(top, max_ppl), top["point"]))
        best.sort(key=lambda t: t[0], reverse=True)
        out[str(emotion)] = [p for _, p in best[:k]]
    return out


@dataclass(frozen=True, kw_only=True)
class Selection:
    """The operating point chosen for one emotion on the tune half.

    Attributes:
        point: The grid point.
        record: Its tune record (score, judges, perplexity ratio, capability).
        constraints_met: Perplexity ratio and capability drop within bounds.
        note: Why it was chosen (or why no point met the constraints).
        checked: Capability of every candidate measured, ``[(describe, drop)]``.
    """

    point: GridPoint
    record: dict
    constraints_met: bool
    note: str
    checked: tuple[tuple[str, float], ...] = ()


def select(records: pd.DataFrame, *, max_ppl: float, max_drop: float, checks: int,
           capability_drop: Callable[[GridPoint], float]) -> dict[str, Selection]:
    """Per emotion: best feasible point by selection score (weaker strength on ties).

    Candidates within the perplexity bound are taken best first; the capability drop of up to
    ``checks`` of them is measured until one is within ``max_drop``.
    """
    out = {}
    for emotion, part in records.groupby("emotion", sort=False):
        recs = part.to_dict("records")
        feasible = sorted((r for r in recs if r["ppl_ratio"] <= max_ppl),
                          key=lambda r: (-r["score"], r["total_strength"]))
        checked = []
        for rec in feasible[:checks]:
            drop = capability_drop(rec["point"])
            checked.append((rec["point"].describe(), drop))
            if drop <= max_drop:
                out[str(emotion)] = Selection(
                    point=rec["point"], record=rec, constraints_met=True, checked=tuple(checked),
                    note=f"best tune score {rec['score']:.3f} with perplexity ratio "
                         f"{rec['ppl_ratio']:.2f} <= {max_ppl:g} and capability drop "
                         f"{drop:.3f} <= {max_drop:g}")
                break
        else:
            rec = min(recs, key=lambda r: (r["ppl_ratio"], r["total_strength"]))
            out[str(emotion)] = Selection(
                point=rec["point"], record=rec, constraints_met=False, checked=tuple(checked),
                note=f"no tune point met perplexity ratio <= {max_ppl:g} and capability drop <= "
                     f"{max_drop:g} among {len(feasible)} fluent candidates (checked "
                     f"{len(checked)}); reported: the lowest perplexity ratio "
                     f"({rec['ppl_ratio']:.2f})")
    return out


def capability_of(lm, point_setting, items, *, n_boot: int = 200):
    """Capability accuracy with ``point_setting`` held (None: unsteered); the result object."""
    from steering.eval.capability import evaluate_capability
    from steering.inject import steering_hooks

    if point_setting is None or not point_setting.steered:
        return evaluate_capability(lm, items, n_boot=n_boot)
    with lm.hooks(steering_hooks(point_setting, lm)):
        return evaluate_capability(lm, items, n_boot=n_boot)
