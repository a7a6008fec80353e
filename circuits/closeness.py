"""Faithfulness as closeness to the model (MIB's CMD), random circuits of the same make-up.

A circuit ``C`` keeps its components and ablates every other candidate; ``M_C`` is the metric
then, ``M`` the intact model's, ``M_0`` the empty circuit's (every candidate ablated). Its
**normalised error**

    E(C) = |mean M_C - mean M| / |mean M_0 - mean M|

is 0 when the circuit reproduces the model, 1 when it does no better than the empty circuit,
and above 1 when it is further from the model than nothing at all -- *overshoot* (driving the
metric past the model's value) counts as error, never as success. ``E = |1 - F|`` for the
faithfulness ratio ``F = (M_C - M_0) / (M - M_0)``. Its **signed** form
``S = (mean M_C - mean M) / (mean M - mean M_0) = F - 1`` says which way a circuit misses:
``S > 0`` overshoots (past the model, away from the empty circuit), ``S < 0`` falls short; its
bootstrap interval (:func:`signed_error_ci`) brackets the estimate even when ``E`` is near 0,
where the percentile interval of an absolute value need not. The **area** of ``E`` over circuit sizes
(as a fraction of the candidates, trapezoids) is MIB's CMD; the area of ``F`` is its CPR.

:func:`evaluate_sets` measures any number of component sets in shared forwards;
:func:`matched_random` draws random circuits with the same number of components per type and
layer band; :func:`error_ci` bootstraps ``E`` over scenario groups.

>>> m, m0, ms = evaluate_sets(lm, batch, metric, [circuit], groups, means)  # doctest: +SKIP
>>> error_ci(m, ms[0], m0, row_groups)                                      # doctest: +SKIP
(0.12, 0.05, 0.21)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from circuits.ablations import ResampleBaseline
from circuits.baselines import Sources
from circuits.components import Component, Group
from circuits.metrics import Metric
from circuits.patching import run_per_row
from circuits.runs import Compute
from probe.forward import Batch

#: A circuit is close to the model when its normalised error is at most this.
MAX_ERROR = 0.2


def evaluate_sets(lm, batch: Batch, metric: Metric, sets: Sequence[Sequence[Component]],
                  groups: Sequence[Group], baseline, *, drop: Sequence[bool] | None = None,
                  rows_per_forward: int = 48, compute: Compute | None = None,
                  texts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Metric per row of the intact model, the empty circuit and each set kept.

    Every unit of ``groups`` is a candidate. ``sets[i]`` is kept and every other candidate is
    replaced by ``baseline``'s value; with ``drop[i]`` True the set is ablated instead and the
    rest kept (completeness). Returns ``(M [rows], M_0 [rows], M_sets [sets, rows])``.
    """
    compute = compute if compute is not None else Compute()
    drop = list(drop) if drop is not None else [False] * len(sets)
    sites = [g.site for g in groups]
    sources = (baseline.bind(lm, batch, sites, texts=texts) if texts is not None
               and isinstance(baseline, ResampleBaseline) else baseline.bind(lm, batch, sites))
    inside = _membership(groups, [()] + [list(s) for s in sets])
    modes = torch.tensor([False] + drop)  # True: ablate the set, keep the rest

    def factory(chunk, rows, sub):
        n = len(rows) // len(chunk)
        idx = torch.tensor(chunk).repeat_interleave(n)
        return {g.site: _hook(inside[g][idx] ^ modes[idx][:, None], sources, rows, g)
                for g in groups}

    items = list(range(len(sets) + 1))
    base, out = run_per_row(lm, batch, metric, items, lambda it: 0, factory,
                            rows_per_forward=rows_per_forward, skip=False, compute=compute,
                            notes=[])
    m = base.double().numpy()
    delta = out.double().numpy()
    return m, m + delta[0], m[None, :] + delta[1:]


def _membership(groups: Sequence[Group], sets: list[list[Component]]) -> dict[Group, Tensor]:
    """``{group: [sets, units] bool}``: which units each set contains."""
    by_site = {g.site: g for g in groups}
    out = {g: torch.zeros(len(sets), g.n_units, dtype=torch.bool) for g in groups}
    for i, s in enumerate(sets):
        for c in s:
            g = by_site.get(c.site.whole)
            if g is None:
                raise ValueError(f"{c} is not among the candidates ({len(groups)} groups)")
            out[g][i, c.unit] = True
    return out


