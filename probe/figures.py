"""Layer-wise figures of a probe sweep, sized for papers.

:func:`plot_layerwise` draws one metric against layer: one line per site with its CI band,
the control-task curve of each site (thin, lighter, same colour, with its own band: the gap
to it is the selectivity), held-out scores when the sweep has them (dashed, same colour, with
a band), the lexical baseline (dashed grey, CI band) and chance (dotted), the embedding output
as points at x = -1 ("emb": probe filled, control hollow, held-out a triangle), and each
site's peak marked ``"L19: 0.93"``. :func:`plot_sweep_panels` puts several metrics side by
side. Both take the tidy table of :mod:`probe.results`. Every mark has a legend entry in its
own colours.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so nothing here
touches pyplot, the global backend or global rcParams.

>>> fig = plot_layerwise(results, out="figures/goemotions_layerwise")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator

from probe.results import (
    EMBED_SITE,
    METRICS,
    Peak,
    default_metric,
    main_evaluation,
    peak,
    select_pooling,
    sites_in,
    validate_results,
)

SINGLE_COLUMN = (3.4, 2.4)  # inches
DOUBLE_COLUMN = (7.0, 2.4)
DPI = 300
# Okabe & Ito (2008), a palette that stays distinct under common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
SITE_COLORS = {"hook_resid_post": "#0072B2", "hook_attn_out": "#D55E00",
               "hook_mlp_out": "#009E73", "hook_resid_pre": "#CC79A7",
               "hook_resid_mid": "#E69F00", EMBED_SITE: "#333333"}
LEXICAL_COLOR, CHANCE_COLOR = "#4D4D4D", "#8C8C8C"
#: Legend swatches that stand for several artists (one control line per site colour, and the
#: embedding's marker) show them side by side.
HANDLERS = {tuple: HandlerTuple(ndivide=None, pad=0.3)}
CONTROL_ALPHA = 0.55  # control lines: the site's colour, lighter and thinner
HELDOUT_STYLE = (0, (3.5, 1.5))  # held-out lines: the site's colour, dashed
METRIC_LABELS = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "auroc": "AUROC",
                 "r2": "R²", "pearson_r": "Pearson r", "selectivity": "Selectivity"}
RC = {"font.size": 7, "axes.labelsize": 7, "axes.titlesize": 8, "xtick.labelsize": 7,
      "ytick.labelsize": 7, "legend.fontsize": 7, "axes.linewidth": 0.6,
      "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5,
      "ytick.major.size": 2.5, "xtick.major.pad": 2, "ytick.major.pad": 2,
      "axes.labelpad": 2, "axes.spines.top": False, "axes.spines.right": False,
      "legend.handlelength": 1.8, "legend.columnspacing": 1.2, "legend.borderaxespad": 0.2,
      "svg.fonttype": "none", "pdf.fonttype": 42, "savefig.dpi": DPI}
# Where a peak label may go, tried in order: (dx, dy) in points, horizontal alignment.
_LABEL_SLOTS = ((0, 5, "center"), (-4, 4, "right"), (4, 4, "left"), (0, 12, "center"),
                (-10, 10, "right"), (10, 10, "left"), (-5, -10, "right"), (5, -10, "left"),
                (0, -12, "center"), (0, 20, "center"), (0, -22, "center"),
                (-12, -18, "right"), (12, -18, "left"), (0, 28, "center"), (0, -32, "center"))


def plot_layerwise(df: pd.DataFrame, *, metric: str | None = None,
                   out: str | os.PathLike | None = None, title: str | None = None,
                   sites: Sequence[str] | None = None, ax: Axes | None = None,
                   pooling: str | None = None, heldout_label: str | None = None) -> Figure:
    """Plot one metric against layer for each site, with baselines, control and peaks.

    Cross-validated scores are solid lines with their CI band; held-out scores (a sweep with
    ``evaluation == "heldout"`` rows next to ``"cv"`` ones) are dashed in the same colour, with
    their own band; a table with held-out rows only draws those as the main lines.

    Args:
        df: A results table (:func:`probe.results.validate_results` schema).
        metric: Metric to plot; default ``"accuracy"`` (classification) or ``"r2"``
            (regression).
        out: Path stem; writes ``{out}.png`` (300 dpi) and ``{out}.svg`` (text as text).
        title: Axes title.
        sites: Sites to draw, in legend order; default every site in ``df``.
        ax: Axes to draw into (legend goes to its right); default a new single-column figure
            (3.4 x 2.4 in, legend below).
        pooling: Which pooling to draw (required when the table holds several).
        heldout_label: What the held-out data are, for the legend (e.g. the dataset name).

    Returns:
        The figure drawn on.
    """
    df = select_pooling(validate_results(df), pooling)
    metric = metric or default_metric(df)
    with mpl.rc_context(RC):
        fig = _new_figure(SINGLE_COLUMN) if ax is None else _root(ax)
        own = ax is None
        ax = fig.add_subplot() if own else ax
        entries, marks = _draw_metric(ax, df, metric, sites, heldout_label)
        if title:
            ax.set_title(title)
        if own:
            _figure_legend(fig, entries, per_row=3)
        else:
            ax.legend(*zip(*entries), loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False,
                      handler_map=HANDLERS)
        _mark_peaks(fig, marks)
        if out is not None:
            save_figure(fig, out)
    return fig


def plot_sweep_panels(df: pd.DataFrame, *, metrics: Sequence[str] | None = None,
                      out: str | os.PathLike | None = None, title: str | None = None,
                      sites: Sequence[str] | None = None, pooling: str | None = None,
                      heldout_label: str | None = None) -> Figure:
    """One :func:`plot_layerwise` panel per metric, side by side at double-column width (7 in).

    Args:
        df: A results table.
        metrics: Metrics to plot, one panel each; default every probe metric in ``df``.
        out: Path stem; writes ``{out}.png`` and ``{out}.svg``.
        title: Figure title.
        sites: Sites to draw; default every site in ``df``.
        pooling: Which pooling to draw (required when the table holds several).
        heldout_label: What the held-out data are, for the legend.
    """
    df = select_pooling(validate_results(df), pooling)
    present = set(df.loc[df["estimator"] == "probe", "metric"])
    metrics = list(metrics or [m for m in METRICS if m in present])
    with mpl.rc_context(RC):
        fig = _new_figure(DOUBLE_COLUMN)
        axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
        entries, marks = {}, []
        for ax, metric in zip(axes, metrics):
            drawn, peaks = _draw_metric(ax, df, metric, sites, heldout_label)
            for handle, label in drawn:
                entries.setdefault(label, handle)
            marks += peaks
        if title:
            fig.suptitle(title)
        _figure_legend(fig, [(h, label) for label, h in entries.items()], per_row=8)
        _mark_peaks(fig, marks)
        if out is not None:
            save_figure(fig, out)
    return fig


def save_figure(fig: Figure, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``fig`` as ``{out}.png`` (300 dpi) and ``{out}.svg``; returns the paths by format."""
    stem = Path(out)
    if stem.suffix.lower() in (".png", ".svg", ".pdf"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {fmt: stem.with_name(f"{stem.name}.{fmt}") for fmt in ("png", "svg")}
    with mpl.rc_context(RC):
        for fmt, path in paths.items():
            fig.savefig(path, format=fmt, dpi=DPI)
    return paths


# ---------------------------------------------------------------------------- drawing


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches in the house style (constrained layout, Agg canvas)."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.04)
    return fig


_new_figure = new_figure  # the old private name


def _root(ax: Axes) -> Figure:
    fig = ax.figure
    while getattr(fig, "figure", fig) is not fig:  # SubFigure -> its parent
        fig = fig.figure
    return fig


def _draw_metric(ax: Axes, df: pd.DataFrame, metric: str, sites: Sequence[str] | None,
                 heldout_label: str | None = None):
    """Draw one metric into ``ax``; returns (legend entries [(handle, label)],
    [(ax, Peak, colour)])."""
    if not ((df["estimator"] == "probe") & (df["metric"] == metric)).any():
        raise ValueError(f"no probe rows for metric {metric!r}; "
                         f"metrics: {sorted(set(df['metric']))}")
    all_sites = sites_in(df)
    unknown = sorted(set(sites or ()) - set(all_sites))
    if unknown:
        raise ValueError(f"sites {unknown} not in results; sites: {all_sites}")
    colors = _site_colors(all_sites)
    main = main_evaluation(df)
    transfer = main == "cv" and not _curve(df, "probe", metric, None, "heldout").empty
    entries, marks, layers = [], [], []
    control, held = [], []  # legend swatches: one per drawn site, in its colour
    for site in [s for s in (sites or all_sites) if s != EMBED_SITE]:
        probe = _curve(df, "probe", metric, site, main)
        if probe.empty:
            continue
        entries.append((_draw_site(ax, probe, colors[site], site), _short(site)))
        control += _draw_control(ax, _curve(df, "control", metric, site, main), colors[site], site)
        if transfer:
            held += _draw_heldout(ax, _curve(df, "probe", metric, site, "heldout"),
                                  colors[site], site)
        layers += list(probe["layer"])
        marks.append((ax, peak(df, site, metric, main), colors[site]))
    embed = _draw_embed(ax, df, metric, colors, main, transfer) \
        if EMBED_SITE in (sites or all_sites) else {}
    if "probe" in embed:
        entries.append((embed["probe"], _short(EMBED_SITE)))
    if control or "control" in embed:
        entries.append((tuple(control[:3] + [embed[k] for k in ("control",) if k in embed]),
                        "control task"))
    if held or "heldout" in embed:
        entries.append((tuple(held[:3] + [embed[k] for k in ("heldout",) if k in embed]),
                        f"held-out: {heldout_label}" if heldout_label else "held-out"))
    entries += _draw_references(ax, df, metric, main, transfer)
    _layer_axis(ax, layers, "probe" in embed)
    _value_axis(ax, df, metric, sites or all_sites)
    return entries, marks


def _site_colors(sites: Sequence[str]) -> dict[str, str]:
    spare = iter([c for c in OKABE_ITO if c not in SITE_COLORS.values()] + list(OKABE_ITO))
    return {s: SITE_COLORS.get(s) or next(spare) for s in sites}


def _curve(df: pd.DataFrame, estimator: str, metric: str, site: str | None,
           evaluation: str) -> pd.DataFrame:
    rows = df[(df["estimator"] == estimator) & (df["metric"] == metric)
              & (df["evaluation"] == evaluation)]
    if site is not None:
        rows = rows[rows["site"] == site]
    rows = rows.dropna(subset=["value", "layer"]).sort_values("layer")
    return rows.assign(layer=rows["layer"].astype(int))


def _band(ax: Axes, rows: pd.DataFrame, color: str, alpha: float, gid: str) -> None:
    x, y = rows["layer"].to_numpy(), rows["value"].to_numpy()
    lo, hi = rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy()
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(x, np.where(ok, lo, y), np.where(ok, hi, y), where=ok, color=color,
                        alpha=alpha, lw=0, zorder=1, gid=gid)


def _draw_site(ax: Axes, rows: pd.DataFrame, color: str, site: str) -> Line2D:
    _band(ax, rows, color, 0.18, f"ci:{site}")
    sparse = len(rows) <= 12  # few layers stored: show where the samples are
    (line,) = ax.plot(rows["layer"], rows["value"], color=color, lw=1.3, zorder=3,
                      marker="o" if sparse else None, ms=2.2, label=_short(site),
                      gid=f"probe:{site}")
    return line


def _draw_control(ax: Axes, rows: pd.DataFrame, color: str, site: str) -> list[Line2D]:
    """The control task: a thin, lighter line in the site's colour, with its own CI band."""
    if rows.empty:
        return []
    _band(ax, rows, color, 0.07, f"control_ci:{site}")
    (line,) = ax.plot(rows["layer"], rows["value"], color=color, lw=0.7, alpha=CONTROL_ALPHA,
                      zorder=2, gid=f"control:{site}", label=f"_control {_short(site)}")
    return [line]


def _draw_heldout(ax: Axes, rows: pd.DataFrame, color: str, site: str) -> list[Line2D]:
    """Held-out scores: the site's colour, dashed, with a lighter CI band."""
    if rows.empty:
        return []
    _band(ax, rows, color, 0.10, f"heldout_ci:{site}")
    (line,) = ax.plot(rows["layer"], rows["value"], color=color, lw=1.1, ls=HELDOUT_STYLE,
                      zorder=3, gid=f"heldout:{site}", label=f"_heldout {_short(site)}")
    return [line]


def _draw_embed(ax: Axes, df: pd.DataFrame, metric: str, colors: dict[str, str], main: str,
                transfer: bool) -> dict[str, Line2D]:
    """The embedding output at x = -1: probe filled, control hollow (diamonds), held-out a
    filled triangle; each with its CI as a vertical bar. Returns the markers drawn."""
    rows = df[(df["site"] == EMBED_SITE) & (df["metric"] == metric)].dropna(subset=["value"])
    color, drawn = colors[EMBED_SITE], {}
    styles = [("probe", main, "D", color), ("control", main, "D", "white")]
    styles += [("heldout", "heldout", "^", color)] if transfer else []
    for name, evaluation, marker, face in styles:
        estimator = "control" if name == "control" else "probe"
        row = rows[(rows["estimator"] == estimator) & (rows["evaluation"] == evaluation)]
        if row.empty:
            continue
        r = row.iloc[0]
        if pd.notna(r["ci_low"]) and pd.notna(r["ci_high"]):
            ax.vlines(-1, r["ci_low"], r["ci_high"], color=color, lw=0.8, alpha=0.6, zorder=3)
        (drawn[name],) = ax.plot([-1], [r["value"]], ls="none", marker=marker, ms=2.8, mfc=face,
                                 mec=color, mew=0.7, zorder=4, gid=f"{name}:{EMBED_SITE}",
                                 label="_embed")
    return drawn


def _draw_references(ax: Axes, df: pd.DataFrame, metric: str, main: str,
                     transfer: bool) -> list[tuple]:
    """Lexical baselines (CV dashed with its CI band; held-out dash-dot) and chance (dotted).
    Selectivity has no chance level: its panel gets an unlabelled zero line instead."""
    entries = []
    lexical = _reference(df, "lexical", metric, main)
    if lexical is not None:
        if pd.notna(lexical["ci_low"]) and pd.notna(lexical["ci_high"]):
            ax.axhspan(lexical["ci_low"], lexical["ci_high"], color=LEXICAL_COLOR, alpha=0.1,
                       lw=0, zorder=0, gid="lexical_ci")
        line = ax.axhline(lexical["value"], color=LEXICAL_COLOR, ls="--", lw=0.8, zorder=1,
                          gid="lexical", label="lexical baseline")
        entries.append((line, "lexical baseline"))
    held = _reference(df, "lexical", metric, "heldout") if transfer else None
    if held is not None:
        line = ax.axhline(held["value"], color=LEXICAL_COLOR, ls="-.", lw=0.7, zorder=1,
                          gid="heldout_lexical", label="held-out lexical")
        entries.append((line, "held-out lexical"))
    if metric == "selectivity":
        ax.axhline(0.0, color=CHANCE_COLOR, ls="-", lw=0.5, zorder=1, gid="zero", label="_zero")
        return entries
    chance = _reference(df, "chance", metric, main)
    if chance is not None:
        line = ax.axhline(chance["value"], color=CHANCE_COLOR, ls=":", lw=0.9, zorder=1,
                          gid="chance", label="chance")
        entries.append((line, "chance"))
    return entries


def _reference(df: pd.DataFrame, estimator: str, metric: str, evaluation: str) -> pd.Series | None:
    rows = df[(df["estimator"] == estimator) & (df["metric"] == metric)
              & (df["evaluation"] == evaluation)].dropna(subset=["value"])
    return None if rows.empty else rows.iloc[0]


def _layer_axis(ax: Axes, layers: list[int], has_embed: bool) -> None:
    """Integer layer ticks spaced for the axes' final width, with "emb" at x = -1."""
    first, last = (min(layers), max(layers)) if layers else (0, 0)
    left = -1 if has_embed else first
    ax.xaxis.set_major_locator(_LayerLocator(first, last, has_embed))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "emb" if x == -1 else f"{x:.0f}"))
    ax.set_xlim(left - 0.8, last + 0.8)
    ax.set_xlabel("Layer")


