"""``probe report RUN... --out report.html``: run folders as one self-contained HTML page.

Every folder a ``probe`` command writes (``sweep`` and the kinds plugins register with
:func:`probe.report_kinds.register_run_kind`) holds a ``run.json`` (written last: a folder without one is unfinished),
figures as PNG (+ SVG) and tables as CSV. The report shows, per run: its kind (the command in
``run.json``, else guessed from the files), the command and provenance, every PNG figure
embedded as base64, and every CSV as an HTML table -- sorted, rounded, trimmed to a readable
size, with a relative link to the full file next to it. Nothing is fetched: no scripts, no
fonts, no stylesheets from elsewhere, so the page reads offline and can be mailed as is.

>>> from probe.report import write_report  # doctest: +SKIP
>>> write_report(["runs/smollm2-135m/emotion-scenarios-label-..."], "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probe.errors import EmoprobeError
from probe.io import atomic_write
from probe.report_captions import caption
from probe.report_kinds import detect_from_files, run_kinds

#: The metric a results table is shown by (the first one present; per experiment for behave).
HEADLINE = ("accuracy", "pearson_r", "r2", "flip_to", "p_true", "shift", "gap")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:72rem;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}
h3{font-size:1.05rem;margin-top:1.5rem}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.85rem}pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;font-size:.8rem;margin:.4rem 0}td,th{border:1px solid #ddd;
padding:.15rem .45rem;text-align:right}th{background:#f0f0f0}td.s,th.s{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}.note{color:#666;font-size:.8rem}.kind{background:#eef;
border-radius:.3rem;padding:0 .4rem;font-size:.85rem}
"""


class ReportError(EmoprobeError, ValueError):
    """A report cannot be made as asked; the message says what to pass instead."""


@dataclass(frozen=True)
class RunFolder:
    """One run folder, read: its kind, run.json, figures and tables (paths)."""

    path: Path
    kind: str
    run: dict
    figures: list[Path]
    tables: list[Path]


def detect_kind(path: Path, run: dict) -> str:
    """The command that wrote ``path``: from ``run.json``'s ``command``, else from its files."""
    words = str(run.get("command", "")).split()
    if len(words) >= 2 and words[0] == "probe" and words[1] in run_kinds():
        return words[1]
    return detect_from_files({p.name for p in path.iterdir()})


def load_run(path: str | os.PathLike) -> RunFolder:
    """Read a run folder (refuses a missing, unfinished or foreign one with the fix)."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is a file; pass the folder a `probe` command wrote")
    run_json = path / "run.json"
    if not run_json.is_file():
        raise ReportError(f"{path} has no run.json: it is not a run folder, or its run did not "
                          "finish (run.json is written last); rerun the command that made it")
    run = _read_json(run_json, "rerun the command that made this folder")
    if not isinstance(run, dict):
        raise ReportError(f"{run_json} holds a JSON {type(run).__name__}, not an object "
                          "({\"command\": ..., ...}); it was not written by a probe command: "
                          "rerun the command that made this folder")
    results_json = path / "results.json"
    if results_json.is_file():
        rows = _read_json(results_json, "the run's tables are damaged: rerun the command that "
                                        "made this folder")
        if not isinstance(rows, (list, dict)):
            raise ReportError(f"{results_json} holds a JSON {type(rows).__name__}, not a table "
                              "(a list of rows); rerun the command that made this folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return RunFolder(path=path, kind=detect_kind(path, run), run=run,
                     figures=[p for p in files if p.suffix.lower() == ".png"],
                     tables=[p for p in files if p.suffix.lower() == ".csv"])


def _read_json(path: Path, fix: str):
    """A JSON file, or a ReportError saying what is wrong with it and what to do."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                          f"{fix}") from None
    except OSError as exc:
        raise ReportError(f"{path} cannot be read ({exc.strerror}); {fix}") from None


# ------------------------------------------------------------------------------ pieces


