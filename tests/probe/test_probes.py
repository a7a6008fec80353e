"""LogisticProbe and RidgeProbe: scikit-learn estimators, fitted by the engine, raw-space weights.

The logistic probe is solved in float32 by the engine, so it is compared with a float64
scikit-learn fit at a tolerance of ~100 float32 epsilons on probabilities, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from probe.probes import LogisticProbe, RidgeProbe

pytestmark = pytest.mark.usefixtures("one_thread")
F32 = 100 * np.finfo(np.float32).eps  # ~1.2e-5


@parametrize_with_checks([LogisticProbe(), RidgeProbe()])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _data(K: int, n: int = 150, seed: int = 0, scales=(1, 10, 0.1, 1, 100, 1)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    X = rng.normal(size=(n, len(scales))) * scales + 5
    X[:, 0] += 2 * y  # class signal along feature 0
    return X, y


def _reference(X, y, C):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000)
                         ).fit(X, y)


@pytest.mark.parametrize("K", [2, 3, 28])
def test_equals_scaler_plus_logistic_regression(K):
    X, y = _data(K, n=400 if K == 28 else 150)
    ours = LogisticProbe(C=0.3, tol=1e-7).fit(X, y)
    ref = _reference(X, y, 0.3)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=F32)
    coef = ref[-1].coef_
    np.testing.assert_allclose(ours.coef_standardized_, coef, atol=F32 * np.abs(coef).max())
    np.testing.assert_allclose(ours.mean_, ref[0].mean_, rtol=F32)  # moments of float32 X
    np.testing.assert_allclose(ours.scale_, ref[0].scale_, rtol=F32)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("K", [2, 3])
def test_raw_space_coefficients_give_the_decision_function(K):
    X, y = _data(K)
    probe = LogisticProbe(C=1.0, tol=1e-7).fit(X, y)
    ref = _reference(X, y, 1.0)
    expected = ref.decision_function(X).reshape(len(X), -1)
    np.testing.assert_allclose(X @ probe.coef_.T + probe.intercept_, expected,
                               atol=F32 * np.abs(expected).max())
    np.testing.assert_allclose(probe.decision_function(X).reshape(len(X), -1), expected,
                               atol=F32 * np.abs(expected).max())


def test_direction_points_at_the_class_signal():
    X, y = _data(3, scales=(1,) * 6)
    probe = LogisticProbe(C=1.0).fit(X, y)
    top = probe.direction(2)
    assert np.linalg.norm(top) == pytest.approx(1.0)
    assert np.argmax(np.abs(top)) == 0 and top[0] > 0
    assert probe.direction(0)[0] < 0
    binary = LogisticProbe().fit(*_data(2))
    np.testing.assert_allclose(binary.direction(0), -binary.direction(1))
    with pytest.raises(ValueError, match="not one of the classes"):
        probe.direction("surprise")


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticProbe().fit(np.ones((4, 2)), ["joy"] * 4)


def test_without_standardisation_it_is_plain_logistic_regression():
    X, y = _data(3, scales=(1,) * 6)
    ours = LogisticProbe(C=0.1, standardize=False, tol=1e-7).fit(X, y)
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=F32 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-3)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=F32)
    assert ours.mean_.tolist() == [0] * 6 and ours.scale_.tolist() == [1] * 6


def test_zero_variance_features_follow_standard_scaler():
    """One rule for both probes and the engine: scikit-learn's, on the same moments."""
    X, y = _data(3)
    tiny = 1e-6 * np.random.default_rng(2).normal(size=len(X))  # small but float32-exact
    X = np.column_stack([X, np.full(len(X), 300.123), np.zeros(len(X)), tiny])
    ref = _reference(X, y, 0.5)
    for probe in (LogisticProbe(C=0.5, tol=1e-7).fit(X, y), RidgeProbe().fit(X, y * 1.0)):
        np.testing.assert_array_equal(probe.scale_[-3:-1], [1.0, 1.0])
        np.testing.assert_allclose(probe.scale_, ref[0].scale_, rtol=1e-6)
        assert np.isfinite(probe.coef_).all()
    ours = LogisticProbe(C=0.5, tol=1e-7).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=F32)


def test_hitting_max_iter_warns():
    X, y = _data(3)
    with pytest.warns(ConvergenceWarning, match="max_iter=1 "):
        probe = LogisticProbe(max_iter=1).fit(X, y)
    assert probe.n_iter_.tolist() == [1]


@pytest.mark.parametrize("targets", [1, 3])
def test_ridge_probe_matches_sklearn_and_reports_raw_weights(targets):
    X, _ = _data(2)
    rng = np.random.default_rng(1)
    y = X[:, :targets] @ rng.normal(size=(targets, targets)) + rng.normal(size=(len(X), targets))
    y = y[:, 0] if targets == 1 else y
    ours = RidgeProbe(alpha=2.0).fit(X, y)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=2.0)).fit(X, y)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), atol=1e-9)
    np.testing.assert_allclose(ours.coef_standardized_, ref[-1].coef_, rtol=1e-7)
    np.testing.assert_allclose(X @ ours.coef_.T + ours.intercept_, ref.predict(X), atol=1e-9)
    assert np.linalg.norm(ours.direction()) == pytest.approx(1.0)
