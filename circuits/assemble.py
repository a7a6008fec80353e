"""Circuits: the smallest set of components that reproduces the model, and how close it is.

Components (heads and neurons by default) are ranked by an attribution (:mod:`circuits.
attribution`, against the mean baseline); the circuit of size ``k`` is the top ``k``. For each
``k`` on a grid, keep the circuit and ablate every other candidate (of the ranked types, up to
the metric's layer); ``M`` is the intact model, ``M_0`` everything ablated:

* **normalised error** ``E(k) = |mean M_k - mean M| / |mean M_0 - mean M|`` (MIB's CMD-style
  closeness, :mod:`circuits.closeness`): 0 = the circuit reproduces the model, 1 = no better
  than the empty circuit; overshooting the model is error, not success;
* **faithfulness** ``F(k) = mean(M_k - M_0) / mean(M - M_0)`` (``E = |1 - F|``);
* **completeness** ``C(k) = mean(M_-k - M_0) / mean(M - M_0)``: ablate the circuit, keep the rest.

:func:`find_circuit` chooses the ranking order and the size on *training* prompts: the smallest
grid size whose error's upper 95% CI bound is at most ``max_error`` (0.2). On *held-out* prompts
it reports the curves, the areas over sizes (CMD of the error, CPR of ``F``), random circuits of
the same composition, the error under mean, zero and resample ablation, a behavioural metric
and the split-half stability of the ranking, with bootstrap CIs over scenario groups.
:class:`Circuit` is saved as JSON.

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

from circuits.attribution import Attribution
from circuits.baselines import MeanBaseline, take
from circuits.closeness import (
    MAX_ERROR,
    area,
    choose_size,
    composition,
    error_ci,
    evaluate_sets,
    judge,
    reach,
    signed_error_ci,
)
from circuits.components import Component, Group
from circuits.metrics import Metric
from circuits.report import clean_json
from circuits.runs import Compute
from circuits.search import search
from circuits.stability import MIN_JACCARD, halves, jaccard, split_half, top_k
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
        max_error: Normalised error a circuit must stay within (upper CI bound on training
            prompts).
        max_fraction: Size budget as a fraction of the candidate components (reported).
        sizes: Circuit sizes to evaluate (default: a geometric grid up to every candidate);
            the size budget (``max_fraction`` of the candidates) is always one of them.
        order: ``"signed"`` keeps the components whose ablation lowers the metric most;
            ``"abs"`` ranks by ``|effect|``; ``"auto"`` keeps whichever has the smaller error
            area on training prompts.
        n_boot: Bootstrap resamples of scenario groups for CIs.
        n_random: Random circuits of the same composition judged beside the circuit.
        n_random_behaviour: Of those, how many are also judged on the behavioural metric.
        n_splits: Random half splits for the split-half stability.
        seed: Random circuits.
        search_rounds: When the ranking reaches no circuit close at the CI level within the
            budget, refine its top ``budget`` by the closeness search (:mod:`circuits.search`)
            for at most this many rounds on training prompts, then halve the size while the
            searched circuit stays close (``search_halvings`` times at most); 0: no search.
        search_splits: Split-half checks of a searched circuit (rank and search on each half
            of the training scenarios, Jaccard of the two circuits).
        search_stable: When the searched circuit chosen by closeness is not stable, take the
            next larger searched circuit that is as close and stable (a halving is kept only
            while it stays stable).
    """

    types: tuple[str, ...] = ("heads", "neurons")
    max_error: float = MAX_ERROR
    max_fraction: float = 0.10
    sizes: tuple[int, ...] | None = None
    order: Literal["signed", "abs", "auto"] = "auto"
    n_boot: int = 1000
    n_random: int = 20
    n_random_behaviour: int = 10
    n_splits: int = 200
    seed: int = 0
    rows_per_forward: int = 48
    search_rounds: int = 0
    search_halvings: int = 3
    search_splits: int = 1
    search_stable: bool = True


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
        path.write_text(json.dumps(clean_json(self.to_dict()), indent=1, allow_nan=False,
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
           means, sizes: Sequence[int], *, completeness: bool = True,
           row_groups: Sequence[str] | None = None, n_boot: int = 1000,
           rows_per_forward: int = 48, compute: Compute | None = None) -> pd.DataFrame:
    """Closeness, faithfulness (and completeness) of the top-``k`` circuits for ``k`` in ``sizes``.

    Returns one row per size with the normalised ``error`` ``|M_k - M| / |M_0 - M|`` and its CI,
    ``faithfulness`` and its CI, ``completeness`` and its CI, ``M``, ``M_0``, ``M_k`` means and
    ``n`` prompts. ``means`` is any baseline (mean, zero, resample ablation).
    """
    n_all = len(ranked)
    keep = [k for k in sizes if k > 0]
    drops = [k for k in sizes if 0 < k < n_all] if completeness else []
    sets = [ranked[:k] for k in keep] + [ranked[:k] for k in drops]
    m, m0, ms = evaluate_sets(lm, batch, metric, sets, groups, means,
                              drop=[False] * len(keep) + [True] * len(drops),
                              rows_per_forward=rows_per_forward, compute=compute)
    kept = dict(zip(keep, ms[:len(keep)]))
    dropped = dict(zip(drops, ms[len(keep):]))
    effect = m - m0
    _, elo, ehi = _ratio(effect, np.ones_like(effect), row_groups, n_boot)
    rows = []
    for k in sizes:
        mk = kept.get(k, m0)
        f, flo, fhi = _ratio(mk - m0, m - m0, row_groups, n_boot)
        e, lo, hi = error_ci(m, mk, m0, row_groups, n_boot=n_boot)
        se, slo, shi = signed_error_ci(m, mk, m0, row_groups, n_boot=n_boot)
        row = {"size": k, "error": e, "error_low": lo, "error_high": hi,
               "signed_error": se, "signed_low": slo, "signed_high": shi,
               "faithfulness": f, "faithfulness_low": flo, "faithfulness_high": fhi,
               "M": m.mean(), "M_0": m0.mean(), "M_k": mk.mean(), "n": len(m),
               "effect": effect.mean(), "effect_low": elo, "effect_high": ehi}
        if completeness:
            mdrop = m0 if k >= n_all else (m if k == 0 else dropped[k])
            c, clo, chi = _ratio(mdrop - m0, m - m0, row_groups, n_boot)
            row.update(completeness=c, completeness_low=clo, completeness_high=chi)
        rows.append(row)
    return pd.DataFrame(rows)


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
                 train_groups=None, test_groups=None, ablation_baselines: dict | None = None,
                 behaviour: Metric | None = None, test_texts: Sequence[str] | None = None
                 ) -> tuple[Circuit, pd.DataFrame]:
    """Rank, choose the size by closeness on ``train``, judge on ``test``.

    The ranking order (``config.order``; ``"auto"`` tries signed and ``|score|`` rankings and
    keeps the one with the smaller error area on ``train``) and the size (the smallest whose
    error's upper CI on ``train`` is at most ``config.max_error``) are chosen on training
    prompts only. On held-out prompts the circuit is compared with ``config.n_random`` random
    circuits of the same composition, under each of ``ablation_baselines`` (``{name:
    baseline}``; the ranking's mean ablation is always there) and, with ``behaviour``, on a
    second metric (what the model says). The curves table has a ``split`` column.
    """
    ranked0, _, gs = ranking(attr, config.types)
    n_all = len(ranked0)
    budget = int(config.max_fraction * n_all)   # the largest size the target allows is tried too
    sizes = tuple(sorted(set(config.sizes or default_sizes(n_all)) | {0, n_all}
                         | ({budget} if 0 < budget < n_all else set())))
    sizes = tuple(s for s in sizes if 0 <= s <= n_all)
    compute = Compute()
    kw = {"rows_per_forward": config.rows_per_forward, "compute": compute}
    m, m0, _ = evaluate_sets(lm, train, metric, [], gs, means, **kw)
    sign = 1.0 if m.mean() >= m0.mean() else -1.0
    orders = ("signed", "abs") if config.order == "auto" else (config.order,)
    tried = {}
    for order in orders:
        ranked, scores, _ = ranking(attr, config.types, sign=sign, order=order)
        tr = curves(lm, train, metric, ranked, gs, means, sizes, completeness=False,
                    row_groups=train_groups, n_boot=config.n_boot, **kw)
        tried[order] = (area(tr["size"], tr["error"].clip(upper=ERROR_CAP), n_all), ranked,
                        scores, tr)
    order = min(tried, key=lambda o: tried[o][0])
    _, ranked, scores, tr = tried[order]
    k, how = choose_size(tr["size"], tr["error"], reach(tr["signed_low"], tr["signed_high"]),
                         max_error=config.max_error,
                         n_all=n_all, budget=int(config.max_fraction * n_all))
    te = curves(lm, test, metric, ranked, gs, means, sizes, completeness=True,
                row_groups=test_groups, n_boot=config.n_boot, **kw)
    at, at_tr = te[te["size"] == k].iloc[0], tr[tr["size"] == k].iloc[0]
    chosen = ranked[:k]
    searched, stab = None, None
    if config.search_rounds and 0 < budget < n_all and not (how == "upper CI" and k <= budget):
        found = _search_sizes(lm, train, metric, ranked, gs, means, config, train_groups, budget,
                              compute)
        pick = _pick([(r["size"], r["error"], reach(r["signed_low"], r["signed_high"]), i)
                      for i, (_, r) in enumerate(tr.iterrows()) if 0 < r["size"] < n_all]
                     + [(len(res.components), row["error"], reach(row["signed_low"],
                                                                    row["signed_high"]), -1 - j)
                        for j, (res, row) in enumerate(found)], config.max_error, budget)
        searched = {"tried": [{"size": len(res.components), **res.as_dict(),
                               "error_train": float(row["error"]),
                               "signed_error_train": float(row["signed_error"]),
                               "signed_train_ci": [float(row["signed_low"]), float(row["signed_high"])]}
                              for res, row in found], "chosen": pick[0] < 0}
        if pick[0] < 0:
            j, stab, searched["stability_checked"] = _stable_choice(
                found, -1 - pick[0], pick[1], config,
                lambda size: _search_stability(lm, attr, train, metric, gs, means, config,
                                               train_groups, size, order, sign, compute))
            res, at_tr = found[j]
            chosen, k, how = res.components, len(res.components), pick[1]
            at = curves(lm, test, metric, _first(chosen, ranked), gs, means, (0, k), completeness=True,
                        row_groups=test_groups, n_boot=config.n_boot, **kw).iloc[1]
        else:
            k, how = int(tr["size"].iloc[pick[0]]), pick[1]
            at, at_tr = te[te["size"] == k].iloc[0], tr[tr["size"] == k].iloc[0]
            chosen = ranked[:k]
    judged = judge(lm, chosen, ranked0, gs, metric, test, means, config, test_groups,
                   ablation_baselines, behaviour, test_texts, compute)
    per_row, comps = _per_row(attr, gs)
    idx = {c: i for i, c in enumerate(comps)}
    ranking_stab = split_half(per_row[:, [idx[c] for c in ranked]], _row_groups(attr, train_groups),
                              k=k, order=order, sign=sign, n_splits=config.n_splits)
    stab = stab or {**ranking_stab, "of": "ranking"}
    score = dict(zip(ranked, scores))
    circuit = Circuit(
        name, metric.name, chosen, [float(score[c]) for c in chosen], n_all,
        faithfulness={"error": float(at["error"]), "error_ci": [float(at["error_low"]),
                                                                 float(at["error_high"])],
                      "signed_error": float(at["signed_error"]),
                      "signed_error_ci": [float(at["signed_low"]), float(at["signed_high"])],
                      "error_train": float(at_tr["error"]),
                      "error_train_ci": [float(at_tr["error_low"]), float(at_tr["error_high"])],
                      "max_error": config.max_error, "chosen_by": how,
                      "area_error": area(te["size"], te["error"].clip(upper=ERROR_CAP), n_all),
                      "area_faithfulness": area(te["size"], te["faithfulness"], n_all),
                      "test": float(at["faithfulness"]), "ci_low": float(at["faithfulness_low"]),
                      "ci_high": float(at["faithfulness_high"]),
                      "train": float(at_tr["faithfulness"]), "n_test": int(at["n"]),
                      "M": float(at["M"]), "M_0": float(at["M_0"]), "M_k": float(at["M_k"]),
                      "ablation_effect": float(at["effect"]),
                      "ablation_effect_ci": [float(at["effect_low"]), float(at["effect_high"])],
                      **judged},
        completeness={"test": float(at["completeness"]), "ci_low": float(at["completeness_low"]),
                      "ci_high": float(at["completeness_high"])},
        info={"estimator": attr.estimator, "baseline": attr.baseline, "order": order,
              "orders_tried": {o: v[0] for o, v in tried.items()},
              "types": list(config.types), "composition": composition(chosen),
              "close_on_train": how != "not reached", "stability": stab,
              "ranking_stability": ranking_stab, "search": searched,
              "within_budget": k <= config.max_fraction * n_all, "max_fraction": config.max_fraction,
              "compute": compute.as_dict()})
    return circuit, pd.concat([tr.assign(split="train"), te.assign(split="test")], ignore_index=True)


