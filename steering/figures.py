"""Figures for steering: direction cosines, held-out separation, live monitoring strips.

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
    fig, axes = plt.subplots(2, ncols, figsize=(2.6 * ncols + 1, 5.8), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    im = None
    for ax, site in zip(axes[0], shown):
        labels, m = cosine_matrix(vectors, site)
        im = _heat(ax, m.numpy(), labels, labels, annotate=len(labels) <= 8)
        ax.set_title(f"layer {site.layer}" if site.layer is not None else str(site), fontsize=9)
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
    tokens, values, labels, kind = trace.matrix(row, reader)
    tokens, values = tokens[-max_tokens:], values[-max_tokens:]
    start = len(trace.tokens[row]) - len(tokens)
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
    prompt_end = trace.prompt_lengths[row] - start
    for a in (ax, top):
        if 0 < prompt_end < len(tokens):
            a.axvline(prompt_end - 0.5, color="red", lw=1)
    top.set_xticks(range(len(tokens)), [_show(t) for t in tokens], rotation=90, fontsize=7)
    fig.colorbar(im, ax=[ax, top], shrink=0.8, label=cbar_label, pad=0.01)
    ax.set_title(title or f"{reader}: per-token reading (red line: generation starts)", fontsize=9)
    return _save(fig, stem)


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t") or "∅"
