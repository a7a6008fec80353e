"""Batched probe engine vs. a scikit-learn loop on the same folds, timed in one run.

The reference is what a sweep would otherwise do: for every layer and fold,
``make_pipeline(StandardScaler(), LogisticRegression(C))`` fitted on the train rows and
evaluated on the held-out rows. The engine (``probe.engine.fit_logistic_cv``) solves all
layers x folds at once. Both see the same synthetic activations (power-law spectrum, a few
"massive" features, class signal that rises and falls with depth, shared labels) and the same
folds; the script prints both timings, their ratio and how far held-out accuracies differ.

    python benchmarks/bench_probes.py                       # 2,000 x 31 layers x 576, 4 classes
    python benchmarks/bench_probes.py --n 500 --layers 8    # quick look

The scikit-learn loop is timed twice: with default BLAS threading (what a plain loop gets, and
what FACTS.md measured) and pinned to one BLAS thread, which on a small shared CPU is often ~10x
faster (many small matrix products; busy-waiting threads). ``--threads N`` pins both methods.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probe.engine import fit_logistic_cv, memory_estimate


def synthetic_activations(n: int, layers: int, d: int, classes: int, seed: int = 0):
    """Residual-stream-like features: anisotropic, heavy features, depth-dependent signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    spectrum = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    X = np.empty((layers, n, d), np.float32)
    for layer in range(layers):
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        strength = 0.03 + 0.13 * np.sin(np.pi * (layer + 1) / (layers + 1))  # peak ~0.95
        means = rng.standard_normal((classes, d)).astype(np.float32) * strength * spectrum
        h = (rng.standard_normal((n, d)).astype(np.float32) * spectrum + means[y]) @ Q
        h[:, :2] *= 50  # "massive activations"
        X[layer] = h + rng.standard_normal(d).astype(np.float32)
    return X, y


def sklearn_loop(X, y, folds, C: float) -> np.ndarray:
    """Held-out predictions [layers, n] from one sklearn fit per layer and fold."""
    pred = np.empty(X.shape[:2], dtype=y.dtype)
    for layer in range(len(X)):
        for train, test in folds:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
            pred[layer, test] = model.fit(X[layer, train], y[train]).predict(X[layer, test])
    return pred


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="samples (default: %(default)s)")
    p.add_argument("--layers", type=int, default=31, help="sites (default: %(default)s)")
    p.add_argument("--d", type=int, default=576, help="features (default: %(default)s)")
    p.add_argument("--classes", type=int, default=4, help="classes (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="folds (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timings per method; the best is compared (default: %(default)s)")
    p.add_argument("--C", type=float, default=0.05, help="inverse L2 strength (%(default)s)")
    p.add_argument("--device", default="cpu", help="engine device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and BLAS threads for both methods (default: library defaults)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)

    X, y = synthetic_activations(args.n, args.layers, args.d, args.classes)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(X[0], y))
    print(f"{args.n} samples x {args.layers} layers x {args.d} features, {args.classes} "
          f"classes, {args.folds} folds, C={args.C}; torch threads {torch.get_num_threads()}")
    fit_logistic_cv(X[:1, :100], y[:100], [(np.arange(50, 100), np.arange(50))])  # warm-up
    fit, t_engine = timed(lambda: fit_logistic_cv(X, y, folds, C=args.C, device=args.device),
                          args.repeats)
    ours = (fit.predictions.argmax(-1) == y).mean(1)
    print(f"engine ({fit.form}): {min(t_engine):.2f} s  (runs: "
          f"{', '.join(f'{t:.2f}' for t in t_engine)}; iterations max {fit.n_iter.max()}, "
          f"mean {fit.n_iter.mean():.1f}; converged {fit.converged.mean():.0%}; "
          f"~{memory_estimate(args.layers, args.n, args.d, args.folds, args.classes, fit.form) / 2**20:.0f}"
          f" MiB working memory)")
    pred, t_sklearn = timed(lambda: sklearn_loop(X, y, folds, args.C), args.repeats)
    theirs = (pred == y).mean(1)
    threads = f"{args.threads} BLAS thread(s)" if args.threads else "default BLAS threads"
    print(f"sklearn loop ({args.layers * args.folds} fits, {threads}): {min(t_sklearn):.2f} s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in t_sklearn)}) -> engine is "
          f"{min(t_sklearn) / min(t_engine):.1f}x faster")
    if not args.threads:  # sklearn's best configuration on a small CPU: one BLAS thread
        with threadpool_limits(1):
            _, t_one = timed(lambda: sklearn_loop(X, y, folds, args.C), args.repeats)
        print(f"sklearn loop, 1 BLAS thread: {min(t_one):.2f} s -> engine is "
              f"{min(t_one) / min(t_engine):.1f}x faster")
    gap = np.abs(ours - theirs)
    same = (fit.predictions.argmax(-1) == pred).mean()
    print(f"held-out accuracy, engine vs sklearn: max |diff| {gap.max() * 100:.2f} points, "
          f"mean {gap.mean() * 100:.3f}; identical predictions {same:.2%}")
    print("accuracy by layer (engine / sklearn):")
    print("  " + "  ".join(f"L{i}:{a:.3f}/{b:.3f}" for i, (a, b) in enumerate(zip(ours, theirs))))


if __name__ == "__main__":
    main()
