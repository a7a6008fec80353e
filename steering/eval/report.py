"""What ``steer-eval`` writes: results.csv/json, tune.csv, replies.csv, run.json, figures,
examples.html.

:func:`write_report` writes into a temporary folder and moves it into place only when every
file is there (nothing half-written looks complete). :func:`print_summary` prints the held-out
table (mean and per emotion, each judge, with CIs) as ``probe sweep`` prints its summary.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import uuid
from pathlib import Path

import pandas as pd

_TUNE_COLUMNS = ("stage", "emotion", "method", "layers", "positions", "strength", "total_strength",
                 "n", "score", "with_echoes", "gate_pass", "echo_share", "ppl_ratio", "regime",
                 "loop_share", "capability", "capability_drop")


def _clean(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def selections_record(result) -> dict:
    return {e: {**s.point.record(), "description": s.point.describe(),
                "constraints_met": s.constraints_met, "note": s.note,
                "tune": {k: v for k, v in s.record.items() if k != "point"},
                "capability_checked": [list(c) for c in s.checked]}
            for e, s in result.selections.items()}


def write_report(result, out: str | os.PathLike, *, run: dict, examples: int = 5) -> Path:
    """Write every output of one run into ``out`` (must not exist or be empty)."""
    from steering.figures import dose_response_figure, pareto_figure

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or delete it")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        table = result.table
        table.to_csv(tmp / "results.csv", index=False)
        tune = result.tune[[c for c in (*_TUNE_COLUMNS, *[c for c in result.tune.columns
                                                         if c.startswith("value:")])
                            if c in result.tune.columns]]
        tune.to_csv(tmp / "tune.csv", index=False)
        result.test.drop(columns=["signals"]).to_csv(tmp / "replies.csv", index=False)
        cap = {k: v for k, v in result.capability.items() if not k.startswith("_")}
        (tmp / "results.json").write_text(json.dumps(_clean({
            "rows": table.to_dict("records"), "comparison": result.comparison,
            "selected": selections_record(result), "capability": cap,
            "reference_perplexity": result.references}), indent=1) + "\n")
        (tmp / "run.json").write_text(json.dumps(_clean({
            **run, "config": result.config.record(), "seconds_per_stage": result.seconds,
            "reference_perplexity": result.references}), indent=1, default=str) + "\n")
        dose_response_figure(result.tune, result.selections, tmp / "dose_response",
                             max_ppl=result.config.max_ppl_ratio)
        pareto_figure(result.tune, result.selections, tmp / "pareto",
                      max_ppl=result.config.max_ppl_ratio)
        (tmp / "examples.html").write_text(examples_html(result, per_condition=examples))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def examples_html(result, *, per_condition: int = 5) -> str:
    """Prompt, condition, reply, each judge's label and the gate's verdict, per emotion."""
    from steering.eval.score import judge_names

    frame = result.test
    judges = judge_names(frame)
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>steer-eval examples</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:auto}td{vertical-align:top;"
             "border-bottom:1px solid #ddd;padding:4px}.fail{color:#b00}.hit{background:#dfd}"
             "pre{white-space:pre-wrap;margin:0;font-family:inherit}</style>",
             "<h1>steer-eval: held-out replies</h1><p>Green label: the judge says the target "
             "emotion and the reply counts (gate passed, no echo). Gate verdicts in red failed.</p>"]
    for e in result.config.emotions:
        sel = result.selections[e]
        parts.append(f"<h2>{esc(e)}</h2><p>selected: {esc(sel.point.describe())}; "
                     f"{esc(sel.note)}</p><table><tr><th>prompt</th><th>condition</th>"
                     f"<th>reply</th>" + "".join(f"<th>{esc(j)}</th>" for j in judges)
                     + "<th>gate</th><th>echo</th><th>ppl</th></tr>")
        part = frame[frame["target"] == e]
        for cond, rows in part.groupby("condition", sort=False):
            for _, r in rows.head(per_condition).iterrows():
                ok = bool(r["passed"]) and not bool(r["echo"])
                labels = "".join(
                    f"<td class='{'hit' if ok and r[f'label:{j}'] == e else ''}'>"
                    f"{esc(str(r[f'label:{j}']))}</td>" for j in judges)
                gate = "pass" if r["passed"] else f"<span class='fail'>{esc(str(r['reason']))}</span>"
                parts.append(f"<tr><td>{esc(r['prompt'])}</td><td>{esc(cond)}</td>"
                             f"<td><pre>{esc(r['reply'])}</pre></td>{labels}<td>{gate}</td>"
                             f"<td>{'yes' if r['echo'] else ''}</td><td>{r['perplexity']:.1f}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def print_summary(result, out: Path | None = None) -> None:
    """The held-out table: per emotion and condition, each judge's gated expression and CI."""
    t = result.table
    judges = list(dict.fromkeys(t["judge"]))
    print(f"held-out expression (gated, echoes not counted; 95% CI over prompts), "
          f"{int(t[t.emotion != 'mean'].n.max())} replies per cell:")
    head = f"{'emotion':10s} {'condition':24s} " + " ".join(f"{j:>22s}" for j in judges) \
        + f" {'ppl ratio':>9s} {'cap drop':>8s}  regime"
    print(head)
    for (emotion, cond), part in t.groupby(["emotion", "condition"], sort=False):
        cells = []
        for j in judges:
            r = part[part.judge == j]
            cells.append(f"{r.value.iloc[0]:.2f} [{r.ci_low.iloc[0]:.2f}, {r.ci_high.iloc[0]:.2f}]"
                         if len(r) else "-")
        first = part.iloc[0]
        drop = first.get("capability_drop", math.nan)
        regime = first.get("regime", "")
        print(f"{emotion:10s} {cond:24s} " + " ".join(f"{c:>22s}" for c in cells)
              + f" {first.ppl_ratio:9.2f} {'-' if pd.isna(drop) else f'{drop:8.3f}':>8s}  "
              + ("" if pd.isna(regime) else str(regime)))
    for c in result.comparison:
        print(f"{c['condition']} - {c['versus']} ({c['judge']}): {c['difference']:+.3f} "
              f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
              + ("  (CI excludes 0)" if c["outside_ci"] else ""))
    if out is not None:
        print(f"wrote results.csv/json, tune.csv, replies.csv, run.json, dose_response.png/svg, "
              f"pareto.png/svg, examples.html to {out}")
