"""Each figure draws what it promises and writes PNG + SVG."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuits import figures
from circuits.assemble import Circuit
from circuits.components import Component


def _heads(seed):
    rng = np.random.default_rng(seed)
    rows = [{"component": f"blocks.{L}.attn.hook_z[{h}]", "type": "heads", "layer": L, "unit": h,
             "value": rng.normal()} for L in range(4) for h in range(3)]
    rows += [{"component": f"blocks.{L}.mlp.hook_post[{n}]", "type": "neurons", "layer": L,
              "unit": n, "value": rng.normal()} for L in range(4) for n in range(30)]
    return pd.DataFrame(rows)


def test_every_figure_writes_png_and_svg(tmp_path):
    a, t = _heads(0), _heads(1)
    fig = figures.plot_head_heatmaps(a, t, n_layers=4, n_heads=3, out=tmp_path / "h")
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 2
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (4, 3) and img[2, 1] == a.query("layer == 2 and unit == 1 and type == 'heads'")["value"].iloc[0]
    figures.plot_scatter(a, t, out=tmp_path / "s")
    figures.plot_top_neurons(a, truth=t, k=5, out=tmp_path / "n")
    infl = pd.DataFrame({"kind": ["hook_attn_out", "hook_mlp_out"] * 3, "layer": [0, 0, 1, 1, 2, 2],
                         "influence": [0.1, 0.5, 0.3, 0.9, 1.0, 1.0]})
    figures.plot_sublayer_influence(infl, out=tmp_path / "i")
    cv = pd.DataFrame({"name": "joy", "size": [0, 1, 10, 132], "error": [1, 3.5, 0.1, 0],
                       "error_low": [1, 2.0, 0.05, 0], "error_high": [1, 5.0, 0.2, 0],
                       "split": "test"})
    fig = figures.plot_faithfulness(cv, chosen={"joy": 10}, random={"joy": (0.9, 0.6)},
                                    budget=6, out=tmp_path / "f")
    assert fig.axes[0].lines[0].get_ydata().max() == 2.0  # overshoot (3.5) drawn at the cap
    # a searched circuit is not the curve's top k: its star sits at its own error
    fig = figures.plot_faithfulness(cv, chosen={"joy": (10, 0.05)}, budget=6)
    stars = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_ydata()) == [0.05]
    c = Circuit("joy", "m", [Component.parse("blocks.1.attn.hook_z[2]"),
                             Component.parse("blocks.3.mlp.hook_post[7]")], [2.0, -1.0], 132)
    figures.plot_circuit(c, n_layers=4, n_heads=3, out=tmp_path / "c")
    edges = pd.DataFrame({"upstream": ["blocks.0.attn.hook_z[1]", "blocks.1.hook_mlp_out",
                                       "blocks.0.hook_mlp_out"],
                          "downstream": ["blocks.1.mlp_in", "metric", "blocks.2.attn_in"],
                          "value": [0.5, -1.0, 0.2]})
    fig = figures.plot_edges(edges, n_layers=4, n_heads=3, k=2, out=tmp_path / "e")
    arrows = [t for t in fig.axes[0].texts if t.arrow_patch is not None]
    assert len(arrows) == 2  # the two largest edges are drawn as arrows
    assert [t.get_text() for t in fig.axes[0].texts if t.arrow_patch is None] == ["metric"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "edge raises the metric", "edge lowers it"]
    for stem in "hsnifce":
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert (tmp_path / f"{stem}.svg").read_text().startswith("<?xml")
