"""Linear probes as scikit-learn estimators, with weights in activation space.

:class:`LogisticProbe` (multinomial logistic regression, L2) and :class:`RidgeProbe` (ridge
regression, for continuous targets such as EmoBank valence/arousal/dominance) standardise
their inputs internally (``mean_``, ``scale_`` learned in ``fit``) and then fit scikit-learn's
``LogisticRegression`` / ``Ridge``. They are the reference the batched engine
(:mod:`probe.engine`) is tested against, and what to use for one layer in a notebook.

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

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def _standardise(est, X: np.ndarray) -> np.ndarray:
    """Learn ``mean_``/``scale_`` (zero-variance features keep scale 1) and apply them."""
    if est.standardize:
        est.mean_ = X.mean(0)
        scale = X.std(0)
        est.scale_ = np.where(scale > 10 * np.finfo(X.dtype).eps, scale, 1.0)
    else:
        est.mean_, est.scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])
    return (X - est.mean_) / est.scale_


def _to_raw_space(est) -> None:
    """``coef_``/``intercept_`` such that ``X @ coef_.T + intercept_`` acts on raw inputs."""
    est.coef_ = est.coef_standardized_ / est.scale_
    est.intercept_ = est.intercept_standardized_ - est.coef_ @ est.mean_


def _unit(v: np.ndarray, normalize: bool) -> np.ndarray:
    return v / np.linalg.norm(v) if normalize and np.linalg.norm(v) > 0 else v


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic-regression probe with L2 penalty on standardised features.

    Minimises ``C * sum_i log-loss_i + ||w||^2 / 2`` (intercept unpenalised), exactly
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))``.

    Args:
        C: Inverse regularisation strength (0.05: the toolkit's sweep protocol).
        standardize: Standardise features with the training mean and standard deviation.
        max_iter: Iteration cap of the L-BFGS solver.
        tol: Solver tolerance (scikit-learn's meaning).

    Attributes:
        classes_: Class labels, sorted.
        mean_, scale_: Standardisation learned in ``fit``.
        coef_: ``[K, d]`` (``[1, d]`` for two classes) weights on raw features.
        intercept_: ``[K]`` (``[1]``) intercepts on raw features.
        coef_standardized_, intercept_standardized_: The same on standardised features.
        n_iter_: Solver iterations.
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
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        model.fit(_standardise(self, X), y)
        self.coef_standardized_, self.intercept_standardized_ = model.coef_, model.intercept_
        self.n_iter_ = model.n_iter_
        _to_raw_space(self)
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
    ``make_pipeline(StandardScaler(), Ridge(alpha=alpha))``; ``y`` may be ``[n]`` or ``[n, T]``.

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
        model = Ridge(alpha=self.alpha).fit(_standardise(self, X), y)
        self.coef_standardized_, self.intercept_standardized_ = model.coef_, model.intercept_
        _to_raw_space(self)
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