def figure_html(png: Path, root: Path) -> str:
    """A PNG embedded as base64, captioned with what it shows and its path in the run folder."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    name = png.relative_to(root).as_posix()
    return (f'<figure><img alt="{html.escape(caption(name))}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption(name))} <code>{html.escape(name)}</code>"
            "</figcaption></figure>")


def sweep_summary_html(root: Path) -> str:
    """A sweep's end-of-run summary (peak layer, CI, last layer, selectivity, baselines) per
    pooling, as ``probe sweep`` printed it; a note where the table cannot give one."""
    from probe.results import format_summary, read_results

    try:
        df, _ = read_results(root)
        poolings = [p for p in df["pooling"].dropna().unique()]
        text = "\n\n".join(f"pooling {p}:\n{format_summary(df, pooling=p)}" for p in poolings) \
            or format_summary(df)
    except (ValueError, KeyError, OSError, pd.errors.ParserError) as exc:
        return ('<p class="note">no summary: results.csv is not a sweep table '
                f"({html.escape(str(exc))})</p>")
    return f"<h3>summary</h3><pre>{html.escape(text)}</pre>"


def _round(v):
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.3g}" if abs(v) >= 1000 or (v and abs(v) < 1e-3) \
            else f"{v:.3f}"
    return "" if v is None or v is pd.NA else str(v)


def frame_html(df: pd.DataFrame) -> str:
    """A small table as HTML: numbers right-aligned and rounded (whole-number columns as
    integers), text left-aligned."""
    df = df.copy()
    for c in df.columns:
        v = df[c]
        if pd.api.types.is_float_dtype(v) and v.notna().any() and \
                (v.dropna() == v.dropna().round()).all():
            df[c] = v.astype("Int64")
    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    head = "".join(f'<th class="{"s" if c in text else ""}">{html.escape(str(c))}</th>'
                   for c in df.columns)
    body = "".join("<tr>" + "".join(
        f'<td class="{"s" if c in text else ""}">{html.escape(_round(v))}</td>'
        for c, v in zip(df.columns, row)) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def readable(df: pd.DataFrame, *, kind: str = "run", max_rows: int = 40
             ) -> tuple[pd.DataFrame, str]:
    """Trim a results table to what a reader takes in: per experiment (if the table has
    several) the headline metric only (:data:`HEADLINE`), highest value first (the best
    layers, the strongest effects), columns that are empty throughout dropped, at most
    ``max_rows`` rows.

    Returns:
        ``(table, note)``; the note says what was kept of how many rows.
    """
    if "value" in df.columns and "metric" not in df.columns and kind != "run":
        shown = df.sort_values("value", ascending=False, na_position="last", kind="stable")
        note = "highest value first; "
    elif "metric" not in df.columns or "value" not in df.columns or kind == "run":
        shown, note = df, ""
    else:
        blocks = [(e, g) for e, g in df.groupby("experiment", sort=False)] \
            if "experiment" in df.columns else [(None, df)]
        per = max(8, max_rows // len(blocks))
        kinds = run_kinds()
        experiments = {e: m for k in kinds.values() for e, m in k.experiment_headlines}
        parts, metrics = [], []
        for name, g in blocks:
            have = set(g["metric"])
            first = experiments.get(name) or (kind in kinds and kinds[kind].headline_metric)
            metric = first if first in have else next((m for m in HEADLINE if m in have), None)
            g = g[g["metric"] == metric] if metric is not None else g
            metrics.append(metric or "all metrics")
            g = g.sort_values("value", ascending=False, na_position="last", kind="stable")
            parts.append(g.head(per) if len(blocks) > 1 else g)
        shown = pd.concat(parts)
        note = f"metric {', '.join(dict.fromkeys(metrics))}; "
    shown = shown.dropna(axis=1, how="all")
    shown = shown.loc[:, [c for c in shown.columns if shown[c].astype(str).str.len().max() > 0]]
    if len(shown) > max_rows:
        note += f"first {max_rows} of {len(shown)} rows shown ({len(df)} in the file)"
        shown = shown.head(max_rows)
    else:
        note += f"{len(shown)} of {len(df)} rows shown"
    return shown, note


def table_html(csv: Path, root: Path, out_dir: Path, *, kind: str, max_rows: int) -> str:
    """A CSV trimmed by :func:`readable`, with a relative link to the full file."""
    name = csv.relative_to(root).as_posix()
    link = html.escape(Path(os.path.relpath(csv.resolve(), out_dir.resolve())).as_posix())
    try:
        df = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return f'<p class="note">{html.escape(name)}: not readable as CSV ({exc})</p>'
    shown, note = readable(df, kind=kind if name == "results.csv" else "run",
                           max_rows=max_rows)
    return (f'<h3>{html.escape(name)}</h3><p class="note">{html.escape(note)} · '
            f'<a href="{link}">full CSV</a></p>{frame_html(shown)}')


def _flat(run: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for key, value in run.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out += _flat(value, name + ".")
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out.append((name, text if len(text) <= 160 else text[:157] + "..."))
    return out


def provenance_html(run: dict) -> str:
    """The command, then run.json flattened one level (long values cut; full JSON folded)."""
    rows = [(k, v) for k, v in _flat(run) if k != "command"]
    body = "".join(f'<tr><td class="s">{html.escape(k)}</td><td class="s">{html.escape(v)}'
                   "</td></tr>" for k, v in rows)
    full = json.dumps(run, indent=1, default=str)
    if len(full) > 30000:
        full = full[:30000] + "\n... (cut; see run.json)"
    return (f"<pre>{html.escape(str(run.get('command', '(no command recorded)')))}</pre>"
            f"<details><summary>provenance (run.json)</summary><table>{body}</table>"
            f"<pre>{html.escape(full)}</pre></details>")


# ------------------------------------------------------------------------------ the page


def _anchor(i: int, run: RunFolder) -> str:
    return f"run-{i}-{run.kind}"


def run_html(i: int, run: RunFolder, out_dir: Path, *, max_rows: int) -> str:
    """One run's section: heading, command and provenance, figures, tables."""
    parts = [f'<h2 id="{_anchor(i, run)}">{html.escape(run.path.name)} '
             f'<span class="kind">{html.escape(run.kind)}</span></h2>',
             f'<p class="note">{html.escape(str(run.path))}</p>', provenance_html(run.run)]
    tables = sorted(run.tables, key=lambda p: (p.name != "results.csv", p.as_posix()))
    if run.kind == "sweep" and (run.path / "results.csv").is_file():
        parts.append(sweep_summary_html(run.path))
    if tables:
        parts.append(table_html(tables[0], run.path, out_dir, kind=run.kind, max_rows=max_rows))
    if run.figures:
        parts.append("<h3>figures</h3>")
        parts += [figure_html(png, run.path) for png in run.figures]
    else:
        parts.append('<p class="note">no figures in this folder</p>')
    parts += [table_html(csv, run.path, out_dir, kind=run.kind, max_rows=max(10, max_rows // 2))
              for csv in tables[1:]]
    return "\n".join(parts)


def build_report(runs: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike = ".",
                 title: str | None = None, max_rows: int = 40) -> str:
    """The HTML page of ``runs`` (folders), with links relative to ``out_dir``."""
    if not runs:
        raise ReportError("pass at least one run folder")
    if max_rows < 1:
        raise ReportError(f"--max-rows must be >= 1, got {max_rows}")
    folders = [load_run(r) for r in runs]
    title = title or ("emoprobe report: " + ", ".join(f.path.name for f in folders))
    toc = "".join(f'<li><a href="#{_anchor(i, f)}">{html.escape(f.path.name)}</a> '
                  f"({html.escape(f.kind)}; {len(f.figures)} figures, {len(f.tables)} tables)"
                  "</li>" for i, f in enumerate(folders))
    body = "\n".join(run_html(i, f, Path(out_dir), max_rows=max_rows)
                     for i, f in enumerate(folders))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">made by probe report, {stamp}; "
            f"self-contained (figures embedded; the full CSVs are linked relative to this file)"
            f"</p><ul>{toc}</ul>{body}</body></html>\n")


def write_report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 title: str | None = None, max_rows: int = 40) -> Path:
    """Write :func:`build_report`'s page to ``out`` (atomically); returns its path."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder; give a file name such as {out}/report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    page = build_report(runs, out_dir=out.parent, title=title, max_rows=max_rows)
    atomic_write(out, page)
    return out
