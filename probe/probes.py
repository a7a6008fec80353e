"""Linear probes as scikit-learn estimators, with weights in activation space.

:class:`LogisticProbe` (multinomial logistic regression, L2) and :class:`RidgeProbe` (ridge
regression, for continuous targets such as EmoBank valence/arousal/dominance) standardise
their inputs internally (``mean_``, ``scale_`` learned in ``fit``) with the objective of
``make_pipeline(StandardScaler(), LogisticRegression(C))`` / ``... Ridge(alpha))``. They fit
through the batched engine (:func:`probe.engine.fit_probes` with one site), so a notebook's
probe and a sweep's are one implementation with one zero-variance rule
(:func:`probe.engine.feature_scale`, scikit-learn's). Use them for one layer in a notebook.

Weights are reported twice: ``coef_standardized_`` on the standardised features (what the
optimiser saw; comparable across features), and ``coef_``/``intercept_`` in the ORIGINAL
activation space, so that ``X @ coef_.T + intercept_`` is the decision function on raw
activations and :meth:`LogisticProbe.direction` is a direction you can add to the residual
stream (the gradient of a class logit with respect to the activation).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(["joy", "anger", "fear"], 20)
>>> X = rng.normal(size=(60, 5)) + 3 * (y == "joy")[:, None] * np.eye(5)[0]
>>> probe = LogisticProbe(C=1.0).fit(X, y)
>>> probe.classes_.tolist(), probe.coef_.shape
(['anger', 'fear', 'joy'], (3, 5))
>>> int(np.argmax(probe.direction("joy")))
0
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probe.engine.full import ProbeFit, fit_full


def _fit(est, X: np.ndarray, y, task: str) -> ProbeFit:
    """One site through the engine, in float64 output; sets ``mean_`` and ``scale_``."""
    fit = fit_full(X[None], y, task=task, C=getattr(est, "C", 1.0),
                   alpha=getattr(est, "alpha", 1.0), tol=getattr(est, "tol", 1e-4),
                   max_iter=getattr(est, "max_iter", 1), device="cpu", site_batch=None,
                   site_labels=None, standardize=est.standardize, dtype=np.float64)
    est.mean_, est.scale_ = fit.mean[0], fit.scale[0]
    return fit


def _standardised(est) -> None:
    """``coef_standardized_``/``intercept_standardized_`` from the raw-space ones: the same
    weights on ``(X - mean_) / scale_``."""
    est.coef_standardized_ = est.coef_ * est.scale_
    est.intercept_standardized_ = est.intercept_ + est.coef_ @ est.mean_


def _unit(v: np.ndarray, normalize: bool) -> np.ndarray:
    return v / np.linalg.norm(v) if normalize and np.linalg.norm(v) > 0 else v


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic-regression probe with L2 penalty on standardised features.

    Minimises ``C * sum_i log-loss_i + ||w||^2 / 2`` (intercept unpenalised), the objective of
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))``, solved by the engine in float32
    (probabilities agree with scikit-learn's to ~1e-5).

    Args:
        C: Inverse regularisation strength (0.05: the toolkit's sweep protocol).
        standardize: Standardise features with the training mean and standard deviation.
        max_iter: Iteration cap of the solver (a ``ConvergenceWarning`` when it is hit).
        tol: Solver tolerance (scikit-learn's meaning).

    Attributes:
        classes_: Class labels, sorted.
        mean_, scale_: Standardisation learned in ``fit``.
        coef_: ``[K, d]`` (``[1, d]`` for two classes) weights on raw features.
        intercept_: ``[K]`` (``[1]``) intercepts on raw features.
        coef_standardized_, intercept_standardized_: The same on standardised features.
        n_iter_: Solver iterations, ``[1]``.
    """

    def __init__(self, *, C: float = 0.05, standardize: bool = True, max_iter: int = 1000,
                 tol: float = 1e-4):
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y) -> LogisticProbe:
        """Fit on ``X [n, d]`` and labels ``y [n]``."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"LogisticProbe needs samples of at least 2 classes; got one class "
                             f"({self.classes_[0]!r})")
        fit = _fit(self, X, y, "classification")
        coef, intercept = fit.coef[0], fit.intercept[0]
        if len(self.classes_) == 2:  # scikit-learn's binary form: one row, for classes_[1]
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        self.coef_, self.intercept_ = coef, intercept
        _standardised(self)
        self.n_iter_ = fit.n_iter.astype(np.int32)
        if not fit.converged.all():
            warnings.warn(f"LogisticProbe did not reach tol={self.tol} within max_iter="
                          f"{self.max_iter} iterations; raise max_iter", ConvergenceWarning,
                          stacklevel=2)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits ``[n, K]`` (``[n]`` for two classes: positive means ``classes_[1]``)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[n, K]``, columns in ``classes_`` order."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = np.stack([np.zeros_like(scores), scores], 1)
        scores = scores - scores.max(1, keepdims=True)
        p = np.exp(scores)
        return p / p.sum(1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """Most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, 1)]

    def direction(self, label, *, normalize: bool = True) -> np.ndarray:
        """The raw-space direction that raises ``label``'s logit relative to the others.

        For K > 2 classes this is ``coef_[k]`` (the rows sum to zero, so it already contrasts
        class k with the average class); for two classes it is ``coef_[0]`` or its negation.

        Args:
            label: One of ``classes_``.
            normalize: Scale to unit L2 norm.
        """
        check_is_fitted(self)
        k = int(np.flatnonzero(self.classes_ == label)[0]) if label in self.classes_ else None
        if k is None:
            raise ValueError(f"{label!r} is not one of the classes {self.classes_.tolist()}")
        v = self.coef_[0] * (1 if k == 1 else -1) if len(self.classes_) == 2 else self.coef_[k]
        return _unit(v.copy(), normalize)


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Ridge-regression probe on standardised features, for continuous targets.

    Minimises ``||y - Xw - b||^2 + alpha ||w||^2``, exactly
    ``make_pipeline(StandardScaler(), Ridge(alpha=alpha))`` (closed form in float64); ``y`` may be
    ``[n]`` or ``[n, T]``.

    Args:
        alpha: L2 strength (10: the same penalty per unit of loss as the logistic default).
        standardize: Standardise features with the training mean and standard deviation.

    Attributes:
        mean_, scale_: Standardisation learned in ``fit``.
        coef_: ``[d]`` (``[T, d]``) weights on raw features; ``intercept_`` likewise.
        coef_standardized_, intercept_standardized_: The same on standardised features.
    """

    def __init__(self, *, alpha: float = 10.0, standardize: bool = True):
        self.alpha = alpha
        self.standardize = standardize

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y) -> RidgeProbe:
        """Fit on ``X [n, d]`` and targets ``y [n]`` or ``[n, T]``."""
        X, y = validate_data(self, X, y, y_numeric=True, multi_output=True,
                             dtype=[np.float64, np.float32])
        fit = _fit(self, X, y, "regression")
        self.coef_, self.intercept_ = fit.coef[0], fit.intercept[0]
        if np.ndim(y) == 1:
            self.coef_, self.intercept_ = self.coef_[0], self.intercept_[0]
        _standardised(self)
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted targets ``[n]`` (``[n, T]``)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_.T + self.intercept_

    def direction(self, target: int = 0, *, normalize: bool = True) -> np.ndarray:
        """Raw-space direction along which the (``target``-th) prediction grows."""
        check_is_fitted(self)
        return _unit(np.atleast_2d(self.coef_)[target].copy(), normalize)
