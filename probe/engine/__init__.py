"""Batched linear probes: every site x fold is one problem of one torch solve.

A probe sweep fits the same linear probe at S sites (layers x activation kinds) on F folds.
Here all of them are one batched problem with the objective of
``StandardScaler() + LogisticRegression(C)`` (multinomial, L2, unpenalised intercept) or of
``StandardScaler() + Ridge(alpha)``, each fold standardised on its TRAIN rows only.

* :func:`fit_logistic_cv` / :func:`fit_ridge_cv`: out-of-fold predictions (:class:`CVFit`).
* :func:`fit_probes`: all rows, weights in raw activation space (:class:`ProbeFit`), what a
  sweep saves as each site's probe and direction.

How the logistic solve is fast (``benchmarks/bench_probes.py`` times it against a
scikit-learn loop over a grid of shapes):

* Preconditioned L-BFGS whose preconditioner is the exact Hessian at the starting point,
  ``(C/K) X'X + I`` per site (for K classes), so the solver sees a well-conditioned problem
  whatever the spectrum of the activations: ~20-40 iterations (scikit-learn's unpreconditioned
  L-BFGS: 50-150). Built by shape (:mod:`probe.engine.precondition`): a d x d Gram matrix
  (small d), the n x n kernel (small n) or a randomised rank-256 sketch (both large).
* Form by shape (:func:`probe.engine.precondition.choose`): the primal reads the shared X
  once per pass for ALL folds (each fold's standardisation is folded into its weights), so a
  pass costs one wide matrix product instead of F narrow ones; the dual (fewer train rows than
  features) rotates each fold exactly onto the row space of its train rows, so a problem has
  ``n_train`` instead of d unknowns.
* Logits are cached and updated along the search direction, so an iteration reads X twice
  and the line search never; a site whose folds have all converged leaves the batch.
* float32 throughout (moments accumulated in float64; the ridge in float64), LAPACK
  factorisations on one CPU thread (:func:`probe.engine.prepare.lapack_threads`).

Devices: CPU and CUDA (device-generic torch; only the CPU path is tested here).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 40)
>>> X = rng.normal(size=(2, 120, 8)).astype("float32") + y[None, :, None]
>>> folds = [(np.setdiff1d(np.arange(120), t), t) for t in np.array_split(np.arange(120), 4)]
>>> fit = fit_logistic_cv(X, y, folds, C=0.05)
>>> fit.predictions.shape, bool(fit.converged.all())
((2, 120, 3), True)
"""

from probe.engine.full import ProbeFit, fit_probes
from probe.engine.logistic import CVFit, Form, fit_logistic_cv, memory_estimate
from probe.engine.prepare import FoldList, feature_scale
from probe.engine.ridge import fit_ridge_cv

__all__ = ["CVFit", "FoldList", "Form", "ProbeFit", "feature_scale", "fit_logistic_cv",
           "fit_probes", "fit_ridge_cv", "memory_estimate"]
