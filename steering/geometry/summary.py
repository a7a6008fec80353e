"""What ``probe geometry`` prints: the layer profile of the primary source and the agreements."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _cell(r) -> str:
    ci = "" if pd.isna(r.ci_low) else f" [{r.ci_low:.2f}, {r.ci_high:.2f}]"
    p = "p<0.001" if r.p_value < 0.001 else f"p={r.p_value:.3f}"
    return f"{r.value:.2f}{ci} {p}"


def headline(table: pd.DataFrame, source: str, scale: str, pc: int) -> pd.DataFrame:
    rows = table[
        (table.experiment == "pc_vs_rating")
        & (table.source == source)
        & (table.metric == "abs_r")
        & (table.scale == scale)
        & (table.pc == pc)
    ]
    return rows.sort_values("layer")


def format_summary(table: pd.DataFrame, run: dict) -> str:
    lines = []
    sources = list(dict.fromkeys(table[table.experiment == "pc_vs_rating"].source))
    for src in sources:
        val, aro = headline(table, src, "valence", 1), headline(table, src, "arousal", 2)
        if val.empty:
            continue
        n = int(val.n.iloc[0])
        lines.append(
            f"\n{src} ({n} emotions): |Pearson r| of PC scores with human ratings, 95% CI "
            "over texts, permutation p"
        )
        lines.append(f"{'layer':>5s}  {'PC1 vs valence':<30s} {'PC2 vs arousal':<30s}")
        for (_, v), (_, a) in zip(val.iterrows(), aro.iterrows()):
            lines.append(f"{int(v.layer):>5d}  {_cell(v):<30s} {_cell(a):<30s}")
        bl = table[
            (table.experiment == "best_layer") & (table.source == src) & (table.metric == "abs_r")
        ]
        for scale, pc in (("valence", 1), ("arousal", 2)):
            b = bl[(bl.scale == scale) & (bl.pc == pc)]
            if not b.empty:
                b = b.iloc[0]
                lines.append(
                    f"best layer for PC{pc}-{scale}: {int(b.layer)}, {_cell(b)} "
                    f"(p over the max of all layers)"
                )
        for scale in ("valence", "arousal"):
            b = bl[bl.scale == scale]
            if not b.empty:
                b = b.loc[b.value.idxmax()]
                lines.append(
                    f"  {scale} on any of the top PCs: PC{int(b.pc)} at layer {int(b.layer)}, "
                    f"{_cell(b)}"
                )
    agree = table[table.experiment == "rdm_agreement"]
    if not agree.empty:
        layers = sorted(agree.layer.unique())
        at = layers[min(len(layers) - 1, round(2 * len(layers) / 3))]
        lines.append(
            f"\nRDM agreement (Spearman, 95% CI) at layer {at} (~2/3 depth) and its best layer:"
        )
        for (a, b), d in agree.groupby(["source", "other"], sort=False):
            r = d[d.layer == at].iloc[0]
            best = d.loc[d.value.idxmax()]
            lines.append(
                f"  {a} vs {b} ({int(r.n)} emotions): {r.value:.2f} [{r.ci_low:.2f}, "
                f"{r.ci_high:.2f}]; best {best.value:.2f} at layer {int(best.layer)}"
            )
    secs = run.get("seconds", {})
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in secs.items() if k != "total")
    lines.append(f"\ntime: {secs.get('total', float('nan')):.0f} s ({stages})")
    return "\n".join(lines)


def print_summary(out: Path, run: dict) -> None:
    table = pd.read_csv(Path(out) / "results.csv")
    print(format_summary(table, run))
    figures = ", ".join(run.get("figures", []))
    print(f"wrote results.csv/json, vectors/, {figures} and run.json to {out}")
