"""Persistence: fold probes read along a continuation of every held-out stimulus."""

from __future__ import annotations

import numpy as np
import pytest

from probe.behaviour.persistence import (
    CONTROL_STIMULUS,
    Persistence,
    PersistenceConfig,
    binned,
    fit_fold_probes,
    items_table,
    passage_path,
    persistence_table,
    read_along,
    read_persistence,
)
from probe.evaluate import EvalConfig, cross_val_predict, make_folds
from probe.stats import ProbeError
from probe.store import open_store
from tests.tolerance import assert_close

EVAL = EvalConfig(n_folds=5, n_bootstrap=200, control=False, lexical=False)


@pytest.fixture(scope="module")
def tiny_store(tiny_llama, tmp_path_factory):
    """Tiny Llama on 5 scenarios x 7 emotions of the shipped set, `last` pooling, float32."""
    from probe.cache import CacheConfig, cache_activations
    from probe.data import load_dataset

    data = load_dataset("emotion-scenarios").limit(35)
    cfg = CacheConfig(sites="blocks.*.hook_resid_post", poolings=("last", "content-mean"),
                      store_dtype="float32", batch_size=8)
    out = tmp_path_factory.mktemp("persistence") / "s.zarr"
    return cache_activations(tiny_llama, data, config=cfg, out=out, progress=False)


def test_fold_probes_are_the_sweeps_out_of_fold_probes(tiny_store, one_thread):
    ds = open_store(tiny_store)
    probes = fit_fold_probes(ds, config=PersistenceConfig(eval=EVAL))
    folds = make_folds(probes.y, probes.groups, "classification", EVAL)
    X = np.asarray(ds["hook_resid_post"].sel(pooling="last", layer=probes.layers).values,
                   dtype=np.float32)[probes.rows].transpose(1, 0, 2)
    oof = cross_val_predict(X, probes.y, folds, task="classification", config=EVAL)
    import torch

    mine = np.stack([probes.log_proba(int(f), torch.as_tensor(X[:, [i]]))[:, 0].exp().numpy()
                     for i, f in enumerate(probes.fold)], 1)
    assert (probes.fold >= 0).all()
    assert_close(mine, oof, rel=2e-4)  # probabilities: fold probes vs the sweep's solve
    assert np.allclose(probes.prior.sum(1), 1)


def test_distance_zero_is_the_store_row(tiny_llama, tiny_store, one_thread):
    ds = open_store(tiny_store)
    cfg = PersistenceConfig(max_distance=12, batch_size=5, eval=EVAL)
    p = read_persistence(tiny_llama, ds, config=cfg)
    probes = fit_fold_probes(ds, config=cfg)
    import torch

    ids = list(ds["sample"].values.astype(str)[probes.rows])
    for i, sid in enumerate(p.ids):
        r = ids.index(sid)
        x = np.asarray(ds["hook_resid_post"].sel(pooling="last", layer=probes.layers).values,
                       dtype=np.float32)[probes.rows[r]][:, None]  # [L, 1, d]
        lp = probes.log_proba(int(probes.fold[r]), torch.as_tensor(x))[:, 0].exp().numpy()
        k = probes.classes.index(p.labels[i])
        assert_close(p.p_true[0, i, :, 0], lp[:, k])
    # items: the 30 emotional rows; each control is its own scenario's neutral event
    assert len(p.ids) == 30 and "neutral" not in set(p.labels)
    assert all(c == f"{g}-neutral" for c, g in zip(p.control_ids, p.groups))
    assert (p.n_tokens == 12).all() and not np.isnan(p.p_true).any()
    # stimulus and control are different prompts: their distance-0 readings differ
    assert not np.allclose(p.p_true[0, :, :, 0], p.p_true[1, :, :, 0])


def test_batching_does_not_change_the_readings(tiny_llama, tiny_store, one_thread):
    probes = fit_fold_probes(tiny_store, config=PersistenceConfig(eval=EVAL))
    tok = tiny_llama.tokenizer
    seqs = [tok(t)["input_ids"] for t in ("I lost my keys today and", "The sun came out",
                                          "We met at the station at noon and then walked on")]
    starts, folds = [2, 1, 3], [0, 1, 2]
    one, k1 = read_along(tiny_llama, probes, seqs, starts, folds, max_distance=8,
                         batch_size=1, keep=(0, 3))
    all3, k3 = read_along(tiny_llama, probes, seqs, starts, folds, max_distance=8,
                          batch_size=3, keep=(0, 3))
    # log-probabilities reach -400 here: the tolerance scales with their magnitude (an atol of
    # 1e-5 failed on this machine kind at a difference of 1.2e-4, relative 2e-6)
    assert np.array_equal(np.isnan(one), np.isnan(all3))
    assert_close(np.nan_to_num(one), np.nan_to_num(all3))
    assert_close(k1, k3)
    # the kept residuals are what the probes read: re-applying them gives the same numbers
    import torch

    again = probes.log_proba(0, torch.as_tensor(k1[0][:, [0, 1]])).numpy()
    assert_close(again, one[0][:, [0, 3]])
    # NaN exactly past each sequence's end
    for i, s in enumerate(seqs):
        n = len(s) - starts[i]
        assert not np.isnan(one[i, :, :n]).any() and np.isnan(one[i, :, n:]).all()


