"""Recipe and statistics of steering.geometry on synthetic data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from steering.geometry import stats
from steering.geometry.analysis import Labelled, analyze
from steering.geometry.features import GeometryError
from steering.geometry.ratings import Ratings
from steering.geometry.recipe import Recipe, emotion_vectors, label_weights, neutral_basis


def test_grand_mean_subtraction_matches_a_plain_computation():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 2, 5, generator=g) * 3 + 1
    labels = torch.tensor([0] * 5 + [1] * 10 + [2] * 15)  # unequal counts: emotions weigh the same
    v = emotion_vectors(feats, label_weights(labels, 3))
    x = feats.numpy().astype(np.float64)
    means = np.stack([x[labels.numpy() == c].mean(0) for c in range(3)])
    want = means - means.mean(0)
    np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert torch.allclose(v.sum(0), torch.zeros(2, 5), atol=1e-5 * float(v.abs().max()))
    blocks = emotion_vectors(feats, label_weights(labels, 3), labels=labels)
    np.testing.assert_allclose(blocks.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    raw = emotion_vectors(feats, label_weights(labels, 3), subtract_grand_mean=False)
    np.testing.assert_allclose(raw.numpy(), means, rtol=1e-5, atol=1e-5 * np.abs(means).max())


def test_neutral_projection_removes_the_pcs_that_explain_the_share():
    g = torch.Generator().manual_seed(1)
    d = 12
    scales = torch.tensor([10.0, 6.0, 3.0] + [0.5] * (d - 3))  # variance shares ~ 0.68, 0.25, ...
    neutral = torch.randn(400, 1, d, generator=g) * scales
    var = scales**2 / (scales**2).sum()
    for share, want_k in ((0.5, 1), (0.8, 2), (0.95, 3)):
        bases, ks, shares = neutral_basis(neutral, share)
        assert ks == [want_k], (share, ks, var[:4])
        assert shares[0] >= share and (want_k == 1 or float(var[: want_k - 1].sum()) < share + 0.05)
        u = bases[0]
        assert torch.allclose(u.T @ u, torch.eye(want_k), atol=1e-5)
        vecs = torch.randn(5, 1, d, generator=g)
        out = emotion_vectors(vecs.reshape(5, 1, d), torch.eye(5), bases, subtract_grand_mean=False)
        assert float((out[:, 0] @ u).abs().max()) < 1e-4 * float(vecs.abs().max())
    bases, ks, _ = neutral_basis(neutral, 0.0)
    assert ks == [0] and bases[0].numel() == 0


def test_recipe_options_are_checked():
    with pytest.raises(GeometryError, match="variance share"):
        Recipe(neutral_share=1.5)
    with pytest.raises(GeometryError, match="has no texts"):
        label_weights(torch.tensor([0, 0, 2]), 3)


def test_correlations_match_scipy():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(3, 9, 2, generator=g)
    ratings = torch.randn(9, 3, generator=g, dtype=torch.float64)
    ratings[1, 0] = ratings[2, 0]  # a tie, as lexicon ratings have
    for method, ref in (("pearson", pearsonr), ("spearman", spearmanr)):
        r = stats.correlate(scores, ratings, method=method)
        for layer, pc, scale in ((0, 0, 0), (2, 1, 2), (1, 1, 0)):
            want = ref(scores[layer, :, pc].numpy(), ratings[:, scale].numpy())[0]
            assert abs(float(r[layer, pc, scale]) - want) < 1e-5


def test_permutation_p_values_know_signal_from_noise():
    g = torch.Generator().manual_seed(3)
    ratings = torch.randn(12, 1, generator=g, dtype=torch.float64)
    signal = ratings.float()[None, :, :] * torch.tensor([1.0])  # PC scores = ratings: r = 1
    null = stats.permutation_null(signal, ratings, n_perm=999, seed=0)
    r = stats.correlate(signal, ratings)
    assert float(stats.permutation_p(r, null)[0, 0, 0]) <= 2 / 1000
    # unrelated scores: p-values are uniform, so ~5% fall below 0.05
    small = 0
    for seed in range(200):
        s = torch.randn(1, 12, 1, generator=g)
        p = stats.permutation_p(
            stats.correlate(s, ratings), stats.permutation_null(s, ratings, n_perm=199, seed=seed)
        )
        small += float(p[0, 0, 0]) < 0.05
    assert 2 <= small <= 22, small  # binomial(200, 0.05): mean 10, far inside [2, 22]


def test_rdm_agreement_is_spearman_of_the_upper_triangles():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(7, 2, 10, generator=g)
    b = a + 0.3 * torch.randn(7, 2, 10, generator=g)
    ra, rb = stats.rdm(a), stats.rdm(b)
    assert torch.allclose(stats.rdm_agreement(ra, ra), torch.ones(2), atol=1e-6)
    got = stats.rdm_agreement(ra, rb)
    i, j = np.triu_indices(7, 1)
    for layer in range(2):
        want = spearmanr(ra[layer].numpy()[i, j], rb[layer].numpy()[i, j])[0]
        assert abs(float(got[layer]) - want) < 1e-5
    assert torch.allclose(stats.rdm_agreement(ra, -ra), -torch.ones(2), atol=1e-6)


def test_bootstrap_weights_resample_within_each_emotion():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    w = stats.bootstrap_weights(labels, 3, 50, seed=0)
    assert torch.allclose(w.sum(-1), torch.ones(50, 3))
    own = torch.nn.functional.one_hot(labels, 3).T.bool()
    assert float(w[:, ~own].abs().max()) == 0.0
    assert not torch.allclose(w[0], w[1])


def test_aligned_scores_follow_the_reference_pcs_when_they_swap():
    g = torch.Generator().manual_seed(5)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=g))[0].T  # 3 orthonormal directions
    coords = torch.randn(10, 3, generator=g)
    coords = torch.linalg.qr(coords - coords.mean(0))[0]  # centred, orthogonal columns
    a = (coords * torch.tensor([5.0, 3.0, 1.0])) @ basis  # PC order: basis 0, 1, 2
    b = (coords * torch.tensor([3.0, 5.0, 1.0])) @ basis  # PC1 and PC2 swapped
    _, _, ref = stats.pca(a[:, None, :], 2)
    got = stats.aligned_scores(b[None, :, None, :], ref)[0, 0]  # emotion pc
    want0, want1 = 3.0 * coords[:, 0], 5.0 * coords[:, 1]
    assert abs(abs(float(torch.corrcoef(torch.stack([got[:, 0], want0]))[0, 1])) - 1) < 1e-4
    assert abs(abs(float(torch.corrcoef(torch.stack([got[:, 1], want1]))[0, 1])) - 1) < 1e-4


def _synthetic(n_per: int, seed: int, signal: float = 1.0):
    """Texts whose emotion means lie along valence (PC1) and arousal (PC2) plus noise."""
    g = torch.Generator().manual_seed(seed)
    e, d = 10, 24
    val = torch.linspace(0, 1, e)
    aro = torch.tensor([0.2, 0.9, 0.4, 0.7, 0.1, 0.8, 0.3, 0.6, 0.5, 0.0])
    axes = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(99)))[0].T
    means = signal * (3 * (val - 0.5)[:, None] * axes[0] + 1.5 * (aro - 0.5)[:, None] * axes[1])
    labels = torch.arange(e).repeat_interleave(n_per)
    feats = means[labels] + torch.randn(len(labels), d, generator=g)
    ratings = Ratings(
        [f"e{i}" for i in range(e)],
        ["valence", "arousal"],
        torch.stack([val, aro], 1).double(),
        {f"e{i}": f"e{i}" for i in range(e)},
        "synthetic",
    )
    return Labelled("syn", ratings.emotions, labels, feats[:, None, :], [0]), ratings, means


def test_analyze_finds_valence_on_pc1_and_its_ci_covers_the_truth():
    # ratings off the PC1 axis, so the true |r| (from the population means) is ~0.73, not 1
    off = torch.tensor([0.3, -0.35, 0.25, -0.3, 0.35, -0.25, 0.3, -0.3, 0.2, -0.2]).double()
    covered, n_rep, ps = 0, 30, []
    for rep in range(n_rep):
        data, ratings, means = _synthetic(40, rep)
        ratings.values[:, 0] += off
        rows, _ = analyze(data, ratings, None, n_boot=200, n_perm=200, seed=rep)
        row = next(
            r for r in rows if r["metric"] == "abs_r" and r["pc"] == 1 and r["scale"] == "valence"
        )
        m = means - means.mean(0)
        truth = abs(
            float(
                np.corrcoef(
                    m @ torch.linalg.svd(m, full_matrices=False)[2][0], ratings.values[:, 0].numpy()
                )[0, 1]
            )
        )
        assert 0.6 < truth < 0.85
        ps.append(row["p_value"])
        covered += row["ci_low"] <= truth <= row["ci_high"]
    assert covered >= 0.85 * n_rep, covered  # nominal 95% (measured 0.97 at 40 repetitions)
    assert np.median(ps) < 0.05  # r ~ 0.73 over 10 emotions: p ~ 0.01-0.05


def test_analyze_without_signal_is_not_significant():
    data, ratings, _ = _synthetic(20, 0, signal=0.0)
    rows, _ = analyze(data, ratings, None, n_boot=0, n_perm=500)
    ps = [r["p_value"] for r in rows if r["metric"] == "abs_r"]
    assert min(ps) > 0.01 and all(r["ci_low"] is None for r in rows if r["metric"] == "abs_r")


def test_ci_narrows_with_more_texts():
    width = {}
    for n in (8, 64):
        data, ratings, _ = _synthetic(n, 0, signal=0.6)
        rows, _ = analyze(data, ratings, None, n_boot=200, n_perm=50)
        row = next(
            r for r in rows if r["metric"] == "abs_r" and r["pc"] == 2 and r["scale"] == "arousal"
        )
        width[n] = row["ci_high"] - row["ci_low"]
    assert width[64] < width[8]


def test_best_layer_p_accounts_for_picking_the_layer():
    g = torch.Generator().manual_seed(7)
    e, n_layers = 10, 12
    ratings = Ratings(
        [f"e{i}" for i in range(e)],
        ["valence"],
        torch.randn(e, 1, generator=g).double(),
        {f"e{i}": f"e{i}" for i in range(e)},
        "synthetic",
    )
    labels = torch.arange(e).repeat_interleave(5)
    feats = torch.randn(len(labels), n_layers, 8, generator=g)  # no signal at any layer
    rows, _ = analyze(
        Labelled("noise", ratings.emotions, labels, feats, list(range(n_layers))),
        ratings,
        None,
        n_boot=0,
        n_perm=500,
    )
    best = next(
        r
        for r in rows
        if r["experiment"] == "best_layer" and r["pc"] == 1 and r["metric"] == "abs_r"
    )
    at = next(
        r
        for r in rows
        if r["experiment"] == "pc_vs_rating"
        and r["pc"] == 1
        and r["metric"] == "abs_r"
        and r["layer"] == best["layer"]
    )
    assert best["value"] == at["value"] and best["p_value"] >= at["p_value"]
    assert best["null_95"] >= at["null_95"]