def _hook(keep: Tensor, sources: Sources, rows: Tensor, g: Group):
    """Ablate, in row ``r``, the units of ``g`` where ``keep[r]`` is False."""
    def fn(value: Tensor, ctx) -> Tensor:
        m = sources.mask[rows][:, :, None] & ~keep[:, None, :]
        m = m if value.dim() == 3 else m[..., None].expand_as(value)
        return torch.where(m, sources(g.site, value, rows), value)
    return fn


# ---------------------------------------------------------------------------- statistics
def _weights(groups, n: int, n_boot: int, seed: int) -> np.ndarray | None:
    keys = np.asarray(groups if groups is not None else np.arange(n))
    uniq, inv = np.unique(keys, return_inverse=True)
    if len(uniq) < 2 or n_boot < 1:
        return None
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)[:, inv]
    return w / w.sum(1, keepdims=True)


def normalised_error(m: np.ndarray, m_set: np.ndarray, m_empty: np.ndarray) -> float:
    """``|mean M_C - mean M| / |mean M_0 - mean M|`` (inf when the empty circuit equals M)."""
    den = abs(float(np.mean(m_empty) - np.mean(m)))
    num = abs(float(np.mean(m_set) - np.mean(m)))
    return num / den if den > 0 else float("inf")


def error_ci(m: np.ndarray, m_set: np.ndarray, m_empty: np.ndarray, groups=None, *,
             n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Normalised error and its 95% bootstrap CI, resampling scenario groups (rows if None)."""
    value = normalised_error(m, m_set, m_empty)
    w = _weights(groups, len(m), n_boot, seed)
    if w is None:
        return value, float("nan"), float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.abs(w @ (m_set - m)) / np.abs(w @ (m_empty - m))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return value, float(lo), float(hi)


def signed_error(m: np.ndarray, m_set: np.ndarray, m_empty: np.ndarray) -> float:
    """``(mean M_C - mean M) / (mean M - mean M_0)``: > 0 overshoots, < 0 falls short, -1 is
    the empty circuit (nan when the empty circuit equals the model)."""
    den = float(np.mean(m) - np.mean(m_empty))
    return float(np.mean(m_set) - np.mean(m)) / den if den != 0 else float("nan")


def signed_error_ci(m: np.ndarray, m_set: np.ndarray, m_empty: np.ndarray, groups=None, *,
                    n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """:func:`signed_error` and its 95% bootstrap CI over scenario groups (the same resamples
    as :func:`error_ci` with the same seed). A circuit is close at the CI level when the whole
    interval lies within ``[-max_error, max_error]``."""
    value = signed_error(m, m_set, m_empty)
    w = _weights(groups, len(m), n_boot, seed)
    if w is None:
        return value, float("nan"), float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (w @ (m_set - m)) / (w @ (m - m_empty))
    lo, hi = np.quantile(boot[np.isfinite(boot)], [0.025, 0.975]) if np.isfinite(boot).any() \
        else (float("nan"), float("nan"))
    return value, float(lo), float(hi)


def reach(low, high):
    """How far a signed error's interval reaches from 0: its farther end's magnitude (nan where
    an end is nan). Works on numbers and on arrays (a curve's rows)."""
    return np.maximum(np.abs(low), np.abs(high))


def area(sizes: Sequence[int], values: Sequence[float], n_all: int) -> float:
    """Trapezoid area of ``values`` over ``size / n_all`` (MIB's CMD for errors, CPR for F)."""
    x = np.asarray(sizes, float) / n_all
    y = np.asarray(values, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def choose_size(sizes: Sequence[int], error: Sequence[float], error_high: Sequence[float], *,
                max_error: float = MAX_ERROR, n_all: int | None = None,
                budget: int | None = None) -> tuple[int, str]:
    """The smallest size whose error's upper CI bound is ``<= max_error``.

    Every candidate kept (``n_all``) reproduces the model by definition and is never chosen.
    Returns ``(size, how)`` with ``how`` ``"upper CI"``, ``"point estimate"`` (no size's upper
    bound qualifies but a point estimate does) or ``"not reached"``: then the size with the
    smallest error within ``budget`` (or among all sizes when none is within it), so that what
    a small circuit achieves is still measured and compared with random circuits.
    """
    s, e, hi = (np.asarray(v, float) for v in (sizes, error, error_high))
    proper = (s > 0) & (s < n_all) if n_all is not None else s > 0
    ok = proper & np.isfinite(hi) & (hi <= max_error)
    if ok.any():
        return int(s[ok].min()), "upper CI"
    ok = proper & (e <= max_error)
    if ok.any():
        return int(s[ok].min()), "point estimate"
    pool = proper & (s <= budget) if budget is not None else proper
    pool = pool if pool.any() else proper
    if not pool.any():
        return int(s.max()), "not reached"
    e = np.where(pool & np.isfinite(e), e, np.inf)
    return int(s[np.argmin(e)]), "not reached"


# ------------------------------------------------------------------------- random circuits
def band_of(c: Component, band: int) -> tuple[str, int]:
    return c.type, c.layer // band


def matched_random(circuit: Sequence[Component], candidates: Sequence[Component], *, n: int = 20,
                   band: int = 5, seed: int = 0) -> list[list[Component]]:
    """``n`` random circuits with as many components as ``circuit`` per type and per band of
    ``band`` layers, drawn without replacement from ``candidates``."""
    strata: dict[tuple, list[Component]] = {}
    for c in candidates:
        strata.setdefault(band_of(c, band), []).append(c)
    need: dict[tuple, int] = {}
    for c in circuit:
        need[band_of(c, band)] = need.get(band_of(c, band), 0) + 1
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        draw = []
        for key, k in sorted(need.items()):
            pool = strata[key]
            draw += [pool[i] for i in sorted(rng.choice(len(pool), k, replace=False))]
        out.append(draw)
    return out


def composition(components: Sequence[Component], band: int = 5) -> dict[str, int]:
    """``{"heads L0-4": 3, ...}``: counts per type and layer band."""
    out: dict[str, int] = {}
    for c in components:
        t, b = band_of(c, band)
        key = f"{t} L{b * band}-{b * band + band - 1}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def random_summary(m: np.ndarray, m_empty: np.ndarray, m_random: np.ndarray, circuit_error: float
                   ) -> dict:
    """Errors of random circuits: median, 5th percentile (the closest), share at least as
    close as the circuit."""
    errs = np.array([normalised_error(m, r, m_empty) for r in m_random])
    return {"n": len(errs), "median": float(np.median(errs)),
            "p05": float(np.quantile(errs, 0.05)), "p95": float(np.quantile(errs, 0.95)),
            "share_as_close": float(np.mean(errs <= circuit_error))}


def judge(lm, chosen, candidates, gs, metric, test, means, config, test_groups, ablation_baselines,
           behaviour, test_texts, compute) -> dict:
    """The circuit ``chosen`` on held-out prompts: random circuits of the same composition,
    other ablations, the behavioural metric (``config``: a :class:`circuits.assemble.CircuitConfig`)."""
    kw = {"rows_per_forward": config.rows_per_forward, "compute": compute}
    k, out = len(chosen), {}
    randoms = (matched_random(chosen, candidates, n=config.n_random, seed=config.seed)
               if 0 < k < len(candidates) and config.n_random else [])
    m, m0, ms = evaluate_sets(lm, test, metric, [chosen] + randoms, gs, means, **kw)
    err = normalised_error(m, ms[0], m0)
    if randoms:
        out["random"] = random_summary(m, m0, ms[1:], err)
    abl = {"mean": (m, m0, ms[0])}
    for name, base in (ablation_baselines or {}).items():
        if name != "mean":
            a, a0, am = evaluate_sets(lm, test, metric, [chosen], gs, base, texts=test_texts, **kw)
            abl[name] = (a, a0, am[0])
    out["ablations"] = {}
    for name, (a, a0, ak) in abl.items():
        e, lo, hi = error_ci(a, ak, a0, test_groups, n_boot=config.n_boot)
        out["ablations"][name] = {"error": e, "error_ci": [lo, hi], "M": float(a.mean()),
                                  "M_0": float(a0.mean()), "M_k": float(ak.mean())}
    if behaviour is not None:
        rb = randoms[:config.n_random_behaviour]
        b, b0, bs = evaluate_sets(lm, test, behaviour, [chosen] + rb, gs, means, **kw)
        e, lo, hi = error_ci(b, bs[0], b0, test_groups, n_boot=config.n_boot)
        beh = {"metric": behaviour.name, "error": e, "error_ci": [lo, hi], "M": float(b.mean()),
               "M_0": float(b0.mean()), "M_k": float(bs[0].mean())}
        if rb:
            beh["random"] = random_summary(b, b0, bs[1:], e)
        out["behaviour"] = beh
    return out
