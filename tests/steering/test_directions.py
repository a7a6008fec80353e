"""Directions: each method recovers planted emotion directions; stores, probes, errors; real data."""

from __future__ import annotations

import numpy as np
import pytest

from steering.directions import (
    METHODS,
    STORE_METHODS,
    Rows,
    compute,
    directions,
    heldout_auroc,
    site_kind,
    to_vectors,
)
from steering.vector import SteeringError

EMOTIONS = ["anger", "joy", "fear"]


def planted(n_ctx: int = 24, d: int = 16, layers: int = 2, noise: float = 0.3, seed: int = 0,
            intensity=(0.5, 3.5)):
    """Rows = context offset + intensity x emotion direction + noise; one row per (context, label)."""
    rng = np.random.default_rng(seed)
    dirs = {e: rng.normal(size=d) for e in EMOTIONS}
    dirs = {e: v / np.linalg.norm(v) for e, v in dirs.items()}
    X, y, ctx = [], [], []
    for c in range(n_ctx):
        offset = 3 * rng.normal(size=d)  # the scenario dominates the raw activations
        for e in EMOTIONS + ["neutral"]:
            base = offset + (rng.uniform(*intensity) * dirs[e] if e != "neutral" else 0)
            X.append(np.stack([base + noise * rng.normal(size=d) for _ in range(layers)]))
            y.append(e)
            ctx.append(f"s{c}")
    rows = Rows(np.asarray(X, np.float32), np.array(y), np.array(ctx), list(range(layers)),
                "hook_resid_post", "last", "emotion", {"model": "toy", "d_model": d})
    return rows, dirs


@pytest.mark.parametrize("method", STORE_METHODS)
def test_every_method_recovers_the_planted_direction_with_the_right_sign(method):
    rows, dirs = planted()
    raw = compute(rows, method)
    assert sorted(raw) == sorted(EMOTIONS)  # neutral is the reference, not an emotion
    for e in EMOTIONS:
        for layer in range(2):
            v = raw[e][layer] / np.linalg.norm(raw[e][layer])
            cos = float(v @ dirs[e])
            # mean differences against "the rest" mix in the other emotions' directions
            assert cos > (0.5 if method in ("mean-diff", "lda") else 0.8), (method, e, cos)


def test_pca_diff_needs_varying_intensities_as_in_repeng():
    """repeng's pca_diff fits a *centred* PCA to the differences: it finds the direction along
    which the size of the shift varies, so equal shifts leave it nothing to find (pca-center,
    whose points are +-diff/2, still finds them)."""
    rows, dirs = planted(intensity=(2.0, 2.0))
    diff, centre = compute(rows, "pca-diff"), compute(rows, "pca-center")
    cos = {m: np.mean([abs(r[e][0] @ dirs[e]) / np.linalg.norm(r[e][0]) for e in EMOTIONS])
           for m, r in (("diff", diff), ("center", centre))}
    assert cos["center"] > 0.9 and cos["diff"] < 0.6, cos


def test_context_agnostic_matches_wang_et_al_formula():
    rows, _ = planted(n_ctx=5, d=6, layers=1, seed=2)
    raw = compute(rows, "context-agnostic")
    X, y, ctx = rows.X[:, 0].astype(np.float64), rows.labels, rows.contexts
    # their recipe, written out: per group subtract the mean over the 6 (here 3) emotions,
    # average over groups, remove the global mean over emotions
    groups = [{e: X[(ctx == c) & (y == e)][0] for e in EMOTIONS} for c in dict.fromkeys(ctx)]
    centred = [{e: g[e] - np.mean([g[k] for k in EMOTIONS], 0) for e in EMOTIONS} for g in groups]
    cent = {e: np.mean([g[e] for g in centred], 0) for e in EMOTIONS}
    glob = np.mean([cent[e] for e in EMOTIONS], 0)
    for e in EMOTIONS:
        assert np.allclose(raw[e][0], cent[e] - glob, atol=1e-10)


