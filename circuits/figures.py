"""Figures of circuit analyses, in the sweep's style (:mod:`probe.figures`): PNG + SVG.

* :func:`plot_head_heatmaps` -- layer x head maps of attribution and patching side by side;
* :func:`plot_scatter` -- estimated against measured effect, one panel per component type;
* :func:`plot_sublayer_influence` -- Wang et al.'s influence of each sublayer per layer;
* :func:`plot_top_neurons` -- the neurons with the largest estimated effects;
* :func:`plot_faithfulness` -- the held-out normalised error against circuit size, with CIs;
* :func:`plot_edges` -- the top edges of an edge attribution as a graph;
* :func:`plot_circuit` -- where a circuit's components sit (layer x head / neuron rank).

Every function takes tidy tables (``component, type, layer, unit, value``) and returns a
:class:`matplotlib.figure.Figure` built without pyplot; ``out=`` also writes ``.png`` and ``.svg``.
"""

from __future__ import annotations

import os

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from scipy.stats import pearsonr, spearmanr

from probe.figures import OKABE_ITO, RC, save_figure

TYPE_COLORS = {"heads": OKABE_ITO[0], "neurons": OKABE_ITO[2], "sublayers": OKABE_ITO[1],
               "resid": OKABE_ITO[3], "queries": OKABE_ITO[4], "keys": OKABE_ITO[5]}


def _figure(size) -> Figure:
    fig = Figure(figsize=size, dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _done(fig: Figure, out) -> Figure:
    if out is not None:
        save_figure(fig, out)
    return fig


def _grid(df: pd.DataFrame, n_layers: int, n_heads: int) -> np.ndarray:
    g = np.full((n_layers, n_heads), np.nan)
    heads = df[df["type"] == "heads"]
    g[heads["layer"].to_numpy(int), heads["unit"].to_numpy(int)] = heads["value"].to_numpy(float)
    return g


def plot_head_heatmaps(attr: pd.DataFrame, truth: pd.DataFrame | None, *, n_layers: int,
                       n_heads: int, labels=("attribution", "activation patching"),
                       title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """Layer x head heatmaps of estimated and (if given) measured effects on one colour scale
    centred at 0 (grey cells: heads not measured)."""
    panels = [(labels[0], attr)] + ([(labels[1], truth)] if truth is not None else [])
    grids = [_grid(df, n_layers, n_heads) for _, df in panels]
    lim = max((np.nanmax(np.abs(g)) for g in grids if np.isfinite(g).any()), default=1.0) or 1.0
    norm = TwoSlopeNorm(0.0, -lim, lim)
    with mpl.rc_context(RC):
        fig = _figure((2.3 * len(panels) + 0.6, 0.16 * n_layers + 1.0))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (label, _), g in zip(axes, panels, grids):
            ax.set_facecolor("#DDDDDD")
            im = ax.imshow(g, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower",
                           interpolation="nearest")
            ax.set_title(label)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(0, n_heads, max(1, n_heads // 9)))
            fig.colorbar(im, ax=ax, shrink=0.8, label="effect on metric")
        if title:
            fig.suptitle(title)
    return _done(fig, out)


def plot_scatter(attr: pd.DataFrame, truth: pd.DataFrame, *, estimator: str = "AtP",
                 title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """Estimated (y) against measured (x) effect, one panel per component type."""
    merged = attr[["component", "type", "value"]].merge(truth[["component", "value"]],
                                                        on="component", suffixes=("_est", "_true"))
    types = list(dict.fromkeys(merged["type"]))
    with mpl.rc_context(RC):
        fig = _figure((2.2 * len(types) + 0.3, 2.4))
        axes = fig.subplots(1, len(types), squeeze=False)[0]
        for ax, t in zip(axes, types):
            d = merged[merged["type"] == t]
            x, y = d["value_true"].to_numpy(float), d["value_est"].to_numpy(float)
            ax.scatter(x, y, s=6, color=TYPE_COLORS.get(t, "k"), alpha=0.7, linewidths=0)
            lo, hi = np.nanmin([x.min(), y.min()]), np.nanmax([x.max(), y.max()])
            ax.plot([lo, hi], [lo, hi], color="#8C8C8C", lw=0.6, ls="--")
            ax.axhline(0, color="#CCCCCC", lw=0.4)
            ax.axvline(0, color="#CCCCCC", lw=0.4)
            r = pearsonr(x, y)[0] if len(x) > 2 and x.std() and y.std() else float("nan")
            rho = spearmanr(x, y)[0] if len(x) > 2 else float("nan")
            ax.set_title(f"{t} (n={len(d)})\nPearson {r:.2f}, Spearman {rho:.2f}")
            ax.set_xlabel("activation patching")
        axes[0].set_ylabel(estimator)
        if title:
            fig.suptitle(title)
    return _done(fig, out)


def plot_sublayer_influence(df: pd.DataFrame, *, title: str | None = None,
                            out: str | os.PathLike | None = None) -> Figure:
    """Influence ``I`` (``ds / (alpha sigma)``) of attention and MLP outputs against layer."""
    with mpl.rc_context(RC):
        fig = _figure((3.4, 2.4))
        ax = fig.subplots()
        for kind, color, label in (("hook_attn_out", OKABE_ITO[1], "attention"),
                                   ("hook_mlp_out", OKABE_ITO[2], "MLP")):
            d = df[df["kind"] == kind].sort_values("layer")
            ax.plot(d["layer"], d["influence"], marker="o", ms=2.5, lw=1, color=color, label=label)
        ax.axhline(0, color="#CCCCCC", lw=0.5)
        ax.axhline(1, color="#8C8C8C", lw=0.5, ls=":")
        ax.set_xlabel("layer")
        ax.set_ylabel("influence I = ds / (α σ)")
        ax.legend(frameon=False)
        ax.set_title(title or "sublayer influence on the metric")
    return _done(fig, out)


def plot_top_neurons(attr: pd.DataFrame, *, k: int = 20, truth: pd.DataFrame | None = None,
                     title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """Horizontal bars of the ``k`` neurons with the largest ``|estimate|`` (and truth if given)."""
    neu = attr[attr["type"] == "neurons"]
    top = neu.loc[neu["value"].abs().nlargest(k).index][::-1]
    with mpl.rc_context(RC):
        fig = _figure((3.4, 0.14 * len(top) + 0.8))
        ax = fig.subplots()
        y = np.arange(len(top))
        ax.barh(y, top["value"], height=0.4 if truth is not None else 0.7,
                color=TYPE_COLORS["neurons"], label="attribution")
        if truth is not None:
            t = top[["component"]].merge(truth[["component", "value"]], on="component", how="left")
            ax.barh(y - 0.4, t["value"], height=0.4, color="#4D4D4D", label="patching")
            ax.legend(frameon=False)
        ax.set_yticks(y, [f"L{r.layer} n{r.unit}" for r in top.itertuples()])
        ax.axvline(0, color="#8C8C8C", lw=0.5)
        ax.set_xlabel("change of the metric when the neuron is patched")
        ax.set_title(title or f"top {len(top)} neurons")
    return _done(fig, out)


def plot_faithfulness(curves: pd.DataFrame, *, max_error: float = 0.2, budget: int | None = None,
                      chosen: dict | None = None, random: dict | None = None,
                      title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """Normalised error ``|M_k - M| / |M_0 - M|`` (CI band) against circuit size, held out.

    ``curves`` has columns ``name`` (emotion), ``size``, ``error[_low/_high]``; only held-out
    rows are drawn when ``split`` exists. 0 = the circuit reproduces the model, 1 = no better
    than the empty circuit; errors above 2 (overshoot) are drawn at 2. ``budget``: a size to
    mark; ``chosen``: ``{name: size}`` or ``{name: (size, error)}`` (stars; the error where the
    circuit is not the curve's top k, e.g. a searched one); ``random``: ``{name: (median, p05)}`` errors of
    random circuits of the chosen size and composition (a bar from p05 to the median).
    """
    if "split" in curves:
        curves = curves[curves["split"] == "test"]
    names = list(dict.fromkeys(curves["name"]))
    cap = 2.0
    with mpl.rc_context(RC):
        fig = _figure((3.8, 2.8))
        ax = fig.subplots()
        for i, name in enumerate(names):
            d = curves[curves["name"] == name].sort_values("size")
            x = d["size"].clip(lower=0.5)
            color = OKABE_ITO[i % len(OKABE_ITO)]
            ax.plot(x, d["error"].clip(upper=cap), color=color, lw=1, marker="o", ms=2, label=name)
            ax.fill_between(x, d["error_low"].clip(upper=cap), d["error_high"].clip(upper=cap),
                            color=color, alpha=0.15, lw=0)
            if chosen and name in chosen:
                k, err = chosen[name] if isinstance(chosen[name], tuple) else (chosen[name], None)
                y = d.loc[d["size"] == k, "error"]
                y = [err] if err is not None else list(y)
                if len(y):
                    ax.plot([max(k, 0.5)], [min(cap, float(y[0]))], marker="*", ms=7,
                            color=color, markeredgecolor="k", markeredgewidth=0.4, zorder=5)
                if random and name in random:
                    med, p05 = random[name]
                    ax.plot([max(k, 0.5)] * 2, [min(cap, p05), min(cap, med)], color=color,
                            lw=2.5, alpha=0.5, solid_capstyle="butt")
        ax.axhline(max_error, color="#8C8C8C", lw=0.6, ls=":")
        ax.axhline(1.0, color="#CCCCCC", lw=0.5)
        if budget:
            ax.axvline(budget, color="#4D4D4D", lw=0.6, ls=":")
            ax.text(budget, 0.97, " size budget", transform=ax.get_xaxis_transform(),
                    fontsize=6, va="top")
        ax.set_xscale("log")
        ax.set_ylim(-0.05, cap + 0.1)
        ax.set_xlabel("circuit size (components; 0 drawn at 0.5)")
        ax.set_ylabel("normalised error (0 = the model)")
        ax.set_title(title or "held-out prompts: error of the top-k circuit\n"
                              "(star: the circuit judged, off the curve when searched;\n"
                              "bar: random circuits, p05-median; >2 drawn at 2)",
                     fontsize=7)
        ax.legend(frameon=False, fontsize=6, loc="lower left")
    return _done(fig, out)


def plot_circuit(circuit, *, n_layers: int, n_heads: int, title: str | None = None,
                 out: str | os.PathLike | None = None) -> Figure:
    """A circuit's components by layer: heads (top band, one row per head index), neurons
    (bottom band, stacked per layer, best first). Marker area is proportional to ``|score|``.
    Only nodes are drawn: edges between components are not estimated.
    """
    comps, scores = circuit.components, np.abs(np.asarray(circuit.scores, float))
    scale = 60 / scores.max() if len(scores) and scores.max() > 0 else 1.0
    with mpl.rc_context(RC):
        fig = _figure((6.0, 3.0))
        ax = fig.subplots()
        per_layer: dict[int, int] = {}
        xs, ys, sizes, colors, depth = [], [], [], [], []
        for c, s in zip(comps, scores):
            if c.type == "heads":
                ys.append(n_heads - c.unit)
                depth.append(0)
            else:
                per_layer[c.layer] = per_layer.get(c.layer, 0) + 1
                ys.append(0.0)
                depth.append(per_layer[c.layer])
            xs.append(c.layer)
            sizes.append(max(2.0, s * scale))
            colors.append(TYPE_COLORS.get(c.type, "k"))
        # the neuron band takes as much height as the heads' whatever its depth (a layer can
        # hold hundreds): the i-th neuron of a layer sits i / deepest of the way down
        deepest = max(per_layer.values(), default=1)
        ys = [y if d == 0 else -n_heads * d / deepest for y, d in zip(ys, depth)]
        ax.scatter(xs, ys, s=sizes, c=colors, alpha=0.8, linewidths=0)  # one call: 1000s of units
        ax.axhline(0.25, color="#CCCCCC", lw=0.5)
        ax.set_yticks([n_heads - h for h in range(n_heads)] + [-n_heads / 2],
                      [f"head {h}" for h in range(n_heads)]
                      + [f"neurons\n(best first,\nup to {deepest}\nper layer)"])
        ax.tick_params(axis="y", labelsize=max(3.5, min(6.0, 60 / max(n_heads, 1))))
        ax.set_ylim(-n_heads - 0.7, n_heads + 0.7)
        ax.set_xlim(-0.5, n_layers - 0.5)
        ax.set_xlabel("layer")
        n_h = sum(c.type == "heads" for c in comps)
        ax.set_title(title or f"circuit {circuit.name}: {n_h} heads, {len(comps) - n_h} neurons "
                              "(area ∝ |score|; nodes only)")
    return _done(fig, out)


def plot_edges(table: pd.DataFrame, *, n_layers: int, n_heads: int, k: int = 40,
               title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """The ``k`` edges with the largest ``|value|`` as a graph: heads (one row per head index),
    MLPs (bottom row) and the metric (right) placed by layer; line width ∝ ``|value|``, colour by
    sign (blue: patching the edge raises the metric, vermillion: lowers it)."""
    top = table.reindex(table["value"].abs().sort_values(ascending=False).index).head(k)

    def pos(name: str, side: str) -> tuple[float, float]:
        if name == "metric":
            return n_layers - 0.5, n_heads / 2
        layer = int(name.split(".")[1])
        if "hook_z[" in name:
            return layer - 0.15, n_heads - int(name.split("[")[1].rstrip("]"))
        if name.endswith("attn_in"):
            return layer - 0.4, n_heads + 1
        return layer + 0.15, -0.5  # MLP out / MLP in

    scale = 3.0 / top["value"].abs().max() if len(top) and top["value"].abs().max() > 0 else 1.0
    with mpl.rc_context(RC):
        fig = _figure((6.4, 3.4))
        ax = fig.subplots()
        for _, r in top.iterrows():
            (x0, y0), (x1, y1) = pos(r["upstream"], "up"), pos(r["downstream"], "down")
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="-|>", lw=max(0.3, abs(r["value"]) * scale),
                                        color=OKABE_ITO[0] if r["value"] > 0 else OKABE_ITO[1],
                                        alpha=0.7, shrinkA=2, shrinkB=2,
                                        connectionstyle="arc3,rad=0.15"))
        names = set(top["upstream"]) | set(top["downstream"])
        for nme in names:
            x, y = pos(nme, "")
            ax.scatter([x], [y], s=14, zorder=3,
                       color="#555555" if "hook_z" in nme else OKABE_ITO[2])
        ax.set_xlim(-1, n_layers)
        ax.set_xticks(range(0, n_layers, max(1, n_layers // 10)))
        ax.set_ylim(-1.5, n_heads + 2)
        ax.set_yticks([n_heads + 1] + [n_heads - h for h in range(n_heads)] + [-0.5],
                      ["attn in"] + [f"head {h}" for h in range(n_heads)] + ["MLP"])
        ax.set_xlabel("layer (metric at the right)")
        if "metric" in names:
            x, y = pos("metric", "")
            ax.annotate("metric", (x, y), xytext=(0, 6), textcoords="offset points", ha="center",
                        fontsize=6)
        ax.legend(handles=[mpl.lines.Line2D([], [], color=OKABE_ITO[0], lw=1.5,
                                            label="edge raises the metric"),
                           mpl.lines.Line2D([], [], color=OKABE_ITO[1], lw=1.5,
                                            label="edge lowers it")],
                  loc="upper right", fontsize=6, frameon=False)
        ax.set_title(title or f"top {len(top)} edges by EAP (width ∝ |score|)", fontsize=7)
    return _done(fig, out)