def _pick(cands: list[tuple], max_error: float, budget: int) -> tuple[int, str]:
    """``(key, how)`` of the circuit chosen among ``(size, error, reach, key)`` candidates: the
    smallest whose error's CI reaches no further than ``max_error``, else the smallest whose
    point estimate is within it, else the closest within ``budget`` (:func:`choose_size`'s rule;
    at equal size the smaller error)."""
    cands = sorted(cands, key=lambda c: (c[0], c[1]))
    for test, how in ((lambda c: np.isfinite(c[2]) and c[2] <= max_error, "upper CI"),
                      (lambda c: c[1] <= max_error, "point estimate")):
        ok = [c for c in cands if test(c)]
        if ok:
            return ok[0][3], how
    pool = [c for c in cands if c[0] <= budget] or cands
    return min(pool, key=lambda c: (c[1] if np.isfinite(c[1]) else np.inf, c[0]))[3], "not reached"


def _first(chosen, ranked) -> list:
    """Every candidate, ``chosen`` first (its top ``len(chosen)`` is the circuit)."""
    inside = set(chosen)
    return list(chosen) + [c for c in ranked if c not in inside]


def _search_sizes(lm, train, metric, ranked, gs, means, config, train_groups, budget, compute):
    """Search at the budget, then at half the size while the searched circuit stays close on
    training prompts (its signed CI within ``max_error``); ``[(SearchResult, train row)]``."""
    out, size = [], budget
    for _ in range(config.search_halvings + 1):
        res = search(lm, train, metric, gs, means, ranked[:size], rounds=config.search_rounds)
        compute.add(res.compute)
        row = curves(lm, train, metric, _first(res.components, ranked), gs, means, (0, size), completeness=False,
                     row_groups=train_groups, n_boot=config.n_boot,
                     rows_per_forward=config.rows_per_forward, compute=compute).iloc[1]
        out.append((res, row))
        if reach(row["signed_low"], row["signed_high"]) > config.max_error or size < 2:
            break
        size //= 2
    return out


