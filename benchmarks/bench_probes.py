"""Batched probe engine vs. a plain scikit-learn loop, shape by shape, timed in one run.

The reference is what a sweep would otherwise do: for every site and fold,
``make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000))`` fitted on the
train rows and scored on the held-out rows, under ONE BLAS thread (its fastest setting on a
small shared CPU: many small products, and busy-waiting threads). The engine
(``probe.engine.fit_logistic_cv``, defaults as the sweep uses them) runs with the same number of
torch threads (``--threads``, default 1), so the ratio compares like with like. On a shared
machine, ``--repeats 2`` alternates the two sides and keeps each one's fastest run.

Each shape gets its own synthetic activations with the structure of real residual streams: an
anisotropic (power-law) spectrum from a low-dimensional latent space mixed into d features plus
isotropic noise, a few huge "massive activation" features with large offsets, and class signal
in a low-dimensional subspace whose strength rises and falls with depth (site index). A
``control`` shape uses labels that carry no signal (a permutation of the real ones), what the
sweep's control task fits. Folds: 5-fold stratified. Reported per shape: the time of each side,
the ratio (sklearn / engine), the held-out accuracy of each (mean over sites) and the largest
per-site accuracy difference in points, the engine's form and iterations.

    python benchmarks/bench_probes.py --quick                 # 7 shapes
    python benchmarks/bench_probes.py                         # the whole grid (18 shapes)
    python benchmarks/bench_probes.py --shapes 2000x576x7x8 --shapes 300x4096x7x4c
    python benchmarks/bench_probes.py --store /tmp/engine-store.zarr --only-store --json out.json

``--store`` adds the real default-sweep case (every layer x pooling of a ``probe cache`` store,
probe and control task, the sweep's group folds). Shapes are ``n x d x classes x sites`` with a
trailing ``c`` for a control run. The biggest shapes use fewer sites (see ``GRID``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probe.engine import fit_logistic_cv


@dataclass(frozen=True, kw_only=True)
class Shape:
    """One benchmark problem: S sites of n samples x d features, K classes."""

    n: int
    d: int
    K: int
    S: int
    control: bool = False

    @classmethod
    def parse(cls, text: str) -> Shape:
        control = text.endswith("c")
        n, d, K, S = (int(v) for v in text.rstrip("c").split("x"))
        return cls(n=n, d=d, K=K, S=S, control=control)

    def __str__(self) -> str:
        return f"{self.n}x{self.d}x{self.K}x{self.S}{'c' if self.control else ''}"


QUICK = ["100x576x2x8", "300x576x7x8", "300x576x7x8c", "300x4096x7x4", "2000x576x7x8",
         "2000x4096x28x2", "10000x576x7x2"]
#: The grid: n 100 .. 50,000, d 576 .. 8,192, 2 .. 28 classes, n < d, control runs. Sites per
#: shape shrink with its size (the largest have one or two). Both sides of the whole grid took
#: 45 min on the project's 2-core machine while other work ran (load ~11; 87% of it scikit-learn).
GRID = QUICK + ["100x8192x7x4", "300x8192x28x2", "2000x576x2x8", "2000x576x7x8c",
                "2000x8192x7x2", "10000x2048x7x2", "10000x576x28x2", "10000x576x7x2c",
                "10000x8192x7x1", "50000x576x7x1", "50000x2048x4x1"]


def synthetic_activations(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``[S, n, d]`` float32 residual-stream-like features and n labels (see module doc)."""
    rng = np.random.default_rng(seed)
    n, d, K, S = shape.n, shape.d, shape.K, shape.S
    y = np.arange(n) % K
    rng.shuffle(y)
    r = min(d, 128)  # latent dimensions; variance ~ 1/j
    sd = np.arange(1, r + 1, dtype=np.float32) ** -0.5
    m = min(K - 1, 12)  # class signal lives in m latent directions (not the top ones)
    X = np.empty((S, n, d), np.float32)
    for s in range(S):
        strength = 0.3 + 1.5 * np.sin(np.pi * (s + 1) / (S + 1))
        latent = rng.standard_normal((n, r), dtype=np.float32) * sd
        sig = rng.choice(np.arange(2, r), m, replace=False)
        means = rng.standard_normal((K, m)).astype(np.float32) * strength / np.sqrt(m)
        latent[:, sig] += means[y] * sd[sig] * 2
        mix = rng.standard_normal((r, d), dtype=np.float32) / np.sqrt(r)
        h = latent @ mix
        h += 0.05 * rng.standard_normal((n, d), dtype=np.float32)
        h[:, :3] = h[:, :3] * 50 + 300  # "massive activations"
        X[s] = h + rng.standard_normal(d, dtype=np.float32)
    if shape.control:
        y = rng.permutation(y)  # labels that carry no signal
    return X, y


def sklearn_loop(X, y, folds, C: float) -> tuple[np.ndarray, list[int]]:
    """Held-out predictions ``[S, n]`` and iteration counts of one fit per site and fold."""
    pred, iters = np.empty(X.shape[:2], dtype=y.dtype), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for s in range(len(X)):
            for train, test in folds:
                model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
                pred[s, test] = model.fit(X[s, train], y[train]).predict(X[s, test])
                iters.append(int(model[-1].n_iter_[0]))
    return pred, iters


