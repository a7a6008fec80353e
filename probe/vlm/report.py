"""Files, figure and printed summary of the modality-conflict experiment.

See :mod:`probe.vlm.conflict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from probe.io import atomic_write
from probe.io import environment
from probe.io import json_default

COLORS = {"media": "#d95f02", "text": "#1b9e77", "template": "#7570b3"}
LABELS = {"media": "image tokens", "text": "text tokens", "template": "template tokens"}


def write_tables(out: Path, items: pd.DataFrame, layers: pd.DataFrame, summary: dict,
                 run: dict) -> dict[str, Path]:
    """``items.csv``, ``layers.csv``, ``summary.json`` and ``run.json`` (atomic writes)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"items": out / "items.csv", "layers": out / "layers.csv",
             "summary": out / "summary.json", "run": out / "run.json"}
    atomic_write(paths["items"], items.to_csv(index=False))
    atomic_write(paths["layers"], layers.to_csv(index=False))
    atomic_write(paths["summary"], json.dumps(_clean(summary), indent=2) + "\n")
    atomic_write(paths["run"], json.dumps({**run, "environment": environment()}, indent=2,
                                           default=json_default) + "\n")
    return paths


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def plot_conflict(items: pd.DataFrame, layers: pd.DataFrame, summary: dict, out: Path,
                  title: str = ""):
    """Three panels: attribution share by layer, AtP vs ablation, what the answer follows."""
    from matplotlib.ticker import MaxNLocator

    from probe.figures import new_figure, save_figure

    fig = new_figure((11.0, 3.8))
    if title:
        fig.suptitle(title, fontsize=10)
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.5, 1.1, 0.8])
    for cond, style in (("conflict", "-"), ("congruent", "--")):
        part = layers[layers["condition"] == cond]
        for g in ("media", "text", "template"):
            rows = part[part["group"] == g]
            ax1.plot(rows["layer"], rows["abs_share"], style, color=COLORS[g], marker="o", ms=3,
                     label=LABELS[g] if cond == "conflict" else None)
    ax1.set(xlabel="layer (residual stream before the block; 0 = embeddings)",
            ylabel="share of |attribution|", ylim=(0, 1.02), title="Where the read-out comes from")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize=6.5, frameon=False, ncol=2, loc="upper center",
               bbox_to_anchor=(0.5, -0.22), title="solid: conflict items, dashed: congruent",
               title_fontsize=6.5)
    for g in ("media", "text"):
        ax2.scatter(items[f"atp_{g}"], items[f"ablated_{g}"], s=12, color=COLORS[g],
                    label=f"{LABELS[g]}: r={_fmt(summary[f'check_{g}']['pearson_r'])}")
    cols = ["atp_media", "atp_text", "ablated_media", "ablated_text"]
    lim = np.nanmax(np.abs(items[cols].to_numpy()))
    lim = float(lim) * 1.05 if np.isfinite(lim) and lim > 0 else 1.0
    ax2.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls=":")
    ax2.set(xlabel="attribution patching estimate", ylabel="effect of mean-ablation",
            title=f"Check at layer {summary['check_layer']}", xlim=(-lim, lim), ylim=(-lim, lim))
    ax2.legend(fontsize=7, frameon=False)
    for axis in (ax2.xaxis, ax2.yaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax2.ticklabel_format(style="sci", scilimits=(-2, 3))
    follows = summary.get("conflict_follows", {})
    ax3.bar(["image", "text"], [follows.get("image", 0), follows.get("text", 0)],
            color=[COLORS["media"], COLORS["text"]])
    ax3.set(ylim=(0, 1), ylabel="fraction of conflict items",
            title=f"Answer follows (n={summary['n_conflict']})")
    return save_figure(fig, out)


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def format_summary(summary: dict, model: str) -> str:
    """What ``probe conflict`` prints."""
    f = summary.get("conflict_follows", {})
    lines = [f"modality conflict, {model}: {summary['n_items']} items "
             f"({summary['n_conflict']} conflict)",
             f"answer follows (conflict items, sign of the valence read-out): image "
             f"{_fmt(f.get('image'))}, text {_fmt(f.get('text'))}; congruent items answered "
             f"right: {_fmt(summary.get('congruent_accuracy'))}",
             f"mean-ablation at layer {summary['check_layer']}: image tokens' share of the "
             f"effect {_fmt(summary['media_share_by_ablation'])}"]
    for g in ("media", "text"):
        c = summary[f"check_{g}"]
        lines.append(f"  {LABELS[g]:15s} AtP mean {c['atp_mean']:+.3g}, ablation mean "
                     f"{c['ablation_mean']:+.3g}, Pearson r {_fmt(c['pearson_r'])}, sign "
                     f"agreement {_fmt(c['sign_agreement'])}")
    return "\n".join(lines)