def _stable_choice(found, j: int, how: str, config, stability) -> tuple[int, dict, list[dict]]:
    """Which searched circuit ``found[j]`` (largest first) to judge: the one chosen by closeness
    when its split-half check (``stability(size)``) is stable; else, with
    ``config.search_stable``, the next larger one that is as close on training prompts by the
    same rule (``how``) and stable; when none is, the first choice. ``(j, stability, checked)``."""
    checked, first = [], None
    while True:
        stab = stability(len(found[j][0].components))
        checked.append({"size": len(found[j][0].components), "jaccard": stab["jaccard"],
                        "stable": stab["stable"]})
        first = first or (j, stab)
        if stab["stable"] or not config.search_stable or j == 0:
            break
        row = found[j - 1][1]
        close = {"upper CI": reach(row["signed_low"], row["signed_high"]) <= config.max_error,
                 "point estimate": row["error"] <= config.max_error}.get(how, False)
        if not close:
            break
        j -= 1
    return (j, stab, checked) if stab["stable"] else (*first, checked)


def _search_stability(lm, attr, train, metric, gs, means, config, train_groups, k, order, sign,
                      compute) -> dict:
    """Rank and search on each half of the training scenarios; the Jaccard of the two circuits
    (``config.search_splits`` random splits; each half ranks with its own attribution rows and
    searches on its own training prompts). The split is stratified
    (:func:`circuits.stability.halves`): the
    circuit's training prompts' scenarios and the scenarios only the ranking saw are each halved,
    so a half ranks with half of *all* the attribution rows, as the ranking's own split-half
    check does."""
    per_row, comps = _per_row(attr, gs)
    rgroups = np.asarray(_row_groups(attr, None) or [], dtype=str)
    tgroups = np.asarray(train_groups if train_groups is not None else range(len(train)), dtype=str)
    uniq = np.unique(tgroups)
    others = np.setdiff1d(np.unique(rgroups), uniq) if len(rgroups) == len(per_row) else np.array([], str)
    base = {"k": k, "n_splits": 0, "groups": len(uniq) + len(others), "of": "search",
            "stable": False, "jaccard": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    if len(uniq) < 4:
        return {**base, "note": "fewer than 4 training scenarios: no split"}
    rng = np.random.default_rng(config.seed)
    vals = []
    for _ in range(config.search_splits):
        found = []
        for half in halves(uniq, others, rng=rng):
            rows = np.isin(rgroups, half) if len(rgroups) == len(per_row) else np.ones(0, bool)
            mean = per_row[rows].mean(0) if rows.any() else per_row.mean(0)
            start = [comps[i] for i in top_k(mean, k, order=order, sign=sign)]
            sub = take(train, np.flatnonzero(np.isin(tgroups, half)))
            res = search(lm, sub, metric, gs, means, start, rounds=config.search_rounds)
            compute.add(res.compute)
            found.append(set(res.components))
        vals.append(jaccard(*found))
    j = float(np.median(vals))
    return {**base, "n_splits": len(vals), "jaccard": j, "ci_low": float(min(vals)),
            "ci_high": float(max(vals)), "stable": bool(j >= MIN_JACCARD)}


#: Errors above this are drawn and integrated as this (an overshooting circuit can reach 100s).
ERROR_CAP = 2.0


def _per_row(attr: Attribution, gs: list[Group]) -> tuple[np.ndarray, list[Component]]:
    comps = [c for g in gs for c in g.components()]
    return np.concatenate([attr.per_row[g].double().numpy() for g in gs], axis=1), comps


def _row_groups(attr: Attribution, fallback):
    n = next(iter(attr.per_row.values())).shape[0]
    if attr.row_groups is not None and len(attr.row_groups) == n:
        return list(attr.row_groups)
    return list(fallback) if fallback is not None and len(fallback) == n else None


def overlap(circuits: Sequence[Circuit]) -> pd.DataFrame:
    """Jaccard overlap of the circuits' component sets (a square table)."""
    names = [c.name for c in circuits]
    sets = [set(map(str, c.components)) for c in circuits]
    m = [[len(a & b) / len(a | b) if a | b else float("nan") for b in sets] for a in sets]
    return pd.DataFrame(m, index=names, columns=names)