def test_to_vectors_normalises_and_records_rms_and_norms():
    rows, _ = planted()
    vecs = to_vectors(compute(rows, "mean-diff-neutral"), rows, "mean-diff-neutral")
    joy = vecs["joy"]
    assert joy.sites[0].kind == "hook_resid_post" and joy.layers == [0, 1]
    assert all(abs(n - 1) < 1e-5 for n in joy.norms().values())
    rms = float(np.sqrt((rows.X[:, 0].astype(np.float64) ** 2).mean()))
    assert joy.rms(joy.sites[0]) == pytest.approx(rms)
    assert joy.meta["norms"][str(joy.sites[0])] > 1.0 and joy.meta["method"] == "mean-diff-neutral"
    raw = to_vectors(compute(rows, "mean-diff-neutral"), rows, "x", normalize=False)["joy"]
    assert raw.norms()[raw.sites[0]] == pytest.approx(joy.meta["norms"][str(joy.sites[0])], rel=1e-5)


def test_method_errors():
    rows, _ = planted()
    with pytest.raises(SteeringError, match="unknown emotion"):
        compute(rows, "mean-diff", emotions=["joy", "love"])
    no_neutral = rows.select(rows.labels != "neutral")
    with pytest.raises(SteeringError, match="neutral"):
        compute(no_neutral, "mean-diff-neutral")
    lonely = rows.select((rows.labels != "fear") | (rows.contexts == "s0"))
    compute(lonely, "context-agnostic")  # one complete context is enough
    first = np.isin(rows.contexts, [f"s{i}" for i in range(12)])
    split = rows.select(~((first & (rows.labels == "joy")) | (~first & (rows.labels == "fear"))))
    with pytest.raises(SteeringError, match=r"no context \(scenario\) holds"):
        compute(split, "context-agnostic")
    with pytest.raises(SteeringError, match="unknown method"):
        directions("x", method="magic")
    assert site_kind("resid_mid") == "hook_resid_mid" and site_kind("blocks.*.hook_mlp_out") == "hook_mlp_out"
    with pytest.raises(SteeringError, match="unknown site"):
        site_kind("residual")
    assert set(STORE_METHODS) < set(METHODS)
    # named, not a slice of METHODS: the two that read no store stay out of it
    assert STORE_METHODS == ("mean-diff", "mean-diff-neutral", "context-agnostic", "pca-diff",
                             "pca-center", "lda")


# ------------------------------------------------------------------------------ stores
@pytest.fixture(scope="module")
def tiny_store(tiny_dir, tmp_path_factory):
    """A store of the toy dataset cached through the tiny Llama (3 layers, d_model 64)."""
    from probe.cache import CacheConfig, cache_activations
    from probe.data.schema import EmotionDataset
    from probe.models import load_model
    from tests.tiny import CORPUS

    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    labels = ["anger", "joy", "neutral"]
    rows = [{"id": f"r{i}", "text": t, "label": labels[i % 3], "group": f"g{i // 3}"}
            for i, t in enumerate(CORPUS[:18])]
    ds = EmotionDataset.from_records("toy3", rows)
    path = cache_activations(lm, ds, config=CacheConfig(sites="blocks.*.hook_resid_post"),
                             out=tmp_path_factory.mktemp("st") / "toy.zarr", progress=False)
    return lm, path


def test_directions_from_a_store_fit_its_model(tiny_store):
    lm, path = tiny_store
    vecs = directions(path, method="context-agnostic", layers=[1, 2])
    assert sorted(vecs) == ["anger", "joy"]
    joy = vecs["joy"]
    joy.check(lm, match="exact")  # provenance came from the store
    assert joy.meta["store"] == str(path) and joy.meta["dataset"] == "toy3"
    assert joy.layers == [1, 2] and joy.meta["pooling"] == "last"
    with joy.apply(lm, strength=2.0):
        assert len(lm.generate(["We won the final!"], max_new_tokens=3)) == 1
    some = directions(path, method="mean-diff", rows=np.arange(9))
    assert some["joy"].meta["n_rows"] == 9
    with pytest.raises(SteeringError, match="not cached"):
        directions(path, method="mean-diff", layers=[5])
    with pytest.raises(SteeringError, match="pooling"):
        directions(path, method="mean-diff", pooling="token")
    with pytest.raises(SteeringError, match="no hook_mlp_out"):
        directions(path, method="mean-diff", site="mlp_out")
    with pytest.raises(SteeringError, match="no activation store"):
        directions(path.parent / "nope.zarr", method="mean-diff")
    aur = heldout_auroc(path, method="mean-diff", folds=3)
    assert set(aur.columns) >= {"emotion", "layer", "auroc"} and len(aur) == 2 * 3


