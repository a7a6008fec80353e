"""Comparisons of two *different* float computations of the same quantity.

Bit equality (``torch.equal``) only holds where both sides are literally the same computation
(the same kernel on the same tensor). Batched vs one-at-a-time, cached vs recomputed, fused vs
plain solves agree only up to rounding, and how far depends on the CPU (summation order, SIMD
width). So tolerances here scale with the magnitude and dtype of what is compared: an absolute
``atol`` of 1e-5 passes on log-probabilities near -1 and fails on ones near -400 (it did).

Greedy generations from two such computations agree token for token unless two candidates were
within rounding of each other at some step; then the rest of that reply differs. The helpers
for generations therefore allow a small share of replies to diverge (a real bug in batching or
caching changes most of them) and say which ones did.
"""

from __future__ import annotations

import numpy as np

#: float32 machine epsilon (1.19e-7)
F32 = float(np.finfo(np.float32).eps)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual, desired, *, rel: float = 1e-4, equal_nan: bool = False,
                 err_msg: str = "") -> None:
    """``|actual - desired| <= rel * max|desired|`` elementwise (plus ``rel`` on each value).

    ``rel`` is relative to the largest magnitude compared, so one tolerance serves values near 0
    and values near -400 alike. The default suits float32 forward passes through a few layers
    (observed differences are 1e-7 to 3e-6 of the magnitude); pure linear algebra can ask less.
    """
    a, d = _np(actual), _np(desired)
    finite = np.abs(d[np.isfinite(d)]) if d.size else np.zeros(0)
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-30)
    np.testing.assert_allclose(a, d, rtol=rel, atol=rel * scale, equal_nan=equal_nan,
                               err_msg=err_msg)


def close(actual, desired, *, rel: float = 1e-4) -> bool:
    """The boolean form of :func:`assert_close`."""
    try:
        assert_close(actual, desired, rel=rel)
    except AssertionError:
        return False
    return True


def assert_same_generations(a, b, *, max_diverging: int = 1) -> None:
    """Two greedy generations (lists of texts, or ``[batch, new]`` token ids) agree.

    At most ``max_diverging`` replies may differ (a near-tie in one reply flips the rest of it;
    a real bug changes most replies); shapes and lengths must match exactly.
    """
    rows_a = [tuple(r) if not isinstance(r, str) else r for r in _rows(a)]
    rows_b = [tuple(r) if not isinstance(r, str) else r for r in _rows(b)]
    assert len(rows_a) == len(rows_b), (len(rows_a), len(rows_b))
    differ = [i for i, (x, y) in enumerate(zip(rows_a, rows_b)) if x != y]
    assert len(differ) <= max_diverging, (
        f"{len(differ)} of {len(rows_a)} generations differ (at most {max_diverging} may, from "
        f"near-ties): rows {differ}: {[(rows_a[i], rows_b[i]) for i in differ[:3]]}")


def _rows(x) -> list:
    if hasattr(x, "tolist") and not isinstance(x, list):
        return x.tolist()
    return list(x)
