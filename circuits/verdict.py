"""What a measured circuit amounts to, in plain sentences and in a dict of pass/fail checks.

The targets (issue 18): at most ``max_fraction`` (5%) of the candidates, a held-out normalised
error of at most ``max_error`` (0.2; its upper CI bound for a firm pass), far from random
circuits of the same size and composition (at most 5% of them as close), and a split-half
Jaccard of at least 0.6. Each check is reported with its numbers; a missed one says so.

>>> for line in describe(circuit, ("heads", "neurons")):   # doctest: +SKIP
...     print(line)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from circuits.closeness import reach
from circuits.stability import MIN_JACCARD

#: A circuit is far from random when at most this share of random circuits is as close.
MAX_RANDOM_SHARE = 0.05


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _ci(pair) -> str:
    return f"[{_f(pair[0])}, {_f(pair[1])}]"


def verdict(circuit) -> dict:
    """``{check: bool}`` for each target, plus ``all``."""
    f, info = circuit.faithfulness, circuit.info
    hi = error_reach(f)
    checks = {
        "small": circuit.fraction <= info.get("max_fraction", 0.05),
        "close": f["error"] <= f["max_error"],
        "close_upper_ci": bool(hi <= f["max_error"]) if not math.isnan(hi) else False,
        "far_from_random": ("random" in f
                            and f["random"]["share_as_close"] <= MAX_RANDOM_SHARE),
        "stable": bool(info.get("stability", {}).get("stable", False)),
    }
    abl = f.get("ablations", {})
    checks["close_under_every_ablation"] = bool(abl) and all(
        a["error"] <= f["max_error"] for a in abl.values())
    checks["all"] = all(checks[k] for k in ("small", "close", "far_from_random", "stable"))
    return checks


def describe(circuit, types: Sequence[str]) -> list[str]:
    """Lines the run prints about a circuit (every number with its CI)."""
    f, c, info = circuit.faithfulness, circuit.completeness, circuit.info
    v = verdict(circuit)
    how = {"upper CI": "the smallest whose upper CI bound of the error on training prompts is",
           "point estimate": "no size's upper CI bound on training prompts was within the limit; "
                             "the smallest whose point estimate is",
           "not reached": "no size short of every candidate reached an error"}[f["chosen_by"]]
    lines = [
        f"circuit: {circuit.size} of {circuit.n_candidates} {'+'.join(types)} "
        f"({100 * circuit.fraction:.2f}%; ranked {info['order']}"
        + (", then searched" if (info.get("search") or {}).get("chosen") else "")
        + f"), chosen as {how} "
        f"<= {f['max_error']:g}" + (" on training prompts; the closest size within the budget "
                                    "is judged" if f["chosen_by"] == "not reached" else ""),
        f"  held-out normalised error |M_k - M| / |M_0 - M| on {f['n_test']} prompts: "
        f"{_f(f['error'])} {_ci(f['error_ci'])} (train {_f(f['error_train'])}); "
        f"M {f['M']:.3g}, circuit {f['M_k']:.3g}, empty {f['M_0']:.3g}"
        + (f"; signed (M_k - M) / (M - M_0) {_s(f['signed_error'])} {_sci(f['signed_error_ci'])} "
           "(> 0 overshoots, < 0 falls short)" if "signed_error" in f else "")
        + ("; the circuit OVERSHOOTS the model (further past it than it should be)"
           if _overshoots(f) else ""),
        f"  faithfulness ratio {_f(f['test'])} {_ci([f['ci_low'], f['ci_high']])}, completeness "
        f"{_f(c['test'])} {_ci([c['ci_low'], c['ci_high']])}; area over sizes: error (CMD) "
        f"{_f(f['area_error'])}, faithfulness (CPR) {_f(f['area_faithfulness'])}",
    ]
    sr = info.get("search")
    if sr:
        parts = [f"{t['size']}: error {_f(t['error_train'])} (signed {_s(t['signed_error_train'])} "
                 f"{_sci(t['signed_train_ci'])}), loss {t['loss_start']:.2f} -> {t['loss']:.2f}, "
                 f"{100 * t['changed']:.0f}% swapped in {t['rounds']} rounds"
                 for t in sr["tried"]]
        lines.insert(1, "  closeness search on training prompts at size " + "; ".join(parts)
                     + (" -- the searched circuit is judged" if sr["chosen"] else
                        " -- the ranking's circuit is judged"))
    if "random" in f:
        r = f["random"]
        lines.append(f"  {r['n']} random circuits of the same composition: error median "
                     f"{_f(r['median'])}, closest 5% {_f(r['p05'])}; {100 * r['share_as_close']:.0f}% "
                     f"as close as the circuit" + ("" if v["far_from_random"] else
                                                   " (NOT far from random)"))
    if f.get("ablations"):
        parts = [f"{k} {_f(a['error'])} {_ci(a['error_ci'])}" for k, a in f["ablations"].items()]
        lines.append("  error of this circuit under each ablation: " + ", ".join(parts)
                     + ("" if v["close_under_every_ablation"] else
                        " (the verdict depends on the ablation)"))
    if "behaviour" in f:
        b = f["behaviour"]
        rnd = (f"; random circuits median {_f(b['random']['median'])}" if "random" in b else "")
        lines.append(f"  on what the model says ({b['metric']}: M {b['M']:.3g}, circuit "
                     f"{b['M_k']:.3g}, empty {b['M_0']:.3g}): error {_f(b['error'])} "
                     f"{_ci(b['error_ci'])}{rnd}")
    s = info.get("stability", {})
    if s.get("n_splits") and s.get("of") == "search":
        rs = info.get("ranking_stability", {})
        lines.append(f"  split-half stability of the searched circuit (each half of {s['groups']} "
                     f"training scenarios ranks and searches; {s['n_splits']} split(s)): Jaccard "
                     f"{_f(s['jaccard'])}" + (f" [{_f(s['ci_low'])}, {_f(s['ci_high'])}]"
                                              if s["n_splits"] > 1 else "")
                     + ("" if s["stable"] else f" (NOT stable: below {MIN_JACCARD})")
                     + (f"; of the ranking's top {rs['k']}: {_f(rs['jaccard'])} "
                        f"{_ci([rs['ci_low'], rs['ci_high']])}" if rs.get("n_splits") else ""))
        checked = (info.get("search") or {}).get("stability_checked") or []
        if len(checked) > 1:
            lines.append("  stability checked from the smallest close size up: " + ", ".join(
                f"{c['size']}: Jaccard {_f(c['jaccard'])}" + ("" if c["stable"] else " (not stable)")
                for c in checked) + (f"; the stable {circuit.size} is judged" if s["stable"] else
                                     "; none stable, the smallest close one is judged"))
    elif s.get("n_splits"):
        lines.append(f"  split-half stability of the ranking (top {s['k']}, {s['n_splits']} splits "
                     f"of {s['groups']} scenarios): Jaccard {_f(s['jaccard'])} "
                     f"{_ci([s['ci_low'], s['ci_high']])}"
                     + ("" if s["stable"] else f" (NOT stable: below {MIN_JACCARD})"))
    missed = [k for k in ("small", "close", "far_from_random", "stable") if not v[k]]
    soft = (f"; close by the point estimate only (CI reaches {_f(error_reach(f))} > "
            f"{f['max_error']:g})" if v["close"] and not v["close_upper_ci"] else "")
    lines.append("  targets: " + ("all met" if not missed else "missed: " + ", ".join(missed))
                 + soft)
    return lines


def _s(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.2f}"


def _sci(pair) -> str:
    return f"[{_s(pair[0])}, {_s(pair[1])}]"


def error_reach(f) -> float:
    """How far from the model the error's 95% CI reaches: the signed interval's farther end
    when the run has it (its interval brackets the estimate), else the upper bound of ``|E|``."""
    if "signed_error_ci" in f:
        return float(reach(*f["signed_error_ci"]))
    return f.get("error_ci", [math.nan, math.nan])[1]


def _overshoots(f) -> bool:
    return (f["M_k"] - f["M"]) * (f["M"] - f["M_0"]) > 0 and f["error"] > f["max_error"]
