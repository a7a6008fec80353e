"""Figures of the geometry protocol (PNG + SVG, paper-sized, no pyplot state touched).

* ``emotion_map_<source>``: emotions on PC1 x PC2 at the layer where ``|r(PC1, valence)|``
  peaks, each point labelled and coloured by its human valence rating;
* ``layer_profile``: ``|r(PC1, valence)|`` and ``|r(PC2, arousal)|`` per layer with bootstrap
  95% CIs and the permutation null's 95th percentile (grey band), one panel per source;
* ``rdm_agreement``: RDM Spearman agreement between sources (matrix at one layer, with CIs),
  and its layer profile per pair.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probe.figures import RC, save_figure
from steering.geometry.summary import headline

PROFILES = (("valence", 1, "#1f77b4"), ("arousal", 2, "#d62728"), ("arousal", 1, "#ff9896"))


def _figure(size) -> Figure:
    fig = Figure(figsize=size, dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def best_layer(table: pd.DataFrame, source: str, scale: str = "valence", pc: int = 1) -> int:
    rows = headline(table, source, scale, pc)
    return int(rows.loc[rows.value.idxmax(), "layer"])


def emotion_map(table, full, data, ratings, stem: Path) -> Path:
    scale = "valence" if "valence" in ratings.scales else ratings.scales[0]
    si = ratings.scales.index(scale)
    layer = best_layer(table, data.name, scale)
    li = data.layers.index(layer)
    scores = full["scores"][li].numpy()
    val = ratings.subset(data.emotions).values[:, si].numpy()
    r = full["r"]["pearson"][li]
    with mpl.rc_context(RC):
        fig = _figure((4.2, 3.6))
        ax = fig.add_subplot()
        sign = np.sign(float(r[0, si])) or 1.0  # orient PC1 so that valence increases to the right
        x, y = sign * scores[:, 0], scores[:, 1]
        sc = ax.scatter(
            x,
            y,
            c=val,
            cmap="RdYlBu",
            vmin=float(val.min()),
            vmax=float(val.max()),
            s=22,
            edgecolors="k",
            linewidths=0.4,
            zorder=3,
        )
        for xi, yi, name in zip(x, y, data.emotions):
            ax.annotate(name, (xi, yi), xytext=(3, 2), textcoords="offset points", fontsize=5.5)
        ax.axhline(0, color="0.85", lw=0.5, zorder=1)
        ax.axvline(0, color="0.85", lw=0.5, zorder=1)
        share = full["share"][li].numpy()
        ax.set_xlabel(
            f"PC1 ({share[0]:.0%} of variance; r with {scale} {abs(float(r[0, si])):.2f})"
        )
        ax.set_ylabel(f"PC2 ({share[1]:.0%})" if len(share) > 1 else "PC2")
        ax.set_title(f"{data.name}: emotion vectors at layer {layer}")
        fig.colorbar(sc, ax=ax, label=f"human {scale} rating", shrink=0.8)
        save_figure(fig, stem)
    return stem.with_suffix(".png")


def layer_profile(table: pd.DataFrame, sources: list[str], stem: Path) -> Path:
    rows = table[(table.experiment == "pc_vs_rating") & (table.metric == "abs_r")]
    profiles = PROFILES
    if not {"valence", "arousal"} & set(rows.scale):  # a ratings file with other scales
        first = list(dict.fromkeys(rows.scale))[0]
        profiles = ((first, 1, "#1f77b4"), (first, 2, "#d62728"))
    n = len(sources)
    cols = min(n, 3)
    nrows = -(-n // cols)
    with mpl.rc_context(RC):
        fig = _figure((2.6 * cols + 0.4, 2.3 * nrows + 0.5))
        axes = fig.subplots(nrows, cols, sharey=True, squeeze=False).ravel()
        for ax in axes[n:]:
            ax.set_visible(False)
        for ax, src in zip(axes, sources):
            for scale, pc, color in profiles:
                d = rows[
                    (rows.source == src) & (rows.scale == scale) & (rows.pc == pc)
                ].sort_values("layer")
                if d.empty:
                    continue
                ax.plot(d.layer, d.value, color=color, lw=1.1, label=f"|r(PC{pc}, {scale})|")
                if d.ci_low.notna().any():
                    ax.fill_between(d.layer, d.ci_low, d.ci_high, color=color, alpha=0.18, lw=0)
                if (scale, pc) == profiles[0][:2]:
                    ax.fill_between(
                        d.layer,
                        0,
                        d.null_95,
                        color="0.6",
                        alpha=0.3,
                        lw=0,
                        label="permutation null, 95th pct.",
                    )
            ax.axhline(0.7, color="0.3", lw=0.6, ls=":", label="published range (>= 0.7)")
            ax.set_title(src)
            ax.set_xlabel("layer")
            ax.set_ylim(0, 1)
        for ax in axes[::cols]:
            ax.set_ylabel("|r| with ratings (95% CI)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="outside lower center", ncol=3 if cols > 1 else 1, frameon=False
        )
        save_figure(fig, stem)
    return stem.with_suffix(".png")


def rdm_figure(table: pd.DataFrame, stem: Path) -> Path | None:
    if "other" not in table.columns:  # one source: nothing to compare
        return None
    rows = table[
        (table.experiment == "rdm_agreement") & ~table.other.astype(str).str.contains("@|vectors:")
    ]
    if rows.empty:
        return None
    names = list(dict.fromkeys([*rows.source, *rows.other]))
    layers = sorted(rows.layer.unique())
    layer = layers[min(len(layers) - 1, round(2 * len(layers) / 3))]  # ~2/3 depth (the recipe's)
    at = rows[rows.layer == layer]
    m = np.full((len(names), len(names)), np.nan)
    text = {}
    for r in at.itertuples():
        i, j = names.index(r.source), names.index(r.other)
        m[i, j] = m[j, i] = r.value
        text[(i, j)] = text[(j, i)] = (
            f"{r.value:.2f}\n[{r.ci_low:.2f}, {r.ci_high:.2f}]\nn={int(r.n)}"
        )
    with mpl.rc_context(RC):
        fig = _figure((7.6, 3.3))
        ax, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.2])
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        for (i, j), t in text.items():
            ax.text(j, i, t, ha="center", va="center", fontsize=5)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"RDM agreement at layer {layer} (Spearman, 95% CI)", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.7)
        for k, ((a, b), d) in enumerate(rows.groupby(["source", "other"], sort=False)):
            d = d.sort_values("layer")
            color = mpl.colormaps["tab10"](k % 10)
            ax2.plot(
                d.layer, d.value, color=color, lw=1, label=f"{a} vs {b} (n={int(d.n.iloc[0])})"
            )
            ax2.fill_between(d.layer, d.ci_low, d.ci_high, color=color, alpha=0.07, lw=0)
        ax2.axhline(0, color="0.5", lw=0.5)
        ax2.set_xlabel("layer")
        ax2.set_ylabel("RDM Spearman (95% CI)")
        ax2.set_ylim(-1, 1)
        ax2.legend(fontsize=5, frameon=False, loc="lower right")
        save_figure(fig, stem)
    return stem.with_suffix(".png")


def write_figures(table: pd.DataFrame, full: dict, data: list, ratings, out: Path) -> list[str]:
    """Every figure the run supports; returns their PNG names."""
    made = []
    big = [d for d in data if len(d.emotions) >= 5]
    for d in big[:1] + [d for d in big[1:] if d.name == "stories"]:
        made.append(emotion_map(table, full[d.name], d, ratings, out / f"emotion_map_{d.name}"))
    if big:
        made.append(layer_profile(table, [d.name for d in big], out / "layer_profile"))
    made.append(rdm_figure(table, out / "rdm_agreement"))
    return [p.name for p in made if p is not None]