class _LayerLocator(Locator):
    """Integer ticks within ``[first, last]``, as many as the axis length allows (at most 8),
    plus -1 for the embedding with the ticks too close to it dropped."""

    def __init__(self, first: int, last: int, embed: bool):
        self.first, self.last, self.embed = first, last, embed

    def __call__(self) -> list[int]:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> list[int]:
        nbins = max(2, min(8, self.axis.get_tick_space())) if self.axis else 6
        locator = MaxNLocator(nbins=nbins, integer=True, steps=[1, 2, 5, 10])
        ticks = [int(t) for t in locator.tick_values(self.first, self.last)
                 if self.first <= t <= self.last]
        if not self.embed:
            return ticks
        gap = max(1.0, 0.08 * (self.last + 1))  # keep clear of the "emb" label
        return [-1] + [t for t in ticks if t + 1 >= gap]


def _value_axis(ax: Axes, df: pd.DataFrame, metric: str, sites: Sequence[str]) -> None:
    """Y limits from everything drawn, with headroom above for the peak labels."""
    drawn = df[(df["metric"] == metric)
               & (df["site"].isin(list(sites)) | df["estimator"].isin(["lexical", "chance"]))]
    ys = drawn[["value", "ci_low", "ci_high"]].to_numpy(dtype=float).ravel()
    ys = np.append(ys[np.isfinite(ys)], 0.0 if metric == "selectivity" else [])
    low, high = ys.min(), ys.max()
    span = high - low or 1.0
    ax.set_ylim(low - 0.06 * span, high + 0.2 * span)
    ticks = MaxNLocator(nbins=5).tick_values(*ax.get_ylim())
    # Every metric is at most 1: no tick above it, however much headroom the labels need.
    ax.set_yticks([t for t in ticks if low - 0.06 * span <= t <= min(1.0, high + 0.2 * span)])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))


def _figure_legend(fig: Figure, entries: list[tuple], per_row: int = 4) -> None:
    rows = math.ceil(len(entries) / per_row)
    fig.legend(*zip(*entries), loc="outside lower center", ncol=math.ceil(len(entries) / rows),
               frameon=False, handler_map=HANDLERS)


def _short(site: str) -> str:
    return site.removeprefix("hook_")


# ---------------------------------------------------------------------------- peak labels


def _mark_peaks(fig: Figure, marks: list[tuple[Axes, Peak, str]]) -> None:
    """Mark each site's peak and label it "L19: 0.93" where it covers the fewest lines."""
    for ax, pk, color in marks:
        ax.plot([pk.layer], [pk.value], ls="none", marker="o", ms=3.6, mfc=color, mec="white",
                mew=0.6, zorder=5, gid=f"peak:{pk.site}", label="_peak")
    fig.draw_without_rendering()  # settle the layout so display coordinates are final
    obstacles = {ax: _line_points(ax) for ax in {m[0] for m in marks}}
    placed: dict[Axes, list] = {ax: [] for ax in obstacles}
    for ax, pk, color in sorted(marks, key=lambda m: -m[1].value):  # top peak gets first pick
        best = None
        for dx, dy, ha in _LABEL_SLOTS:
            ann = ax.annotate(pk.label, (pk.layer, pk.value), xytext=(dx, dy),
                              textcoords="offset points", ha=ha,
                              va="bottom" if dy > 0 else "top", color=color, fontsize=7,
                              zorder=6, gid=f"peak_label:{pk.site}", annotation_clip=False)
            ann.set_in_layout(False)
            box = ann.get_window_extent()
            cost = _collisions(box, ax, obstacles[ax], placed[ax], pk.value)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        cost, ann, box = best
        if cost:  # no free slot: keep the label legible over what it covers
            ann.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.4})
        placed[ax].append((box, pk.value))