def test_generate_mode_reads_each_items_own_reply(tiny_llama, tiny_store, one_thread):
    cfg = PersistenceConfig(mode="generate", max_distance=6, batch_size=8, eval=EVAL)
    p = read_persistence(tiny_llama, tiny_store, config=cfg)
    assert (p.n_tokens <= 6).all() and len(p.continuations) == len(p.ids)
    for i, n in enumerate(p.n_tokens):  # readings stop where a reply stopped
        assert np.isnan(p.p_true[:, i, :, n + 1:]).all()
        assert not np.isnan(p.p_true[:, i, :, :n + 1]).any()


def test_a_quick_look_reads_fewer_layers_and_items(tiny_llama, tiny_store, one_thread):
    cfg = PersistenceConfig(max_distance=3, layers=(1,), max_items=13, eval=EVAL)
    p = read_persistence(tiny_llama, tiny_store, config=cfg)
    assert p.layers == [1] and p.p_true.shape[2] == 1
    assert len(p.ids) == 12 and len(set(p.groups)) == 2  # whole scenarios of 6 emotions
    with pytest.raises(ProbeError, match="not cached"):
        fit_fold_probes(tiny_store, config=PersistenceConfig(layers=(7,), eval=EVAL))


def test_bad_requests_are_refused(tiny_llama, tiny_store):
    with pytest.raises(ProbeError, match="max_distance"):
        read_persistence(tiny_llama, tiny_store, config=PersistenceConfig(max_distance=0))
    with pytest.raises(ProbeError, match="pooling 'mean'"):
        fit_fold_probes(tiny_store, config=PersistenceConfig(pooling="mean", eval=EVAL))
    with pytest.raises(ProbeError, match="unknown persistence mode"):
        read_persistence(tiny_llama, tiny_store,
                         config=PersistenceConfig(mode="dream", max_distance=2, eval=EVAL))
    assert passage_path().read_text().count(" ") > 300 and CONTROL_STIMULUS


def test_position_specific_probes_find_what_is_there():
    from probe.behaviour.persistence import decode_correct

    rng = np.random.default_rng(0)
    n, L, J, d = 60, 2, 2, 6
    y = np.array(["anger", "fear", "joy"] * 20)
    groups = np.array([f"g{i // 3}" for i in range(n)])
    kept = rng.normal(size=(2, n, L, J, d)).astype(np.float32)
    kept[0, :, 1, 0, :3] += 4 * (y[:, None] == np.array(["anger", "fear", "joy"]))  # signal
    kept[:, -3:, :, 1] = np.nan  # the last scenario's sequences ended before distance J=1
    hit = decode_correct(kept, y, groups, EVAL)
    assert np.nanmean(hit[0, :, 1, 0]) > 0.9  # stimulus, layer 1, distance 0: decodable
    assert np.nanmean(hit[0, :, 0, 0]) < 0.6 and np.nanmean(hit[1, :, 1, 0]) < 0.6
    assert np.isnan(hit[:, -3:, :, 1]).all() and not np.isnan(hit[:, :-3]).any()


def _synthetic(n=40, L=2, D=40, seed=0) -> Persistence:
    """Layer 1: P(true) 0.9 at the stimulus, decaying to the control's 0.2 by ~16 tokens;
    layer 0: both at 0.2. Item 0's continuation ends at distance 20."""
    rng = np.random.default_rng(seed)
    d = np.arange(D + 1)
    p = np.full((2, n, L, D + 1), 0.2) + rng.normal(0, 0.02, (2, n, L, D + 1))
    p[0, :, 1] += 0.7 * np.exp(-d / 4)
    p[:, 0, :, 21:] = np.nan
    correct = (p > 0.5).astype(float)
    correct[np.isnan(p)] = np.nan
    return Persistence(p_true=p, correct=correct, ids=np.array([f"i{i}" for i in range(n)]),
                       labels=np.array(["anger", "fear"] * (n // 2)),
                       groups=np.array([f"g{i // 2}" for i in range(n)]),
                       control_ids=np.array(["c"] * n), n_tokens=np.full(n, D),
                       prior=np.full(n, 0.25), layers=[0, 1], classes=["anger", "fear"],
                       continuations=["x"] * n)


def test_table_measures_the_decay_against_the_control():
    p = _synthetic()
    t = persistence_table(p, n_boot=300)

    def row(**kw):
        m = np.ones(len(t), bool)
        for k, v in kw.items():
            m &= (t[k] == v).fillna(False).to_numpy(bool)
        assert m.sum() == 1, kw
        return t[m].iloc[0]

    near = row(condition="difference", metric="p_true", layer=1, distance="0")
    assert near["ci_low"] > 0.6
    far = row(condition="difference", metric="p_true", layer=1, distance="32-40")
    assert far["ci_low"] < 0 < far["ci_high"] or abs(far["value"]) < 0.02
    flat = row(condition="difference", metric="p_true", layer=0, distance="0")
    assert flat["ci_low"] < 0 < flat["ci_high"]
    assert row(condition="stimulus", metric="accuracy", layer=1, distance="0")["value"] == 1
    assert row(condition="prior", metric="p_true")["value"] == pytest.approx(0.25)
    # item 0 stops at distance 20: the last bin counts one item fewer
    assert row(condition="stimulus", metric="p_true", layer=1, distance="32-40")["n"] == 39
    assert len(items_table(p)) == 40 * 2 * 7


def test_bins_cover_every_distance_once():
    x = np.arange(301, dtype=float)[None]
    means, labels = binned(x, 300)
    assert labels == ["0", "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128-255",
                      "256-300"]
    assert means[0, -1] == pytest.approx(np.mean(np.arange(256, 301)))
