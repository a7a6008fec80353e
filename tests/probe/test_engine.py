"""The batched engine gives scikit-learn's answers on the same folds, in both forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.engine import fit_logistic_cv, fit_ridge_cv
from probe.stats import ProbeError, ProbeWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def activations(S: int, n: int, d: int, K: int, seed: int = 0):
    """Sites that share labels, each a make_classification draw with its own difficulty,
    mixed by a random rotation with a power-law spectrum and a few huge features."""
    rng = np.random.default_rng(seed)
    X, y = make_classification(n, d, n_informative=min(20, d // 2), n_redundant=0,
                               n_classes=K, n_clusters_per_class=1, random_state=seed,
                               class_sep=1.0)
    sites = []
    for s in range(S):
        noise = rng.normal(size=X.shape) * (0.5 + 2.5 * s / max(S - 1, 1))
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        Xs = (X + noise) * np.arange(1, d + 1) ** -0.5 @ Q
        Xs[:, :2] *= 40
        sites.append(Xs + rng.normal(size=d))
    return np.stack(sites).astype(np.float32), y


def kfold(y, k=3, seed=0):
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def sklearn_oof(X, y, folds, C):
    pred = np.empty((len(X), len(y)), dtype=y.dtype)
    for s in range(len(X)):
        for train, test in folds:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
            pred[s, test] = model.fit(X[s, train], y[train]).predict(X[s, test])
    return pred


@pytest.mark.parametrize("S, n, d, K", [(8, 600, 128, 3), (8, 300, 576, 6)])  # n > d, n < d
def test_heldout_accuracy_matches_sklearn(S, n, d, K):
    X, y = activations(S, n, d, K)
    folds = kfold(y)
    fit = fit_logistic_cv(X, y, folds, C=0.05)
    assert fit.form.split("/")[0] == ("primal" if n > d else "dual")
    ours = (fit.predictions.argmax(-1) == y).mean(1)
    theirs = (sklearn_oof(X, y, folds, 0.05) == y).mean(1)
    assert np.abs(ours - theirs).max() <= 0.01
    assert ours.max() - ours.min() > 0.1  # the sites really differ


@pytest.mark.parametrize("form", ["primal", "dual"])
@pytest.mark.parametrize("K", [2, 4])
def test_coefficients_match_sklearn_on_standardised_features(form, K):
    X, y = activations(2, 120, 30, K, seed=K)
    folds = kfold(y, 3)
    fit = fit_logistic_cv(X, y, folds, C=0.5, tol=1e-7, form=form, return_coef=True)
    for s in range(2):
        for f, (train, test) in enumerate(folds):
            Xs = X[s].astype(np.float64)  # a float64 reference (float32 sklearn is looser)
            scaler = StandardScaler().fit(Xs[train])
            ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)
            ref.fit(scaler.transform(Xs[train]), y[train])
            coef = fit.coef[s, f]
            coef = coef[1:] - coef[:1] if K == 2 else coef  # sklearn's binary parametrisation
            np.testing.assert_allclose(coef, ref.coef_, atol=2e-5 * np.abs(ref.coef_).max())
            np.testing.assert_allclose(fit.predictions[s, test],
                                       ref.predict_proba(scaler.transform(Xs[test])), atol=2e-5)


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_ridge_is_exact(form):
    X, _ = activations(3, 80, 50, 2)
    y = np.random.default_rng(0).normal(size=(80, 2)) + X[0, :, :2] / 40
    folds = kfold(np.zeros(80), 4)
    fit = fit_ridge_cv(X, y, folds, alpha=3.0, form=form, return_coef=True)
    for s in range(3):
        for f, (train, test) in enumerate(folds):
            Xs = X[s].astype(np.float64)
            scaler = StandardScaler().fit(Xs[train])
            ref = Ridge(alpha=3.0).fit(scaler.transform(Xs[train]), y[train])
            np.testing.assert_allclose(fit.coef[s, f], ref.coef_, rtol=1e-7, atol=1e-10)
            np.testing.assert_allclose(fit.predictions[s, test],
                                       ref.predict(scaler.transform(Xs[test])), rtol=1e-7)


def test_site_batches_torch_and_float16_inputs_agree():
    X, y = activations(5, 150, 20, 3)
    folds = kfold(y)
    whole = fit_logistic_cv(X, y, folds).predictions
    np.testing.assert_allclose(fit_logistic_cv(X, y, folds, site_batch=2).predictions, whole,
                               atol=1e-5)
    np.testing.assert_allclose(fit_logistic_cv(torch.from_numpy(X), y, folds).predictions,
                               whole, atol=1e-5)
    half = fit_logistic_cv(X.astype(np.float16), y, folds).predictions
    assert np.abs(half - whole).max() < 0.05


def test_string_labels_and_rows_outside_test_folds():
    X, y = activations(1, 90, 10, 3)
    labels = np.array(["anger", "fear", "joy"])[y]
    folds = [(train, test[: len(test) // 2]) for train, test in kfold(y)]
    fit = fit_logistic_cv(X, labels, folds)
    assert fit.classes.tolist() == ["anger", "fear", "joy"]
    tested = np.concatenate([test for _, test in folds])
    assert np.isnan(fit.predictions[0, np.setdiff1d(np.arange(90), tested)]).all()
    np.testing.assert_allclose(fit.predictions[0, tested].sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_constant_feature_and_duplicate_rows_match_sklearn(form):
    X, y = activations(1, 60, 12, 3)
    X[..., 3] = 7.0
    X, y = np.concatenate([X, X, X[:, :10]], 1), np.concatenate([y, y, y[:10]])  # rank-poor
    folds = kfold(y)
    fit = fit_logistic_cv(X, y, folds, C=0.5, form=form, tol=1e-7)
    assert fit.converged.all()
    for train, test in folds:
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10))
        ref.fit(X[0, train].astype(np.float64), y[train])
        np.testing.assert_allclose(fit.predictions[0, test],
                                   ref.predict_proba(X[0, test].astype(np.float64)), atol=1e-4)


def test_degenerate_inputs():
    X, y = activations(2, 60, 5, 3)
    folds = kfold(y)
    with pytest.raises(ProbeError, match="2 classes"):
        fit_logistic_cv(X, np.zeros(60), folds)
    with pytest.raises(ProbeError, match="samples per site"):
        fit_logistic_cv(X[:, :50], y, folds)
    with pytest.raises(ProbeError, match="shape"):
        fit_logistic_cv(X[0], y, folds)
    train, test = folds[0]
    with pytest.raises(ProbeError, match="no training rows"):
        fit_logistic_cv(X, y, [(train[y[train] != 2], test)])
    with pytest.raises(ProbeError, match="both"):
        fit_logistic_cv(X, y, [(train, np.append(test, train[0]))])
    with pytest.raises(ProbeError, match="NaN"):
        fit_ridge_cv(X, np.where(y == 0, np.nan, 1.0), folds)
    with pytest.warns(ProbeWarning, match="did not reach"):
        fit_logistic_cv(X, y, folds, max_iter=1)


def test_nan_in_x_is_an_error_not_a_nan_result():
    X, y = activations(3, 60, 5, 2)
    X[2, 4, 1] = np.nan
    with pytest.raises(ProbeError, match=r"sites \[2\]"):
        fit_logistic_cv(X, y, kfold(y))


def test_feature_constant_in_one_folds_training_rows():
    X, y = activations(1, 90, 6, 2)
    folds = kfold(y)
    train, test = folds[0]
    X[0, train, 2] = 3.0  # constant where fold 0 trains, varying where it tests
    fit = fit_logistic_cv(X, y, folds, C=0.5, tol=1e-7)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10))
    ref.fit(X[0, train].astype(np.float64), y[train])
    np.testing.assert_allclose(fit.predictions[0, test],
                               ref.predict_proba(X[0, test].astype(np.float64)), atol=1e-4)