def _line_points(ax: Axes) -> np.ndarray:
    """Display coordinates of points along every line in ``ax``, about 2 px apart."""
    points = []
    for line in ax.get_lines():
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        xy = xy[np.isfinite(xy).all(axis=1)]
        points.append(xy)
        for a, b in itertools.pairwise(xy):
            n = int(np.hypot(*(b - a)) // 2)
            if n > 1:
                points.append(a + np.linspace(0, 1, n)[:, None] * (b - a))
    return np.concatenate(points) if points else np.empty((0, 2))


def _collisions(box, ax: Axes, points: np.ndarray, placed: list, value: float) -> float:
    """How badly a label's box collides: line points under it, other labels, leaving the axes,
    and sitting above the label of a higher peak (stacked labels read in the curves' order)."""
    pad = 1.5
    inside = ((points[:, 0] > box.x0 - pad) & (points[:, 0] < box.x1 + pad)
              & (points[:, 1] > box.y0 - pad) & (points[:, 1] < box.y1 + pad))
    frame = ax.get_window_extent()
    outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
    overlaps = sum(box.overlaps(b) for b, _ in placed)
    inverted = sum(b.x0 < box.x1 and box.x0 < b.x1 and box.y0 > b.y0 and value < v
                   for b, v in placed)
    return float(inside.sum()) + 1000.0 * overlaps + 500.0 * outside + 200.0 * inverted