def compare(name: str, problems, C: float, repeats: int = 1) -> dict:
    """Time both sides on ``problems`` (a list of ``(X, y, folds)``), alternately (engine,
    sklearn, engine, ...) ``repeats`` times each; the fastest run of each side counts."""
    t_engine = t_sklearn = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fits = [fit_logistic_cv(X, y, folds, C=C) for X, y, folds in problems]
        t_engine = min(t_engine, time.perf_counter() - start)
        start = time.perf_counter()
        with threadpool_limits(1):
            refs = [sklearn_loop(X, y, folds, C) for X, y, folds in problems]
        t_sklearn = min(t_sklearn, time.perf_counter() - start)
    ours = np.concatenate([(f.predictions.argmax(-1) == np.unique(y, return_inverse=True)[1])
                           .mean(1) for f, (_, y, _) in zip(fits, problems)])
    theirs = np.concatenate([(p == y).mean(1) for (p, _), (_, y, _) in zip(refs, problems)])
    return {
        "shape": name, "engine_s": t_engine, "sklearn_s": t_sklearn,
        "ratio": t_sklearn / t_engine,
        "acc_engine": float(ours.mean()), "acc_sklearn": float(theirs.mean()),
        "max_acc_diff_points": float(100 * np.abs(ours - theirs).max()),
        "form": "/".join(sorted({f.form for f in fits})),
        "engine_iter_max": int(max(f.n_iter.max() for f in fits)),
        "engine_converged": float(np.mean([f.converged.mean() for f in fits])),
        "sklearn_iter_mean": float(np.mean([i for _, it in refs for i in it])),
    }


def run_shape(shape: Shape, C: float, folds: int, repeats: int) -> dict:
    X, y = synthetic_activations(shape)
    split = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(X[0], y))
    row = compare(str(shape), [(X, y, split)], C, repeats)
    return {**asdict(shape), **row}


def store_problems(path: str):
    """The real sweep's problems: every layered site x pooling, probe and control labels."""
    from probe.baselines import control_labels, last_word_keys
    from probe.evaluate import EvalConfig, make_folds
    from probe.store import open_store
    from probe.sweep import probe_targets

    ds = open_store(path, require_complete=False)
    t = probe_targets(ds, None)
    task, y, rows = t.task, t.y, t.rows
    if task != "classification":
        raise SystemExit(f"{path}: the store's default target is not a classification target")
    groups = ds["group"].values.astype(str)[rows]
    folds = make_folds(y, groups, task, EvalConfig())
    texts = ds["text"].values.astype(str)[rows].tolist()
    control = control_labels(last_word_keys(texts), y, folds, seed=0)
    problems = []
    for name, var in ds.data_vars.items():
        if "layer" not in var.dims or "pooling" not in var.dims:
            continue
        for pooling in var["pooling"].values:
            X = np.asarray(var.sel(pooling=pooling).values, np.float32)[rows]
            X = np.ascontiguousarray(X.reshape(len(rows), X.shape[1], -1).transpose(1, 0, 2))
            problems += [(X, y, folds), (X, control, folds)]
    sites = sum(len(X) for X, _, _ in problems) // 2
    return f"store {len(rows)} rows x {sites} site-poolings x {len(np.unique(y))} classes " \
           f"(probe + control)", problems


def format_table(rows: list[dict]) -> str:
    head = (f"{'shape (n x d x K x sites)':>28} {'form':>6} {'engine s':>9} {'sklearn s':>9} "
            f"{'ratio':>6} {'acc eng':>7} {'acc skl':>7} {'max|dacc|':>9} {'iters':>5} "
            f"{'skl it':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:>28} {r['form']:>6} {r['engine_s']:9.2f} {r['sklearn_s']:9.2f} "
                     f"{r['ratio']:6.1f} {r['acc_engine']:7.3f} {r['acc_sklearn']:7.3f} "
                     f"{r['max_acc_diff_points']:9.2f} {r['engine_iter_max']:5d} "
                     f"{r['sklearn_iter_mean']:6.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} small shapes")
    p.add_argument("--shapes", action="append", default=None,
                   help="n x d x classes x sites[c], repeatable, added to --quick's "
                        "(default without either: the grid)")
    p.add_argument("--store", help="also time the real sweep on this probe cache store")
    p.add_argument("--only-store", action="store_true", help="skip the synthetic shapes")
    p.add_argument("--C", type=float, default=0.05, help="inverse L2 strength (%(default)s)")
    p.add_argument("--folds", type=int, default=5, help="folds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the engine (default: %(default)s; sklearn: always 1)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per side, alternating; the fastest counts (default: 1)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = (QUICK if args.quick else []) + (args.shapes or [])
    shapes = [] if args.only_store else [Shape.parse(s) for s in names or GRID]
    warm = Shape(n=60, d=8, K=3, S=1)
    fit_logistic_cv(*synthetic_activations(warm), [(np.arange(30, 60), np.arange(30))])
    print(f"engine: {args.threads} torch thread(s); sklearn: 1 BLAS thread; C={args.C}, "
          f"{args.folds} folds", flush=True)
    rows = []
    for shape in shapes:
        rows.append(run_shape(shape, args.C, args.folds, args.repeats))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    if args.store:
        name, problems = store_problems(args.store)
        rows.append(compare(name, problems, args.C, args.repeats))
    print()
    print(format_table(rows))
    if rows:
        worst = min(rows, key=lambda r: r["ratio"])
        print(f"\nslowest ratio {worst['ratio']:.1f}x at {worst['shape']}; largest accuracy "
              f"difference {max(r['max_acc_diff_points'] for r in rows):.2f} points")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "C": args.C, "folds": args.folds,
                       "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
