"""Figures of ``probe behave``: probe vs behaviour, system prompts, EmotionPrompt.

Built like the sweep's figures (:mod:`probe.figures`): a :class:`~matplotlib.figure.Figure`
with an Agg canvas (no pyplot, no global state), the same style and colour-blind-safe palette,
saved as PNG + SVG with :func:`probe.figures.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from probe.figures import OKABE_ITO, RC, save_figure

PERSONA_COLORS = {"cheerful": "#E69F00", "gloomy": "#0072B2", "calm": "#009E73",
                  "instruction": "#CC79A7"}
KIND_COLORS = {"positive": "#E69F00", "negative": "#0072B2", "control": "#8C8C8C"}


def _figure(size: tuple[float, float], n: int) -> tuple[Figure, list[Axes]]:
    with mpl.rc_context(RC):
        fig = Figure(figsize=size, dpi=300, layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(np.atleast_1d(fig.subplots(1, n)))
    return fig, axes


def _band(ax: Axes, df: pd.DataFrame, color: str, label: str, style: str = "-") -> None:
    df = df.sort_values("layer")
    x = df["layer"].to_numpy(float)
    ax.plot(x, df["value"], style, color=color, lw=1.0, label=label)
    if df["ci_low"].notna().any():
        ax.fill_between(x, df["ci_low"], df["ci_high"], color=color, alpha=0.18, lw=0)


def _finish(fig: Figure, axes: Sequence[Axes], title: str | None, out, ncol: int = 4) -> Figure:
    with mpl.rc_context(RC):
        handles = {}
        for ax in axes:
            if ax.get_xlabel() == "layer":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                       ncol=min(ncol, len(handles)), frameon=False)
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig


VARIANT_STYLES = {"sum": "--", "calibrated": "-.", "expected": "--", "generate": ":"}


def plot_probe_vs_behaviour(table: pd.DataFrame, *, pooling: str, variants: Sequence[str] = (
        "calibrated", "expected", "generate"), title: str | None = None,
        out: str | os.PathLike | None = None) -> Figure:
    """Three panels against layer: the probe's score vs each template's zero-shot score
    (horizontal bands) and chance; how much better than the majority answer a probe decodes
    the model's own answer; whether the probe's confidence predicts that the model's answer is
    right (AUROC).

    Args:
        table: The table of :func:`probe.behaviour.compare.compare`.
        pooling: Which pooling's probe to draw.
        variants: Zero-shot variants to draw (one line per template and variant; every
            variant is in the table).
    """
    reg = "pearson_r" in set(table["metric"])
    metric = "pearson_r" if reg else "accuracy"
    t = table[(table["pooling"].isna()) | (table["pooling"] == pooling)]
    keys = [k for k in t[["template", "variant"]].dropna().drop_duplicates().itertuples(
        index=False) if k.variant in variants]
    templates = list(dict.fromkeys(k.template for k in keys))
    colors = {k: OKABE_ITO[(templates.index(k.template) + 1) % len(OKABE_ITO)] for k in keys}
    styles = {k: VARIANT_STYLES.get(k.variant, "--") for k in keys}
    fig, axes = _figure((7.0, 2.6), 2 if reg else 3)
    with mpl.rc_context(RC):
        probe = t[(t["estimator"] == "probe") & (t["metric"] == metric)]
        _band(axes[0], probe, OKABE_ITO[0], f"probe ({pooling})")
        for k in keys:
            z = t[(t["estimator"] == "zero-shot") & (t["metric"] == metric)
                  & (t["template"] == k.template) & (t["variant"] == k.variant)]
            if len(z):
                r = z.iloc[0]
                axes[0].axhline(r["value"], color=colors[k], lw=0.9, ls=styles[k],
                                label=f"{k.template} ({k.variant})")
                axes[0].axhspan(r["ci_low"], r["ci_high"], color=colors[k], alpha=0.08, lw=0)
            a = t[(t["estimator"] == "probe-on-answer") & (t["template"] == k.template)
                  & (t["variant"] == k.variant)]
            if len(a[a["metric"] == metric]):
                score = a[a["metric"] == metric].sort_values("layer")
                if not reg:  # above the majority answer: every template shares the 0 line
                    floor = a[a["metric"] == "majority"].sort_values("layer")["value"].to_numpy()
                    score = score.assign(value=score["value"] - floor,
                                         ci_low=score["ci_low"] - floor,
                                         ci_high=score["ci_high"] - floor)
                _band(axes[1], score, colors[k], f"{k.template} ({k.variant})", styles[k])
            c = t[(t["estimator"] == "probe-vs-zero-shot") & (t["metric"] == "auroc_confidence")
                  & (t["template"] == k.template) & (t["variant"] == k.variant)]
            if len(c) and not reg:
                _band(axes[2], c, colors[k], f"{k.template} ({k.variant})", styles[k])
        chance = t[t["estimator"] == "chance"]
        if len(chance):
            axes[0].axhline(chance["value"].iloc[0], color="#8C8C8C", lw=0.7, ls=":",
                            label="chance (majority)")
        axes[1].axhline(0, color="#8C8C8C", lw=0.7, ls=":")
        name = "Pearson r" if reg else "Accuracy"
        axes[0].set(xlabel="layer", ylabel=name, title="Probe (gold) vs zero-shot answers")
        axes[1].set(xlabel="layer", ylabel=name if reg else "accuracy − majority answer",
                    title="Probe decoding the model's answer")
        if not len(t[t["estimator"] == "probe-on-answer"]):
            axes[1].text(0.5, 0.5, "no template's answers vary enough\nto train a probe on",
                         ha="center", va="center", transform=axes[1].transAxes, color="#4D4D4D")
        if not reg:
            axes[2].axhline(0.5, color="#8C8C8C", lw=0.7, ls=":")
            axes[2].set(xlabel="layer", ylabel="AUROC", title="Probe confidence → answer right")
    return _finish(fig, axes, title, out)


def plot_personas(shift: pd.DataFrame, answers: pd.DataFrame | None, *, pooling: str,
                  title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """Per persona: the valence-contrast shift along probe and mean-difference directions by
    layer, and how the zero-shot answer shares move (first template)."""
    contrast = shift.attrs.get("contrast")
    name = f"{contrast[0]}-{contrast[1]}" if contrast else None
    fig, axes = _figure((7.0, 2.6), 3)
    with mpl.rc_context(RC):
        s = shift[(shift["pooling"] == pooling) & (shift["class"] == name)]
        for ax, direction, label in ((axes[0], "probe-logit", "logit shift"),
                                     (axes[1], "mean-difference", "shift (SD)")):
            for persona, df in s[s["direction"] == direction].groupby("persona", sort=False):
                _band(ax, df, PERSONA_COLORS.get(persona, "#000000"), persona)
            ax.axhline(0, color="#8C8C8C", lw=0.7, ls=":")
            ax.set(xlabel="layer", ylabel=label, title=f"{direction} · {name or 'no valence axis'}")
        _answer_bars(axes[2], answers)
    return _finish(fig, axes, title, out)


def _answer_bars(ax: Axes, answers: pd.DataFrame | None) -> None:
    if answers is None or answers.empty:
        ax.set_axis_off()
        return
    first = answers.iloc[0]
    a = answers[(answers["template"] == first["template"])
                & (answers["variant"] == first["variant"]) & (answers["metric"] == "share_shift")]
    classes = list(dict.fromkeys(a["class"]))
    personas = list(dict.fromkeys(a["persona"]))
    width = 0.8 / max(1, len(personas))
    for j, persona in enumerate(personas):
        df = a[a["persona"] == persona].set_index("class").loc[classes]
        x = np.arange(len(classes)) + (j - (len(personas) - 1) / 2) * width
        err = np.abs(np.vstack([df["value"] - df["ci_low"], df["ci_high"] - df["value"]]))
        ax.bar(x, df["value"], width, yerr=err, color=PERSONA_COLORS.get(persona, "#000"),
               error_kw={"lw": 0.5}, label=persona)
    ax.axhline(0, color="#8C8C8C", lw=0.7)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
    ax.set(ylabel="answer share − none", title=f"zero-shot answers · {first['template']}")


def plot_emotionprompt(accuracy: pd.DataFrame, shift: pd.DataFrame | None, *,
                       title: str | None = None, out: str | os.PathLike | None = None) -> Figure:
    """Task accuracy change per stimulus (paired CI) and the valence shift of the
    answer-position representation by layer."""
    fig, axes = _figure((7.0, 2.6), 2)
    with mpl.rc_context(RC):
        a = accuracy[(accuracy["task"] == "(all)") & (accuracy["metric"] == "accuracy_shift")]
        x = np.arange(len(a))
        err = np.abs(np.vstack([a["value"] - a["ci_low"], a["ci_high"] - a["value"]]))
        axes[0].bar(x, a["value"], 0.7, yerr=err, error_kw={"lw": 0.6},
                    color=[KIND_COLORS.get(k, "#000") for k in a["kind"]])
        axes[0].axhline(0, color="#8C8C8C", lw=0.7)
        axes[0].set_xticks(x, a["condition"], rotation=45, ha="right")
        base = accuracy[(accuracy["task"] == "(all)") & (accuracy["condition"] == "none")]
        ref = f" (none: {base['value'].iloc[0]:.2f})" if len(base) else ""
        axes[0].set(ylabel="accuracy − no stimulus", title=f"Task accuracy{ref}")
        if shift is not None and not shift.empty:
            seen: dict[str, int] = {}
            for c, df in shift.groupby("condition", sort=False):
                kind = df["kind"].iloc[0]
                style = ("-", "--", ":", "-.")[seen.setdefault(kind, 0) % 4]
                seen[kind] += 1
                _band(axes[1], df, KIND_COLORS.get(kind, "#000"), c, style)
            axes[1].axhline(0, color="#8C8C8C", lw=0.7, ls=":")
            axes[1].set(xlabel="layer", ylabel="valence shift (SD)",
                        title="Answer-position representation")
        else:
            axes[1].set_axis_off()
    return _finish(fig, axes, title, out, ncol=7)


LAYER_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9")


def plot_persistence(curves: dict, table: pd.DataFrame, *, out=None,
                     title: str | None = None) -> Figure:
    """Decay of the stimulus's emotion with the distance from its end.

    Left: per-position P(true) after the stimulus minus after a neutral stimulus (the same
    continuation), end-of-prompt probes, a few layers, 95% CI bands. Middle: accuracy of
    probes fitted at each distance (stimulus solid, control dashed, chance dotted). Right:
    layer x distance-bin heatmap of the left panel's difference.

    Args:
        curves: :func:`probe.behaviour.persistence.curves` output.
        table: :func:`probe.behaviour.persistence.persistence_table` output.
    """
    decode = table[table["metric"] == "decode_accuracy"]
    fig, axes = _figure((13.0, 3.9), 3 if len(decode) else 2)
    ax, hm = axes[0], axes[-1]
    with mpl.rc_context(RC):
        for color, (layer, c) in zip(LAYER_COLORS, curves.items()):
            value, lo, hi = c["difference"]
            x = np.arange(len(value))
            ax.plot(x, value, "-", color=color, lw=0.9, label=f"L{layer}")
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        ax.axhline(0, color="#8C8C8C", lw=0.6)
        ax.set_xscale("symlog", linthresh=4)
        ax.set_xlim(0, len(x) - 1)
        ax.set_xlabel("tokens after the stimulus's end")
        ax.set_ylabel("P(true): stimulus − control")
        ax.set_title("end-of-prompt probes read along", fontsize="medium")
        if len(decode):
            _decode_panel(axes[1], decode, list(curves))
        _heatmap(hm, table)
    return _finish(fig, axes[:-1], title, out, ncol=6)


def _decode_panel(ax: Axes, decode: pd.DataFrame, layers: Sequence[int]) -> None:
    for color, layer in zip(LAYER_COLORS, layers):
        for cond, style in (("stimulus", "-o"), ("control", "--")):
            d = decode[(decode["condition"] == cond) & (decode["layer"] == layer)]
            x = d["distance"].astype(int).to_numpy()
            ax.plot(x, d["value"], style, color=color, lw=0.9, ms=2.5)
            if cond == "stimulus":
                ax.fill_between(x, d["ci_low"], d["ci_high"], color=color, alpha=0.15, lw=0)
    chance = decode[decode["condition"] == "chance"]["value"]
    if len(chance):
        ax.axhline(float(chance.iloc[0]), color="#8C8C8C", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("tokens after the stimulus's end")
    ax.set_ylabel("accuracy (held-out scenarios)")
    ax.set_title("probes fitted at that distance\n(-- after a neutral stimulus; : chance)",
                 fontsize="medium")


def _heatmap(hm: Axes, table: pd.DataFrame) -> None:
    diff = table[(table["condition"] == "difference") & (table["metric"] == "p_true")]
    grid = diff.pivot(index="layer", columns="distance", values="value")
    grid = grid[list(dict.fromkeys(diff["distance"]))]
    later = grid.drop(columns=["0"], errors="ignore").to_numpy(float)
    lim = max(0.02, float(np.nanmax(np.abs(later))) if later.size else 0.02)
    im = hm.imshow(grid.to_numpy(float), aspect="auto", origin="lower", cmap="RdBu_r",
                   vmin=-lim, vmax=lim, interpolation="nearest")
    hm.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    step = max(1, grid.shape[0] // 8)
    hm.set_yticks(range(0, grid.shape[0], step), grid.index[::step])
    hm.set_xlabel("distance bin (tokens)")
    hm.set_ylabel("layer")
    hm.set_title("P(true): stimulus − control\n(scale set by d ≥ 1; d = 0 saturates)",
                 fontsize="medium")
    hm.figure.colorbar(im, ax=hm, shrink=0.9, extend="both")
