"""The figure of ``probe steer-flips``: flip rates against strength, one panel per band."""

from __future__ import annotations

import matplotlib as mpl
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probe.figures import OKABE_ITO, RC, save_figure
from steering.flips import RANDOM

METRICS = (("flip_to", "answers flipped TO the steered emotion"),
           ("flip_away", "correct answers flipped AWAY from gold"))


def plot_flips(table: pd.DataFrame, *, variant: str = "sum", out=None,
               title: str | None = None) -> Figure:
    """Rows: ``flip_to`` and ``flip_away``; columns: layer bands; one line per emotion, the
    random direction dashed grey; bands of 95% CIs."""
    part = table[table["variant"] == variant]
    bands = list(dict.fromkeys(part["band"]))
    with mpl.rc_context(RC):
        fig = Figure(figsize=(3.4 * len(bands) + 0.6, 5.4), dpi=300, layout="constrained")
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
                    color = "#8C8C8C" if name == RANDOM else OKABE_ITO[i % len(OKABE_ITO)]
                    style = "--" if name == RANDOM else "-"
                    ax.plot(d["strength"], d["value"], style, marker="o", ms=2.5, lw=1.0,
                            color=color, label=f"{name} direction")
                    ax.fill_between(d["strength"], d["ci_low"], d["ci_high"], color=color,
                                    alpha=0.12, lw=0)
                ax.set_ylim(-0.02, 1.02)
                if r == 0:
                    ax.set_title(f"layers {band}", fontsize="medium")
                if r == len(METRICS) - 1:
                    ax.set_xlabel("strength (x typical RMS)")
                if c == 0:
                    ax.set_ylabel(label, fontsize="small")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)),
                   frameon=False)
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig
