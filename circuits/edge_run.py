"""``probe circuits --edges N``: EAP on every edge, edge patching of its top N and N random edges.

Runs on the validation prompts against the run's baseline (:mod:`circuits.edges`), compares the
EAP scores with edge patching (Spearman, recall@k with bootstrap CIs over prompts and a random
ranking's 95th percentile) and writes ``edges_<emotion>.csv`` (every edge's score, the patched
ones with their truth), ``edges_<emotion>.txt`` and the graph ``edges_<emotion>.png/.svg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from circuits import figures
from circuits.edges import ESTIMATORS, edge_attribution, edge_patch
from circuits.runs import Compute, Timer
from circuits.validate import compare, compare_ci, summary


def run_edges(lm, batch, metric, baseline, groups, *, n: int, label: str, out: Path, log,
              seed: int = 0, rows_per_forward: int = 48, estimator: str = "hybrid",
              exact_nodes: int = 2) -> dict:
    """Edge attribution (``estimator``: :data:`circuits.edges.ESTIMATORS`) + edge patching of
    its top ``n`` and ``n`` random other edges; returns a summary."""
    c_attr, c_truth = Compute(), Compute()
    with Timer(c_attr):
        ea = edge_attribution(lm, batch, metric, baseline, estimator=estimator,
                              exact_nodes=exact_nodes, rows_per_forward=rows_per_forward)
    table = ea.table()
    rng = np.random.default_rng(seed)
    rest = np.arange(n, len(table))
    pick = list(range(min(n, len(table)))) + sorted(
        rng.choice(rest, min(n, len(rest)), replace=False).tolist())
    chosen = table.iloc[pick]
    with Timer(c_truth):
        truth = edge_patch(lm, batch, metric, baseline, list(chosen["edge"]),
                           rows_per_forward=rows_per_forward)
    idx = {e: i for i, e in enumerate(table["edge"])}
    u = [ea.upstream.index(x) for x in chosen["upstream"]]
    d = [ea.downstream.index(x) for x in chosen["downstream"]]
    est_rows = ea.per_row[:, u, d]
    est = chosen[["edge"]].rename(columns={"edge": "component"}).assign(type="edges",
                                                                          value=chosen["value"])
    tru = pd.DataFrame({"component": chosen["edge"], "value": truth.mean(0)})
    cmp = compare(est, tru)
    top = [j < n for j in range(len(chosen))]
    cmp = cmp.merge(compare_ci(est_rows, truth, ["edges"] * len(chosen), groups, top=top),
                    on="type").assign(sampled=f"top {n} + {len(chosen) - min(n, len(table))} "
                                              f"random of {len(table)} edges")
    rows, blocks, e = len(batch), metric.layer + 1, len(chosen)
    c_attr.forward_passes, c_attr.backward_passes = 2 * -(-rows // 8), -(-rows // 8)
    c_attr.forward_row_blocks, c_attr.backward_row_blocks = 2 * rows * blocks, rows * blocks
    if estimator in ("eap-sublayer", "hybrid"):  # one sublayer (half a block) per edge and row
        c_attr.forward_row_blocks += -(-int((table["downstream"] != "metric").sum()) * rows // 2)
    exact = table["upstream"].isin(ea.exact)
    if ea.exact:   # hybrid: the patched edges, as edge_patch counts them
        n_exact = int(exact.sum())
        c_attr.forward_passes += 2 + -(-n_exact // max(1, rows_per_forward // rows))
        c_attr.forward_row_blocks += (2 + n_exact) * rows * blocks
    c_truth.forward_passes = 2 + -(-e // max(1, rows_per_forward // rows))
    c_truth.forward_row_blocks = (2 + e) * rows * blocks
    name = {"eap": "EAP", "eap-norm": "EAP-norm", "eap-sublayer": "EAP-sublayer",
            "hybrid": f"hybrid (EAP-sublayer, the edges of {len(ea.exact)} "
                      f"node{'s' if len(ea.exact) != 1 else ''} patched)"}[estimator]
    advice = ("trust the patched edges (--edges N patches N candidates), or try --edge-estimator "
              f"{ESTIMATORS[-1]} and validate it too" if estimator != ESTIMATORS[-1] else
              "trust the patched edges (--edges N patches N candidates; raise N)")
    text = summary(cmp, name, c_attr, c_truth, n_truth_components=len(chosen),
                   n_all_components=len(table), alternative=advice)
    text = "edges (patching = edge patching: only that edge carries its patched value)\n" + text
    if ea.exact:
        text += (f"\nhybrid: the {int(exact.sum())} edges out of {', '.join(ea.exact)} hold patched "
                 f"values (exact by construction); of the estimator's top 10 / 20 / 40, "
                 + " / ".join(str(int(exact.iloc[:k].sum())) for k in (10, 20, 40)) + " are theirs")
        rest = ~chosen["upstream"].isin(ea.exact).to_numpy()
        if rest.sum() >= 3:
            c2 = compare(est[rest], tru[rest]).iloc[0]
            text += (f"\nthe estimated edges alone ({int(rest.sum())} of the {len(chosen)} patched): "
                     f"Spearman {c2['spearman']:.2f}, recall@10 {c2['recall@10']:.2f}, "
                     f"recall@20 {c2['recall@20']:.2f}")
    log(text)
    (out / f"edges_{label}.txt").write_text(text + "\n")
    full = table.assign(patched=np.nan)
    if ea.estimated:   # hybrid: what eap-sublayer said before those edges were patched
        full["estimate"] = full["edge"].map(ea.estimated).fillna(full["value"])
    full.loc[[idx[e] for e in chosen["edge"]], "patched"] = truth.mean(0)
    full.to_csv(out / f"edges_{label}.csv", index=False)
    n_layers = metric.layer + 1
    figures.plot_edges(table, n_layers=n_layers, n_heads=lm.arch.head_shape(lm.model)[0],
                       title=f"{metric.name}: top 40 edges by {name} ({baseline.name} baseline)",
                       out=out / f"edges_{label}")
    return {"edges": len(table), "patched": len(chosen), "prompts": len(batch), "estimator": estimator,
            "exact_nodes": list(ea.exact), "exact_in_top": {k: int(exact.iloc[:k].sum()) for k in (10, 20, 40)},
            "table": cmp.to_dict("records"),
            # "attribution": the estimator's cost whatever it is; "eap" repeats it for readers of
            # runs written before the estimators had names (it was always called that)
            "compute": {"attribution": c_attr.as_dict(), "eap": c_attr.as_dict(),
                        "patching": c_truth.as_dict()}}
