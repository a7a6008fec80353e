"""Tests for probe.figures: files, sizes, and what is drawn (inspected on the Axes)."""

from __future__ import annotations

import struct

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from probe.figures import DPI, SINGLE_COLUMN, plot_layerwise, plot_sweep_panels, save_figure
from tests.probe.test_results import synthetic_classification, synthetic_regression


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def _gids(ax) -> dict[str, object]:
    artists = [*ax.get_lines(), *ax.collections, *ax.patches, *ax.texts]
    return {a.get_gid(): a for a in artists if a.get_gid()}


def _legend_labels(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_layerwise_writes_png_and_svg_at_paper_size(tmp_path):
    fig = plot_layerwise(synthetic_classification(), out=tmp_path / "figs" / "layerwise")
    png, svg = tmp_path / "figs" / "layerwise.png", tmp_path / "figs" / "layerwise.svg"
    assert png.stat().st_size > 10_000 and svg.stat().st_size > 5_000
    assert _png_size(png) == (round(SINGLE_COLUMN[0] * DPI), round(SINGLE_COLUMN[1] * DPI))
    text = svg.read_text()
    assert "<text" in text and "L19: 0.93" in text  # text kept as text, not paths
    assert tuple(fig.get_size_inches()) == pytest.approx(SINGLE_COLUMN)


def test_layerwise_draws_sites_control_baselines_and_peaks():
    fig = plot_layerwise(synthetic_classification(), title="GoEmotions")
    ax = fig.axes[0]
    gids = _gids(ax)
    for site in ("hook_resid_post", "hook_mlp_out"):
        assert {f"probe:{site}", f"ci:{site}", f"control:{site}", f"peak:{site}",
                f"peak_label:{site}"} <= set(gids)
        assert gids[f"control:{site}"].get_color() == gids[f"probe:{site}"].get_color()
        assert gids[f"control:{site}"].get_linewidth() < gids[f"probe:{site}"].get_linewidth()
    embed = {"probe:hook_embed", "control:hook_embed"}
    assert embed | {"lexical", "lexical_ci", "chance"} <= set(gids)
    assert gids["lexical"].get_linestyle() == "--" and gids["chance"].get_linestyle() == ":"
    assert gids["chance"].get_ydata()[0] == 0.125
    assert gids["peak_label:hook_resid_post"].get_text() == "L19: 0.93"
    assert gids["peak_label:hook_mlp_out"].get_text() == "L14: 0.74"
    assert list(gids["peak:hook_resid_post"].get_xdata()) == [19]
    assert ax.get_ylabel() == "Accuracy" and ax.get_xlabel() == "Layer"
    assert ax.get_title() == "GoEmotions"
    assert _legend_labels(fig) == ["resid_post", "mlp_out", "embed", "control task",
                                   "lexical baseline", "chance"]


def _legend_marks(fig: Figure, label: str) -> list[Line2D]:
    """The swatch artists drawn next to one legend label."""
    legend = fig.legends[0]
    index = _legend_labels(fig).index(label)
    column = legend.get_children()[0].get_children()[1].get_children()  # HPacker of columns
    entries = [e for col in column for e in col.get_children()]
    return [a for a in entries[index].get_children()[0].findobj(Line2D) if a.get_visible()]


def test_every_mark_has_a_legend_swatch_in_its_own_colours():
    fig = plot_layerwise(synthetic_classification())
    gids = _gids(fig.axes[0])
    control = gids["control:hook_resid_post"]
    swatches = _legend_marks(fig, "control task")
    lines = [a for a in swatches if a.get_linestyle() != "None"]
    assert lines[0].get_color() == control.get_color() == gids["probe:hook_resid_post"].get_color()
    assert lines[0].get_alpha() == control.get_alpha() < 1
    assert lines[1].get_color() == gids["control:hook_mlp_out"].get_color()
    hollow = [a for a in swatches if a.get_marker() == "D"]
    assert hollow and hollow[0].get_markerfacecolor() == "white"  # the embedding's control
    embed = [a for a in _legend_marks(fig, "embed") if a.get_marker() == "D"]
    assert embed[0].get_markerfacecolor() == gids["probe:hook_embed"].get_markerfacecolor()
    for site in ("hook_resid_post", "hook_mlp_out"):  # the control has its CI band
        assert f"control_ci:{site}" in gids


def test_selectivity_has_a_zero_line_not_a_chance_line():
    fig = plot_layerwise(synthetic_classification(), metric="selectivity")
    gids = _gids(fig.axes[0])
    assert "chance" not in gids and "chance" not in _legend_labels(fig)
    assert gids["zero"].get_ydata()[0] == 0 and gids["zero"].get_label().startswith("_")
    panels = plot_sweep_panels(synthetic_classification())
    assert "zero" in _gids(panels.axes[3]) and "chance" not in _gids(panels.axes[3])
    assert "chance" in _gids(panels.axes[0])


def test_heldout_curves_are_dashed_in_the_site_colour_with_a_band():
    fig = plot_layerwise(synthetic_classification(heldout=True), heldout_label="sev-b")
    gids = _gids(fig.axes[0])
    for site in ("hook_resid_post", "hook_mlp_out"):
        held, probe = gids[f"heldout:{site}"], gids[f"probe:{site}"]
        assert held.get_color() == probe.get_color() and held.get_linestyle() != "-"
        assert f"heldout_ci:{site}" in gids
    assert list(gids["heldout:hook_resid_post"].get_xdata()) == list(range(30))
    assert gids["heldout:hook_resid_post"].get_ydata()[17] == pytest.approx(0.91)
    assert "heldout:hook_embed" in gids and "heldout_lexical" in gids
    labels = _legend_labels(fig)
    assert "held-out: sev-b" in labels and "held-out lexical" in labels
    swatch = [a for a in _legend_marks(fig, "held-out: sev-b") if a.get_linestyle() != "None"]
    assert swatch[0].get_color() == gids["heldout:hook_resid_post"].get_color()
    assert swatch[0].get_linestyle() == gids["heldout:hook_resid_post"].get_linestyle()
    # peaks stay those of cross-validation
    assert gids["peak_label:hook_resid_post"].get_text() == "L19: 0.93"


def test_a_heldout_only_table_draws_heldout_as_the_main_curve():
    df = synthetic_classification(heldout=True)
    df = df[df["evaluation"] == "heldout"].reset_index(drop=True)
    gids = _gids(plot_layerwise(df).axes[0])
    assert "probe:hook_resid_post" in gids and "heldout:hook_resid_post" not in gids
    assert gids["peak_label:hook_resid_post"].get_text() == "L17: 0.91"


def test_embedding_sits_at_minus_one_labelled_emb():
    ax = plot_layerwise(synthetic_classification()).axes[0]
    assert list(_gids(ax)["probe:hook_embed"].get_xdata()) == [-1]
    ticks = ax.get_xticks()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == -1 and labels[0] == "emb"
    assert all(float(t).is_integer() for t in ticks)
    assert ax.get_xlim()[0] < -1


@pytest.mark.parametrize("n_layers", [12, 30, 48, 80])
def test_layer_ticks_stay_sparse_and_clear_of_emb(n_layers):
    ax = plot_layerwise(synthetic_classification(n_layers=n_layers)).axes[0]
    ticks = ax.get_xticks()
    assert 4 <= len(ticks) <= 9
    assert ticks[1] - ticks[0] >= 0.07 * n_layers  # "emb" and the next label do not touch
    assert ticks[-1] <= n_layers - 1


def test_regression_defaults_to_r2_with_zero_chance():
    fig = plot_layerwise(synthetic_regression())
    ax = fig.axes[0]
    gids = _gids(ax)
    assert ax.get_ylabel() == "R²"
    assert gids["chance"].get_ydata()[0] == 0.0
    assert gids["peak_label:hook_resid_post"].get_text() == "L20: 0.58"
    assert max(ax.get_yticks()) <= 1.0 and ax.get_ylim()[0] < 0  # negative r2 stays visible


def test_single_site_without_control_lexical_or_embed(tmp_path):
    df = synthetic_classification(sites=("hook_resid_post",), embed=False, control=False,
                                  lexical=False, layers=range(0, 30, 4))
    fig = plot_layerwise(df, metric="macro_f1", out=tmp_path / "single")
    gids = _gids(fig.axes[0])
    assert not any(g.startswith(("control", "lexical")) or "embed" in g for g in gids)
    assert list(gids["probe:hook_resid_post"].get_xdata()) == list(range(0, 30, 4))
    assert gids["probe:hook_resid_post"].get_marker() == "o"  # sparse layers show their samples
    assert _legend_labels(fig) == ["resid_post", "chance"]
    assert "emb" not in [t.get_text() for t in fig.axes[0].get_xticklabels()]


def test_nan_cis_draw_no_band():
    df = synthetic_classification()
    df.loc[df["site"] == "hook_mlp_out", ["ci_low", "ci_high"]] = np.nan
    gids = _gids(plot_layerwise(df).axes[0])
    assert "ci:hook_mlp_out" not in gids and "ci:hook_resid_post" in gids


def test_sites_selects_and_orders_lines():
    fig = plot_layerwise(synthetic_classification(), sites=["hook_mlp_out"])
    gids = _gids(fig.axes[0])
    assert "probe:hook_mlp_out" in gids and "probe:hook_resid_post" not in gids
    assert "probe:hook_embed" not in gids
    with pytest.raises(ValueError, match="not in results"):
        plot_layerwise(synthetic_classification(), sites=["hook_attn_out"])
    with pytest.raises(ValueError, match="no probe rows for metric 'r2'"):
        plot_layerwise(synthetic_classification(), metric="r2")


def test_peak_labels_do_not_overlap_each_other():
    df = synthetic_classification(sites=("hook_resid_post", "hook_attn_out", "hook_mlp_out"))
    for site, drop in (("hook_attn_out", 0.02), ("hook_mlp_out", 0.05)):  # same peak layer
        src = df[(df["site"] == "hook_resid_post") & (df["estimator"] == "probe")]
        dst = (df["site"] == site) & (df["estimator"] == "probe")
        df.loc[dst, "value"] = src["value"].to_numpy() - drop
    fig = plot_layerwise(df)
    fig.draw_without_rendering()
    labels = [a for a in fig.axes[0].texts if (a.get_gid() or "").startswith("peak_label")]
    boxes = [a.get_window_extent() for a in labels]
    assert len(boxes) == 3
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    tops = [b.y0 for _, b in sorted(zip(labels, boxes), key=lambda lb: lb[0].get_text())]
    assert tops == sorted(tops)  # stacked labels read top-down in the curves' order
    frame = fig.axes[0].get_window_extent()
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and b.y1 <= frame.y1 for b in boxes)


def test_draws_into_a_given_axes_without_touching_global_state():
    backend, rc = matplotlib.get_backend(), dict(matplotlib.rcParams)
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    assert plot_layerwise(synthetic_regression(), ax=ax, metric="pearson_r") is fig
    assert ax.get_ylabel() == "Pearson r" and ax.get_legend() is not None
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == rc


def test_sweep_panels_one_per_metric(tmp_path):
    fig = plot_sweep_panels(synthetic_classification(), out=tmp_path / "panels.png")
    assert [ax.get_ylabel() for ax in fig.axes] == ["Accuracy", "Macro-F1", "AUROC",
                                                     "Selectivity"]
    assert _png_size(tmp_path / "panels.png") == (7 * DPI, round(2.4 * DPI))
    assert (tmp_path / "panels.svg").stat().st_size > 0
    labels = _legend_labels(fig)
    assert len(labels) == len(set(labels)) and "lexical baseline" in labels
    assert "lexical" not in _gids(fig.axes[3])  # no lexical baseline for selectivity
    chosen = plot_sweep_panels(synthetic_regression(), metrics=["r2", "selectivity"])
    assert [ax.get_ylabel() for ax in chosen.axes] == ["R²", "Selectivity"]


def test_save_figure_returns_both_paths(tmp_path):
    fig = plot_layerwise(synthetic_regression())
    paths = save_figure(fig, tmp_path / "a" / "run.v2")
    assert {p.name for p in paths.values()} == {"run.v2.png", "run.v2.svg"}
    assert all(p.stat().st_size > 0 for p in paths.values())