def test_probe_directions_from_saved_probes(tmp_path):
    from probe.saved import save_probes
    from steering.directions import probe_directions

    rng = np.random.default_rng(0)
    coef = rng.normal(size=(2, 3, 8))  # 2 layers, 3 classes
    mean, scale = rng.normal(size=(2, 8)), rng.uniform(0.5, 2, size=(2, 8))
    save_probes(tmp_path, "hook_resid_post", [4, 5],
                {"last": {"coef": coef, "intercept": np.zeros((2, 3)), "mean": mean, "scale": scale}},
                {"task": "classification", "classes": ["anger", "joy", "neutral"],
                 "model": "toy", "weight_fingerprint": "abc", "target": "emotion"})
    vecs = probe_directions(tmp_path)
    assert sorted(vecs) == ["anger", "joy"]
    v = vecs["joy"]
    assert np.allclose(v.directions[v.sites[1]].numpy(), coef[1, 1] / np.linalg.norm(coef[1, 1]), atol=1e-6)
    assert v.rms(v.sites[0]) == pytest.approx(float(np.sqrt(np.mean(mean[0] ** 2 + scale[0] ** 2))))
    assert v.meta["weight_fingerprint"] == "abc"
    with pytest.raises(SteeringError, match="no saved probe"):
        probe_directions(tmp_path, layers=[9])
    with pytest.raises(SteeringError, match="no saved probes for hook_mlp_out"):
        probe_directions(tmp_path, site="mlp_out")


def test_prompted_directions_generate_once_and_read_where_asked(tiny_llama, tmp_path, monkeypatch):
    from steering import prompted

    lm = tiny_llama
    prompts = ["The meeting is at noon in room four.", "The letter arrived this morning.",
               "We won the final!"]
    kw = dict(method="prompted", prompts=prompts, emotions=["anger", "joy"], max_new_tokens=4,
              cache_dir=tmp_path, layers=[1, 2])
    vecs = directions(lm, read="prompt", **kw)
    assert sorted(vecs) == ["anger", "joy"] and vecs["joy"].meta["method"] == "prompted"
    assert vecs["joy"].meta["n_generated"] == 6 and vecs["joy"].meta["read"] == "prompt"
    cached = list((tmp_path / lm.spec.alias).glob("prompted-*.json"))
    assert len(cached) == 1

    def boom(*a, **k):
        raise AssertionError("generated again instead of reusing the cached replies")

    monkeypatch.setattr("probe.forward.generate_batch", boom)
    again = directions(lm, read="prompt", **kw)
    assert torch_equal(again["joy"], vecs["joy"])
    at_reply = directions(lm, read="generation", **kw)
    assert not torch_equal(at_reply["joy"], vecs["joy"])
    # anger and joy are antipodal: with two emotions, context-agnostic gives +-the same vector
    s = at_reply["joy"].sites[0]
    assert float(at_reply["joy"][s] @ at_reply["anger"][s]) == pytest.approx(-1.0, abs=1e-5)
    judged = directions(lm, read="prompt", accept=lambda text, e: e == "joy" or "0" not in text, **kw)
    assert judged["joy"].meta["n_accepted"] <= 6
    with pytest.raises(SteeringError, match="rejected all|no context"):
        directions(lm, read="prompt", accept=lambda text, e: False, **kw)
    with pytest.raises(SteeringError, match="loaded model"):
        prompted.prompted_directions("not a model")


def torch_equal(a, b) -> bool:
    import torch

    return all(torch.equal(a[s], b[s]) for s in a.sites)
