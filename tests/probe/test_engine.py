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

from probe.engine import feature_scale, fit_logistic_cv, fit_probes, fit_ridge_cv
from probe.stats import ProbeError, ProbeWarning
from tests.tolerance import assert_close

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
    X, y = activations(2, 120, 100, K, seed=K)  # 80 train rows < 100 features
    folds = kfold(y, 3)
    fit = fit_logistic_cv(X, y, folds, C=0.5, tol=1e-7, form=form, return_coef=True)
    assert fit.converged.all()
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
    original = X.copy()
    folds = kfold(y)
    whole = fit_logistic_cv(X, y, folds).predictions
    np.testing.assert_array_equal(X, original)  # the solve standardises its own copy
    # different batchings of one iterative solve: equal up to rounding, not bit for bit
    assert_close(fit_logistic_cv(X, y, folds, site_batch=2).predictions, whole)
    as_torch = torch.from_numpy(X)
    assert_close(fit_logistic_cv(as_torch, y, folds).predictions, whole)
    np.testing.assert_array_equal(as_torch.numpy(), original)
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


@pytest.mark.parametrize("kind", ["gram", "kernel", "sketch"])
def test_every_primal_preconditioner_gives_sklearns_probabilities(kind, monkeypatch):
    """The preconditioner changes the path, not the answer (sketch: rank 256 of d = 400)."""
    import probe.engine.precondition as precondition

    monkeypatch.setattr(precondition, "choose", lambda *a, **k: ("primal", kind))
    X, y = activations(1, 450, 400, 3, seed=3)
    folds = kfold(y)
    fit = fit_logistic_cv(X, y, folds, C=0.05, tol=1e-7)
    assert fit.form == f"primal/{kind}" and fit.converged.all()
    for train, test in folds:
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10,
                                                                 max_iter=10_000))
        ref.fit(X[0, train].astype(np.float64), y[train])
        np.testing.assert_allclose(fit.predictions[0, test],
                                   ref.predict_proba(X[0, test].astype(np.float64)), atol=1e-4)


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_many_classes_with_fewer_rows_than_features(form):
    X, y = activations(1, 336, 400, 28, seed=5)  # 12 rows per class, n < d
    folds = kfold(y, 3)
    fit = fit_logistic_cv(X, y, folds, C=0.05, tol=1e-7, form=form)
    assert fit.form.startswith(form) and fit.converged.all()
    ours = (fit.predictions.argmax(-1) == y).mean(1)
    theirs = (sklearn_oof(X, y, folds, 0.05) == y).mean(1)
    assert np.abs(ours - theirs).max() <= 0.01
    assert ours.min() > 2 / 28  # well above chance: the comparison is not between two guesses
    train, test = folds[0]
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000))
    ref.fit(X[0, train].astype(np.float64), y[train])
    np.testing.assert_allclose(fit.predictions[0, test],
                               ref.predict_proba(X[0, test].astype(np.float64)), atol=1e-4)


def test_converged_sites_leave_the_batch_without_changing_the_others():
    X, y = activations(4, 150, 20, 3)
    X[0] = 1.0  # constant: solved at once, then dropped from the batch
    folds = kfold(y)
    together = fit_logistic_cv(X, y, folds, C=0.5)
    alone = fit_logistic_cv(X, y, folds, C=0.5, site_batch=1)
    assert together.n_iter[0].max() <= 2 < together.n_iter[1:].min()
    assert_close(together.predictions, alone.predictions)
    # iteration counts of a batched and a one-site solve may differ by rounding near the stop
    assert np.abs(together.n_iter - alone.n_iter).max() <= 2


@pytest.mark.parametrize("K", [2, 5])
def test_fit_probes_raw_coefficients_reproduce_sklearns_decision_function(K):
    X, y = activations(2, 240, 30, K, seed=K)
    fit = fit_probes(X, y, task="classification", C=0.3, tol=1e-7)
    assert fit.coef.shape == (2, K, 30) and fit.coef.dtype == np.float32
    assert fit.intercept.shape == (2, K) and fit.classes.tolist() == list(range(K))
    assert fit.converged.all() and fit.n_iter.shape == (2,)
    np.testing.assert_allclose(fit.coef.sum(1), 0, atol=1e-5 * np.abs(fit.coef).max())
    for s in range(2):
        Xs = X[s].astype(np.float64)
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, tol=1e-10,
                                                                 max_iter=10_000)).fit(Xs, y)
        np.testing.assert_allclose(fit.mean[s], ref[0].mean_, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fit.scale[s], ref[0].scale_, rtol=1e-5)
        logits = Xs @ fit.coef[s].T.astype(np.float64) + fit.intercept[s]
        expected = ref.decision_function(Xs).reshape(len(Xs), -1)
        if K == 2:  # sklearn's binary logit is the difference of the two softmax rows
            logits = logits[:, 1:] - logits[:, :1]
        np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())


