"""The figure of ``probe steer-flips``: flip rates against strength, one panel per band."""

from __future__ import annotations

import matplotlib as mpl
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probe.figures import OKABE_ITO, RC, save_figure
from steering.flips.measure import RANDOM

METRICS = (("share", "answers naming the\nsteered emotion"),
           ("flip_to", "answers flipped TO\nthe steered emotion"),
           ("flip_away", "correct answers flipped\nAWAY from gold"))


def plot_flips(table: pd.DataFrame, *, variant: str = "sum", out=None,
               title: str | None = None) -> Figure:
    """Rows: ``share`` (strength 0 = unsteered), ``flip_to``, ``flip_away``; columns: layer
    bands; one line per emotion, the random direction dashed grey; bands of 95% CIs."""
    part = table[table["variant"] == variant]
    bands = list(dict.fromkeys(part["band"]))
    with mpl.rc_context(RC):
        fig = Figure(figsize=(max(7.0, 3.4 * len(bands) + 0.6), 7.6), dpi=300,
                     layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(METRICS), len(bands), squeeze=False, sharex=True, sharey=True)
        names = [d for d in dict.fromkeys(part["direction"]) if d != RANDOM] + [RANDOM]
        for c, band in enumerate(bands):
            for r, (metric, label) in enumerate(METRICS):
                ax = axes[r][c]
                for i, name in enumerate(names):
                    d = part[(part["band"] == band) & (part["metric"] == metric)
                             & (part["direction"] == name)].sort_values("strength")
                    if d.empty:
                        continue
                    x, v = d["strength"].to_numpy(float), d["value"].to_numpy(float)
                    lo, hi = d["ci_low"].to_numpy(float), d["ci_high"].to_numpy(float)
                    if metric == "share":  # strength 0: the unsteered share
                        u = part[(part["band"] == band) & (part["direction"] == name)
                                 & (part["metric"] == "share_unsteered")]
                        x, v = [0.0, *x], [float(u["value"].iloc[0]), *v]
                        lo = [float(u["ci_low"].iloc[0]), *lo]
                        hi = [float(u["ci_high"].iloc[0]), *hi]
                    color = "#8C8C8C" if name == RANDOM else OKABE_ITO[i % len(OKABE_ITO)]
                    style = "--" if name == RANDOM else "-"
                    ax.plot(x, v, style, marker="o", ms=2.5, lw=1.0, color=color,
                            label=f"{name} direction")
                    ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)
                ax.set_ylim(-0.02, 1.02)
                if r == 0:
                    ax.set_title(f"layers {band}", fontsize="medium")
                if r == len(METRICS) - 1:
                    ax.set_xlabel("strength (x typical RMS)")
                if c == 0:
                    ax.set_ylabel(label, fontsize="small")
        found = {}
        for ax in axes.flat:  # the random direction has no share row: gather every panel's
            for h, lab in zip(*ax.get_legend_handles_labels()):
                found.setdefault(lab, h)
        handles, labels = list(found.values()), list(found)
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)),
                   frameon=False)
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig
