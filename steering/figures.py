"""Figures for steering: direction cosines, held-out separation, live monitoring strips,
steer-eval dose-response and Pareto panels.

Every function writes ``<stem>.png`` and ``<stem>.svg`` and returns the PNG path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from steering.vector import SteeringVector, cosine_matrix, layer_cosine

CMAP = "RdBu_r"


def _save(fig, stem: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(stem.with_name(f"{stem.name}.{ext}"), dpi=150, bbox_inches="tight")
    plt.close(fig)
    return stem.with_name(f"{stem.name}.png")


def _pick(layers: list, n: int) -> list:
    if len(layers) <= n:
        return list(layers)
    idx = np.linspace(0, len(layers) - 1, n).round().astype(int)
    return [layers[i] for i in dict.fromkeys(idx.tolist())]


def cosine_figure(vectors: Mapping[str, SteeringVector], stem: str | os.PathLike, *,
                  n_layers: int = 4, title: str | None = None) -> Path:
    """Top row: cosine between emotions at a few layers; bottom: each emotion across layers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(vectors)
    first = vectors[names[0]]
    sites = [s for s in first.sites if all(s in v.directions for v in vectors.values())]
    shown = _pick(sites, n_layers)
    ncols = max(len(shown), len(names))
    fig, axes = plt.subplots(2, ncols, figsize=(2.7 * ncols + 1.5, 6.2), squeeze=False,
                             gridspec_kw={"wspace": 0.25, "hspace": 0.45})
    for ax in axes.flat:
        ax.set_visible(False)
    im = None
    for i, (ax, site) in enumerate(zip(axes[0], shown)):
        labels, m = cosine_matrix(vectors, site)
        im = _heat(ax, m.numpy(), labels, labels, annotate=len(labels) <= 8)
        ax.set_title(f"layer {site.layer}" if site.layer is not None else str(site), fontsize=9)
        if i:
            ax.set_yticklabels([])
    for ax, name in zip(axes[1], names):
        part = vectors[name]
        part = SteeringVector({s: part.directions[s] for s in sites}, part.meta)
        ss, m = layer_cosine(part)
        ticks = [str(s.layer) for s in ss]
        _heat(ax, m.numpy(), ticks, ticks, annotate=False, every=max(1, len(ticks) // 5))
        ax.set_title(f"{name}: layer vs layer", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
    meta = first.meta
    fig.suptitle(title or f"cosine similarity of {meta.get('method', '')} directions "
                          f"({first.sites[0].kind}, {meta.get('model', '')})", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="cosine")
    return _save(fig, stem)


def _heat(ax, m, xlabels, ylabels, *, annotate: bool, every: int = 1):
    ax.set_visible(True)
    im = ax.imshow(m, cmap=CMAP, vmin=-1, vmax=1)
    ax.set_xticks(range(0, len(xlabels), every), [xlabels[i] for i in range(0, len(xlabels), every)],
                  rotation=90, fontsize=7)
    ax.set_yticks(range(0, len(ylabels), every), [ylabels[i] for i in range(0, len(ylabels), every)],
                  fontsize=7)
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(m[i, j]) > 0.6 else "black")
    return im


def auroc_figure(table, stem: str | os.PathLike, *, title: str | None = None) -> Path:
    """Held-out AUROC of each emotion's direction against layer (from :func:`heldout_auroc`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for emotion, part in table.groupby("emotion", sort=False):
        part = part.sort_values("layer")
        ax.plot(part["layer"], part["auroc"], marker="o", ms=3, label=emotion)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out AUROC (emotion vs rest)")
    ax.set_ylim(0.3, 1.0)
    method = table["method"].iloc[0] if "method" in table else ""
    ax.set_title(title or f"{method} directions: projection separates held-out scenarios", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def trace_figure(trace, stem: str | os.PathLike, *, row: int = 0, reader: str | None = None,
                 max_tokens: int = 80, title: str | None = None) -> Path:
    """One row of a :class:`steering.monitor.Trace`: a token x emotion heat map with the
    tokens as column labels, coloured by probability (probes) or projection (directions)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    reader = reader or trace.readers[0]
    _, _, labels, kind = trace.matrix(row, reader)
    values = trace.values[reader][row]
    read = np.flatnonzero(~np.isnan(values).any(1))[-max_tokens:]  # token indices with a reading
    tokens, values = [trace.tokens[row][i] for i in read], values[read]
    start = int(read[0])
    fig, (ax, top) = plt.subplots(2, 1, figsize=(min(24, 1.5 + 0.28 * len(tokens)), 1.6 + 0.32 * len(labels)),
                                  gridspec_kw={"height_ratios": [len(labels), 1.2]}, sharex=True)
    if kind == "probability":
        im = ax.imshow(values.T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        cbar_label = "probe probability"
    else:
        lim = float(np.abs(values).max()) or 1.0
        im = ax.imshow(values.T, aspect="auto", cmap=CMAP, vmin=-lim, vmax=lim)
        cbar_label = "projection / RMS"
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    best = values.argmax(1)
    colors = plt.get_cmap("tab10")
    top.bar(range(len(tokens)), values.max(1), color=[colors(b % 10) for b in best])
    top.set_yticks([])
    top.set_ylabel("top", fontsize=7)
    from matplotlib.patches import Patch

    top.legend(handles=[Patch(color=colors(i % 10), label=lab) for i, lab in enumerate(labels)],
               fontsize=6, ncol=len(labels), loc="lower center", bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    prompt_end = trace.prompt_lengths[row] - start
    for a in (ax, top):
        if 0 < prompt_end < len(tokens):
            a.axvline(prompt_end - 0.5, color="red", lw=1)
    top.set_xticks(range(len(tokens)), [_show(t) for t in tokens], rotation=90, fontsize=7)
    fig.colorbar(im, ax=[ax, top], shrink=0.8, label=cbar_label, pad=0.01)
    steer = trace.steer
    what = (f"steered: {steer['emotion']} {_amount(steer)}, layers "
            f"{steer['layers'][0]}-{steer['layers'][-1]}" if steer else "unsteered")
    ax.set_title(title or f"{reader}, {what}: reading at each token (red line: first generated "
                 "token)", fontsize=9)
    return _save(fig, stem)


def _amount(steer: dict) -> str:
    """``x2 rms`` / ``x0.5`` (scale) from a trace's steering record; traces written before the
    one vocabulary named the strength ``scale`` and its unit ``strength``."""
    if "unit" not in steer:
        return f"x{steer['scale']:g} {steer['strength']}"
    if steer.get("mode") == "scale":
        return f"x{steer['factor']:g}"
    return f"x{steer['strength']:g} {steer['unit']}"


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t") or "∅"


# ---------------------------------------------------------------------------- steer-eval
def _panels(n: int, width: float = 3.6, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 0.8, height * rows + 0.6),
                             squeeze=False, gridspec_kw={"wspace": 0.45, "hspace": 0.55})
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _plain_log(axis) -> None:
    """Log-scale ticks written as plain numbers (2, 3, 10) instead of 2x10^0."""
    from matplotlib.ticker import FuncFormatter

    def label(v, _):
        lead = v / 10 ** np.floor(np.log10(v)) if v > 0 else 0
        return f"{v:g}" if round(lead, 6) in (1, 2, 3, 5) else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


_STYLES = ({"ls": "-", "marker": "o"}, {"ls": "--", "marker": "s"}, {"ls": ":", "marker": "^"},
           {"ls": "-.", "marker": "D"})


def dose_response_figure(tune, selections: Mapping, stem: str | os.PathLike, *,
                         max_ppl: float = 2.0) -> Path:
    """Per emotion: each judge's gated expression (left) and the perplexity ratio (right, log)
    against strength, for the selected configuration on the ladder's tune prompts."""
    judges = [c.split(":", 1)[1] for c in tune.columns if c.startswith("value:")]
    fig, axes = _panels(len(selections))
    rights = []
    for ax, (emotion, sel) in zip(axes, selections.items()):
        pt = sel.point
        part = tune[(tune["stage"] == "ladder") & tune["point"].map(lambda p: p.config == pt.config)]
        part = part.sort_values("strength")
        for k, j in enumerate(judges):
            ax.plot(part["strength"], part[f"value:{j}"], ms=4, mfc="none", label=j,
                    **_STYLES[k % len(_STYLES)])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("strength per layer (x typical RMS)", fontsize=8)
        ax.set_ylabel("gated expression (tune)", fontsize=8)
        ax.axvline(pt.strength, color="k", lw=0.8, ls=":")
        right = ax.twinx()
        rights.append(right)
        right.plot(part["strength"], part["ppl_ratio"], color="0.3", ls="--", marker="x", ms=3,
                   label="perplexity ratio")
        right.axhline(max_ppl, color="r", lw=0.8, ls="--")
        right.set_yscale("log")
        _plain_log(right.yaxis)
        right.set_ylabel("perplexity ratio (log)", fontsize=8)
        ax.set_title(f"{emotion}: {pt.method} L{pt.band}\n{pt.positions}", fontsize=8)
        ax.tick_params(labelsize=7)
        right.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    h2, _ = rights[0].get_legend_handles_labels()
    fig.legend(handles + h2, labels + ["perplexity ratio (right)"], loc="upper center",
               ncol=len(judges) + 1, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Dose-response on the tune prompts (dotted: chosen strength; red: perplexity "
                 f"ratio bound {max_ppl:g})", fontsize=9, y=1.03)
    return _save(fig, stem)


def _frontier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both lower x and higher y, by x."""
    order = np.lexsort((-y, x))
    keep, best = [], -np.inf
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return np.array(keep, dtype=int)


def pareto_figure(tune, selections: Mapping, stem: str | os.PathLike, *, max_ppl: float = 2.0) -> Path:
    """Per emotion: selection score vs perplexity ratio of every ladder point; capability
    accuracy as colour where it was measured; the frontier and the chosen point marked."""
    fig, axes = _panels(len(selections))
    ladder = tune[tune["stage"] == "ladder"]
    cap = ladder["capability"].to_numpy(float)
    vmin, vmax = (np.nanmin(cap), np.nanmax(cap)) if np.isfinite(cap).any() else (0, 1)
    sc = None
    for ax, (emotion, sel) in zip(axes, selections.items()):
        part = ladder[ladder["emotion"] == emotion]
        x = np.maximum(part["ppl_ratio"].to_numpy(float), 1e-2)
        y = part["score"].to_numpy(float)
        c = part["capability"].to_numpy(float)
        seen = np.isfinite(c)
        ax.scatter(x[~seen], y[~seen], s=14, color="0.7", label="capability not measured")
        if seen.any():
            sc = ax.scatter(x[seen], y[seen], c=c[seen], s=40, cmap="viridis", vmin=vmin,
                            vmax=vmax, edgecolor="k", lw=0.4)
        if len(x):
            f = _frontier(x, y)
            ax.step(x[f], y[f], where="post", color="C1", lw=1, label="frontier")
        r = sel.record
        ax.scatter([max(r["ppl_ratio"], 1e-2)], [r["score"]], marker="*", s=220, facecolor="none",
                   edgecolor="r", lw=1.5, zorder=5, label="chosen")
        ax.axvline(max_ppl, color="r", lw=0.8, ls="--")
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("perplexity ratio (log)", fontsize=8)
        ax.set_ylabel("expression, mean of judges (tune)", fontsize=8)
        ax.set_title(emotion, fontsize=9)
        ax.tick_params(labelsize=7)
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes, shrink=0.6, pad=0.02)
        cb.set_label("capability accuracy (MC set)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Expression vs fluency vs capability per emotion (tune ladder; red line: ratio "
                 f"bound {max_ppl:g})", fontsize=9, y=1.03)
    return _save(fig, stem)