def test_fit_probes_regression_matches_ridge():
    X, _ = activations(2, 80, 50, 2)
    y = np.random.default_rng(0).normal(size=(80, 3)) + X[0, :, :3] / 40
    fit = fit_probes(X, y, task="regression", alpha=3.0)
    assert fit.classes is None and fit.coef.shape == (2, 3, 50) and fit.n_iter.tolist() == [0, 0]
    for s in range(2):
        ref = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(X[s].astype(np.float64), y)
        pred = X[s].astype(np.float64) @ fit.coef[s].T + fit.intercept[s]
        np.testing.assert_allclose(pred, ref.predict(X[s].astype(np.float64)),
                                   atol=1e-5 * np.abs(y).max())


def test_warnings_name_the_sites_and_how_to_raise_the_cap():
    X, y = activations(3, 90, 12, 3)
    labels = [f"blocks.{i}.hook_resid_post (last)" for i in range(3)]
    with pytest.warns(ProbeWarning) as record:
        fit = fit_logistic_cv(X, y, kfold(y), max_iter=2, site_labels=labels)
    message = str(record[0].message)
    assert not fit.converged.any()
    assert "blocks.0.hook_resid_post (last) fold 0" in message and "max_iter=2" in message
    assert "--max-iter" in message and "EvalConfig(max_iter=...)" in message
    assert "site 0" not in message
    with pytest.warns(ProbeWarning, match=r"3 of 3 sites .*blocks\.2\.hook_resid_post \(last\)"):
        fit_probes(X, y, task="classification", max_iter=1, site_labels=labels)
    with pytest.raises(ProbeError, match="2 site_labels for 3 sites"):
        fit_logistic_cv(X, y, kfold(y), site_labels=labels[:2])
    with pytest.raises(ProbeError, match="task must be"):
        fit_probes(X, y, task="classify")


def test_feature_scale_is_standard_scalers_rule():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=50), np.full(50, 300.123), np.zeros(50),
                         1e-7 * rng.normal(size=50), 5 + 1e-12 * rng.normal(size=50)])
    mean, var = torch.tensor(X.mean(0)), torch.tensor(X.var(0))
    ours, theirs = feature_scale(mean, var, 50).numpy(), StandardScaler().fit(X).scale_
    np.testing.assert_array_equal(ours[[1, 2]], [1.0, 1.0])  # constant: scale 1
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)  # column 4 (5 +- 1e-12) is not constant


def test_cpu_solves_run_on_one_thread_and_restore_the_setting(monkeypatch):
    """Many small operations per iteration: on a shared CPU two threads wait on each other."""
    import probe.engine.precondition as precondition
    from probe.engine.prepare import lapack_threads

    seen, choose = [], precondition.choose
    monkeypatch.setattr(precondition, "choose",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or choose(*a, **k))
    X, y = activations(1, 60, 5, 2)
    torch.set_num_threads(2)
    fit_logistic_cv(X, y, kfold(y))
    fit_probes(X, y, task="classification")
    assert len(seen) >= 2 and set(seen) == {1} and torch.get_num_threads() == 2
    with lapack_threads("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("shape, expected", [
    ((100, 4096, 80, 7), "dual"),  # few rows, many features
    ((50_000, 576, 40_000, 7), "primal/gram"),  # many rows, few features
    ((10_000, 8192, 8_000, 7), "primal/sketch"),  # both large
    ((300, 8192, 240, 2), "primal/kernel"),  # few rows, two classes
])
def test_form_is_chosen_by_shape(shape, expected):
    from probe.engine.precondition import choose

    n, d, n_train, K = shape
    name, kind = choose(n, d, n_train, 5, K)
    assert (name if kind is None else f"{name}/{kind}") == expected


def test_dual_directions_with_repeated_rows_match_sklearn(monkeypatch):
    """Repeated stimuli make the fold kernels singular; the weights must still be sklearn's."""
    import probe.engine.designs as designs

    calls, jittered = [], designs._jittered_cholesky
    monkeypatch.setattr(designs, "_jittered_cholesky", lambda K: calls.append(1) or jittered(K))
    X, y = activations(1, 60, 200, 3, seed=7)
    X, y = np.concatenate([X, X[:, :20]], 1), np.concatenate([y, y[:20]])
    fit = fit_probes(X, y, task="classification", C=0.5, tol=1e-7)
    assert calls and fit.converged.all()  # the singular path was taken
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000))
    ref.fit(X[0].astype(np.float64), y)
    logits = X[0].astype(np.float64) @ fit.coef[0].T.astype(np.float64) + fit.intercept[0]
    expected = ref.decision_function(X[0].astype(np.float64))
    np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
