"""Circuits: the smallest set of components that keeps the metric, and how faithful it is.

Components (heads and neurons by default) are ranked by an attribution (:mod:`circuits.
attribution`, against the mean baseline); the circuit of size ``k`` is the top ``k``. For each
``k`` on a grid:

* **faithfulness** ``F(k) = mean(M_k - M_0) / mean(M - M_0)``: keep the circuit, mean-ablate
  every other component (of the ranked types, up to the metric's layer); ``M`` is the intact
  model, ``M_0`` everything ablated. 1 = the circuit alone carries the metric;
* **completeness** ``C(k) = mean(M_{-k} - M_0) / mean(M - M_0)``: ablate the circuit, keep the
  rest. Near 0 = nothing outside the circuit carries the metric.

Both are ratios to ``M - M_0``, the effect of ablating everything, reported with its own CI
(``effect``): where that CI comes near 0 the ratios and their CIs are unstable.

:func:`find_circuit` picks the smallest grid size whose faithfulness on the *training* prompts
reaches the target, then reports the curves and the chosen circuit's faithfulness on
*held-out* prompts, with bootstrap CIs over scenario groups. :class:`Circuit` is saved as JSON.

>>> circuit = find_circuit(lm, attr, metric, train, test, means, name="happiness")  # doctest: +SKIP
>>> circuit.save("runs/x/circuit_happiness.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.attribution import Attribution
from circuits.baselines import MeanBaseline, Sources
from circuits.components import Component, Group
from circuits.metrics import Metric
from circuits.patching import run_per_row
from circuits.runs import Compute
from probe.errors import EmoprobeError
from probe.forward import Batch

FORMAT = "emoprobe.circuit/1"


class CircuitError(EmoprobeError, ValueError):
    """A circuit cannot be found or read as asked."""


@dataclass(frozen=True, kw_only=True)
class CircuitConfig:
    """How circuits are assembled.

    Attributes:
        types: Component types a circuit is made of.
        target: Faithfulness to reach.
        max_fraction: Size budget as a fraction of the candidate components (reported).
        sizes: Circuit sizes to evaluate (default: a geometric grid up to every candidate).
        order: ``"signed"`` keeps the components whose ablation lowers the metric most;
            ``"abs"`` ranks by ``|effect|``.
        n_boot: Bootstrap resamples of scenario groups for CIs.
    """

    types: tuple[str, ...] = ("heads", "neurons")
    target: float = 0.8
    max_fraction: float = 0.10
    sizes: tuple[int, ...] | None = None
    order: Literal["signed", "abs"] = "signed"
    n_boot: int = 1000
    rows_per_forward: int = 48


@dataclass
class Circuit:
    """A circuit: its components (best first) and how it was measured."""

    name: str
    metric: str
    components: list[Component]
    scores: list[float]
    n_candidates: int
    faithfulness: dict = field(default_factory=dict)
    completeness: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.components)

    @property
    def fraction(self) -> float:
        return self.size / self.n_candidates if self.n_candidates else float("nan")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "name": self.name, "metric": self.metric, "size": self.size,
                "n_candidates": self.n_candidates, "fraction": self.fraction,
                "faithfulness": self.faithfulness, "completeness": self.completeness,
                "info": self.info,
                "components": [{"name": str(c), "type": c.type, "layer": c.layer, "unit": c.unit,
                                "score": s} for c, s in zip(self.components, self.scores)]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False,
                                   default=_json_default) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise CircuitError(f"{path} is not a circuit file (format {data.get('format')!r}, "
                               f"expected {FORMAT!r})")
        comps = [Component.parse(c["name"]) for c in data["components"]]
        return cls(data["name"], data["metric"], comps, [c["score"] for c in data["components"]],
                   data["n_candidates"], data.get("faithfulness", {}),
                   data.get("completeness", {}), data.get("info", {}))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {obj!r}")


# ------------------------------------------------------------------------------ ranking
def ranking(attr: Attribution, types: Sequence[str], *, sign: float = 1.0,
            order: str = "signed") -> tuple[list[Component], np.ndarray, list[Group]]:
    """Components of ``types`` best first; ``sign`` is the sign of ``M - M_0``."""
    gs = [g for g in attr.groups if g.type in types]
    if not gs:
        raise CircuitError(f"the attribution has no {'/'.join(types)} components; attribute "
                           "them first (types=...)")
    comps, vals = [], []
    for g in gs:
        comps += g.components()
        vals.append(attr.scores(g).double().numpy())
    v = np.concatenate(vals)
    key = -np.abs(v) if order == "abs" or not attr.signed else sign * v
    idx = np.argsort(key, kind="stable")
    return [comps[i] for i in idx], v[idx], gs


def default_sizes(n: int) -> tuple[int, ...]:
    """0, then 1-2-5 steps up to ``n`` (and ``n`` itself)."""
    out, base = [0], 1
    while base < n:
        out += [s * base for s in (1, 2, 5) if s * base < n]
        base *= 10
    return tuple(out + [n])


# ----------------------------------------------------------------------- faithfulness curves
def curves(lm, batch: Batch, metric: Metric, ranked: Sequence[Component], groups: list[Group],
           means: MeanBaseline, sizes: Sequence[int], *, completeness: bool = True,
           row_groups: Sequence[str] | None = None, n_boot: int = 1000,
           rows_per_forward: int = 48, compute: Compute | None = None) -> pd.DataFrame:
    """Faithfulness (and completeness) of the top-``k`` circuits for each ``k`` in ``sizes``.

    Returns one row per size with ``faithfulness``, its CI, ``completeness`` and its CI,
    ``M``, ``M_0``, ``M_k`` means and ``n`` prompts.
    """
    compute = compute if compute is not None else Compute()
    sources = means.bind(lm, batch, [g.site for g in groups])
    ranks = {c: i for i, c in enumerate(ranked)}
    n_all = len(ranked)
    items = [("keep", 0)] + [("keep", k) for k in sizes if k > 0]
    if completeness:
        items += [("drop", k) for k in sizes if 0 < k < n_all]

    def factory(chunk, rows, sub):
        n = len(rows) // len(chunk)
        return {g.site: _keep_hook(g, chunk, n, ranks, sources, rows) for g in groups}

    notes: list[str] = []
    base, out = run_per_row(lm, batch, metric, items, lambda it: 0, factory,
                            rows_per_forward=rows_per_forward, skip=False, compute=compute,
                            notes=notes)
    m_full = base.double().numpy()
    delta = {it: out[i].double().numpy() for i, it in enumerate(items)}
    m0 = m_full + delta[("keep", 0)]
    effect = m_full - m0
    _, elo, ehi = _ratio(effect, np.ones_like(effect), row_groups, n_boot)
    rows = []
    for k in sizes:
        mk = m_full + delta[("keep", k)] if k > 0 else m0
        f, flo, fhi = _ratio(mk - m0, m_full - m0, row_groups, n_boot)
        row = {"size": k, "faithfulness": f, "faithfulness_low": flo, "faithfulness_high": fhi,
               "M": m_full.mean(), "M_0": m0.mean(), "M_k": mk.mean(), "n": len(m_full),
               "effect": effect.mean(), "effect_low": elo, "effect_high": ehi}
        if completeness:
            mdrop = m0 if k >= n_all else (m_full if k == 0 else m_full + delta[("drop", k)])
            c, clo, chi = _ratio(mdrop - m0, m_full - m0, row_groups, n_boot)
            row.update(completeness=c, completeness_low=clo, completeness_high=chi)
        rows.append(row)
    return pd.DataFrame(rows)


def _keep_hook(g: Group, chunk, n: int, ranks: dict, sources: Sources, rows: Tensor):
    """Mean-ablate, in each row, the units of ``g`` outside (keep) or inside (drop) its circuit."""
    comps = g.components()
    r = torch.tensor([ranks.get(c, -1) for c in comps])  # rank of each unit (-1: not ranked)

    def fn(value: Tensor, ctx) -> Tensor:
        ablate = torch.zeros(len(rows), g.n_units, dtype=torch.bool)
        for j, (mode, k) in enumerate(chunk):
            inside = (r >= 0) & (r < k)
            ablate[j * n:(j + 1) * n] = (~inside & (r >= 0)) if mode == "keep" else inside
        pos = sources.mask[rows]
        m = pos[:, :, None] & ablate[:, None, :]
        m = m if value.dim() == 3 else m[..., None].expand_as(value)
        return torch.where(m, sources(g.site, value, rows), value)

    return fn


def _ratio(num: np.ndarray, den: np.ndarray, groups, n_boot: int, seed: int = 0):
    value = num.mean() / den.mean()
    keys = np.asarray(groups if groups is not None else np.arange(len(num)))
    uniq, inv = np.unique(keys, return_inverse=True)
    if len(uniq) < 2 or n_boot < 1:
        return value, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)[:, inv]
    ratios = (w @ num) / (w @ den)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return float(value), float(lo), float(hi)


# ------------------------------------------------------------------------------- circuits
def find_circuit(lm, attr: Attribution, metric: Metric, train: Batch, test: Batch,
                 means: MeanBaseline, *, name: str, config: CircuitConfig = CircuitConfig(),
                 train_groups=None, test_groups=None) -> tuple[Circuit, pd.DataFrame]:
    """Rank, choose the size on ``train``, measure on ``test``; returns the circuit and curves.

    The curves table has a ``split`` column (``train``: faithfulness only; ``test``: both).
    """
    ranked0, _, gs = ranking(attr, config.types)
    n_all = len(ranked0)
    sizes = tuple(sorted(set(config.sizes or default_sizes(n_all)) | {0, n_all}))
    sizes = tuple(s for s in sizes if 0 <= s <= n_all)
    compute = Compute()
    probe = curves(lm, train, metric, ranked0, gs, means, (0,), completeness=False,
                   rows_per_forward=config.rows_per_forward, n_boot=0, compute=compute)
    sign = 1.0 if probe["M"].iloc[0] >= probe["M_0"].iloc[0] else -1.0
    ranked, scores, _ = ranking(attr, config.types, sign=sign, order=config.order)
    tr = curves(lm, train, metric, ranked, gs, means, sizes, completeness=False,
                row_groups=train_groups, n_boot=config.n_boot,
                rows_per_forward=config.rows_per_forward, compute=compute)
    reach = tr[tr["faithfulness"] >= config.target]
    k = int(reach["size"].min()) if len(reach) else n_all
    te = curves(lm, test, metric, ranked, gs, means, sizes, completeness=True,
                row_groups=test_groups, n_boot=config.n_boot,
                rows_per_forward=config.rows_per_forward, compute=compute)
    at = te[te["size"] == k].iloc[0]
    circuit = Circuit(
        name, metric.name, ranked[:k], [float(s) for s in scores[:k]], n_all,
        faithfulness={"test": float(at["faithfulness"]), "ci_low": float(at["faithfulness_low"]),
                      "ci_high": float(at["faithfulness_high"]),
                      "train": float(tr[tr["size"] == k]["faithfulness"].iloc[0]),
                      "target": config.target, "n_test": int(at["n"]),
                      "ablation_effect": float(at["effect"]),
                      "ablation_effect_ci": [float(at["effect_low"]), float(at["effect_high"])]},
        completeness={"test": float(at["completeness"]), "ci_low": float(at["completeness_low"]),
                      "ci_high": float(at["completeness_high"])},
        info={"estimator": attr.estimator, "baseline": attr.baseline, "order": config.order,
              "types": list(config.types), "reached_target_on_train": bool(len(reach)),
              "within_budget": k <= config.max_fraction * n_all, "max_fraction": config.max_fraction,
              "compute": compute.as_dict()})
    return circuit, pd.concat([tr.assign(split="train"), te.assign(split="test")], ignore_index=True)


def overlap(circuits: Sequence[Circuit]) -> pd.DataFrame:
    """Jaccard overlap of the circuits' component sets (a square table)."""
    names = [c.name for c in circuits]
    sets = [set(map(str, c.components)) for c in circuits]
    m = [[len(a & b) / len(a | b) if a | b else float("nan") for b in sets] for a in sets]
    return pd.DataFrame(m, index=names, columns=names)
