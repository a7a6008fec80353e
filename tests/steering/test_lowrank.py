"""Low-rank (LoReFT) interventions: the edit, per-row grids, files, training, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from probe.forward import make_batch
from probe.interventions import InterventionError, loreft
from probe.sites import Site
from steering.eval.baselines import random_like, reply_states
from steering.inject import Setting, generate_settings, steering_hooks
from steering.lowrank import LowRankIntervention, load_steering
from steering.train.batching import pair_batch
from steering.train.objectives import PairData, objective
from steering.train.trainer import SteeredModel, TrainConfig, train_vector
from steering.vector import SteeringError, SteeringVector
from tests.steering.conftest import random_vector
from tests.tolerance import assert_close, assert_same_generations

PROMPTS = ["We won the final!", "The meeting is at noon in room four.", "Someone stole my bike."]
REPLIES = ["Someone stole my bike and laughed at me.", "Everyone is cheering in the street.",
           "The bus left without me."]


def _random(lm, layers=(0, 1), rank=3, seed=0, scale=0.5) -> LowRankIntervention:
    g = torch.Generator().manual_seed(seed)
    d = lm.model.config.hidden_size
    params = {}
    for L in layers:
        R = torch.linalg.qr(torch.randn(d, rank, generator=g)).Q.T
        params[Site("hook_resid_post", L)] = {"R": R, "W": R + scale * torch.randn(rank, d, generator=g),
                                              "b": torch.randn(rank, generator=g)}
    return LowRankIntervention(params, {"emotion": "anger", "method": "test"})


def _by_hand(lm, batch, lr, strength=1.0):
    """Logits with ``h + s R^T((W - R) h + b)`` at every token of each layer's output, by plain
    torch forward hooks, independent of the hook layer under test."""
    def edit(p):
        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            new = h + strength * ((h @ (p["W"] - p["R"]).T + p["b"]) @ p["R"])
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
        return hook

    layers = lm.model.model.layers
    handles = [layers[s.layer].register_forward_hook(edit(p)) for s, p in lr.params.items()]
    try:
        return lm.model(**batch.inputs).logits
    finally:
        for h in handles:
            h.remove()


def test_the_edit_is_lorefts_formula_and_strength_scales_it(tiny_qwen):
    lm = tiny_qwen
    lr = _random(lm)
    batch = make_batch(lm, PROMPTS)
    m = batch.attention_mask.bool()
    with torch.no_grad():
        plain = lm.model(**batch.inputs).logits
        for s in (1.0, 0.5):
            with lr.apply(lm, strength=s, positions="all", match="none"):
                steered = lm.model(**batch.inputs).logits
            expect = _by_hand(lm, batch, lr, strength=s)
            assert not torch.allclose(steered[m], plain[m], atol=1e-3)
            assert_close(steered[m], expect[m], err_msg=f"strength {s}")
        # strength 0 adds an exact zero (0 x a finite edit): the same numbers as no hook at all
        with lr.apply(lm, strength=0.0, positions="all", match="none"):
            assert torch.equal(lm.model(**batch.inputs).logits, plain)


def test_per_row_grid_mixes_vectors_and_low_rank_edits(tiny_qwen):
    lm = tiny_qwen
    lr, other, vec = _random(lm, seed=1), _random(lm, layers=(1, 2), rank=2, seed=2), random_vector(lm, layers=(1,))
    settings = [Setting(vector=None), Setting(vector=lr, strength=1.0), Setting(vector=vec, strength=2.0),
                Setting(vector=other, strength=0.5, positions="all"), Setting(vector=lr, strength=-0.5)]
    texts = [p for _ in settings for p in PROMPTS]
    with torch.no_grad():
        with lm.hooks(steering_hooks(settings, lm, rows_per_setting=len(PROMPTS))):
            together = lm.logits(texts)
        for i, st in enumerate(settings):
            with lm.hooks(steering_hooks(st, lm)):
                alone = lm.logits(PROMPTS)
            rows = together[i * len(PROMPTS):(i + 1) * len(PROMPTS)]
            assert_close(rows[:, -alone.shape[1]:], alone, err_msg=str(i))
    kw = {"max_new_tokens": 5, "min_new_tokens": 5}
    grid = generate_settings(lm, PROMPTS, settings[:2] + settings[4:], batch_size=4, **kw)
    for st, got in zip(settings[:2] + settings[4:], grid):
        with lm.hooks(steering_hooks(st, lm)):
            assert_same_generations(got, lm.generate(PROMPTS, **kw))
    assert grid[0] != grid[1]


def test_bad_interventions_are_refused_with_the_fix(tiny_qwen):
    d = tiny_qwen.model.config.hidden_size
    site = Site("hook_resid_post", 0)
    with pytest.raises(SteeringError, match="orthonormal rows"):
        LowRankIntervention({site: {"R": torch.ones(2, d), "W": torch.ones(2, d), "b": torch.zeros(2)}})
    with pytest.raises(SteeringError, match="lacks"):
        LowRankIntervention({site: {"R": torch.eye(d)[:2], "W": torch.eye(d)[:2]}})
    with pytest.raises(InterventionError, match="one shape"):
        loreft(torch.eye(d)[:2], torch.eye(d)[:3], torch.zeros(2))
    lr = _random(tiny_qwen)
    with pytest.raises(SteeringError, match="mode='add'"):
        Setting(vector=lr, mode="ablate")
    with pytest.raises(SteeringError, match="not in this intervention"):
        lr.at([5])
    assert lr.at([1]).layers == [1]
    wide = _random(tiny_qwen, layers=(9,))
    with pytest.raises(SteeringError, match="layer|range|blocks"):
        wide.check(tiny_qwen, match="none")


def test_files_round_trip_and_say_what_they_hold(tiny_qwen, tmp_path):
    lr = _random(tiny_qwen)
    lr.save(tmp_path / "lr")
    back = load_steering(tmp_path / "lr.json", tiny_qwen, match="none")
    assert isinstance(back, LowRankIntervention) and back.checksum() == lr.checksum()
    assert back.rank == 3 and back.emotion == "anger"
    for s in lr.sites:
        for k in ("R", "W", "b"):
            assert torch.equal(back.params[s][k], lr.params[s][k])   # float32 bytes written and read
    header = json.loads((tmp_path / "lr.json").read_text())
    assert header["format"] == "emoprobe-lowrank-1" and header["rank"] == 3
    with pytest.raises(SteeringError, match="load_steering"):
        SteeringVector.load(tmp_path / "lr")
    vec = random_vector(tiny_qwen, layers=(1,))
    vec.save(tmp_path / "v")
    assert isinstance(load_steering(tmp_path / "v"), SteeringVector)
    # a changed tensor is caught by the checksum
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(tmp_path / "lr.safetensors"), framework="pt") as f:
        meta = f.metadata()
    t = load_file(tmp_path / "lr.safetensors")
    t["blocks.0.hook_resid_post.b"] = t["blocks.0.hook_resid_post.b"] + 1
    save_file(t, tmp_path / "lr.safetensors", metadata=meta)
    with pytest.raises(SteeringError, match="corrupt"):
        load_steering(tmp_path / "lr")


def test_random_control_has_the_shapes_and_sizes(tiny_qwen):
    lr = _random(tiny_qwen, scale=0.3)
    rnd = random_like(lr, seed=5)
    assert isinstance(rnd, LowRankIntervention) and rnd.meta["method"] == "random"
    for s, p in lr.params.items():
        q = rnd.params[s]
        assert q["R"].shape == p["R"].shape
        assert_close(q["R"] @ q["R"].T, torch.eye(len(q["R"])))
        assert_close((q["W"] - q["R"]).norm(), (p["W"] - p["R"]).norm(), rel=1e-4)
        assert_close(q["b"].norm(), p["b"].norm(), rel=1e-5)
        assert abs(float((q["R"] * p["R"]).sum())) < 0.9 * len(p["R"])   # not the same subspace


def test_reply_states_are_the_residuals_steering_edits(tiny_qwen):
    lm = tiny_qwen
    sites = [Site("hook_resid_post", 0), Site("hook_resid_post", 1)]
    st = reply_states(lm, PROMPTS, REPLIES, sites, batch_size=2)   # two batches of different widths
    b = pair_batch(lm, PROMPTS, REPLIES)   # all three in one batch, read by plain torch hooks
    outs = {}
    layers = lm.model.model.layers
    handles = [layers[s.layer].register_forward_hook(
        lambda m, a, o, s=s: outs.__setitem__(s, (o[0] if isinstance(o, tuple) else o).detach()))
        for s in sites]
    try:
        with torch.no_grad():
            lm.model(**b.inputs)
    finally:
        for h in handles:
            h.remove()
    for s in sites:
        want = torch.cat([torch.cat([outs[s][i, b.width - 1:b.width],
                                     outs[s][i, b.width:][b.reply_mask[i]]]) for i in range(len(PROMPTS))])
        assert st[s].shape == want.shape == (int(b.reply_mask.sum()) + len(PROMPTS),
                                             lm.model.config.hidden_size)
        assert_close(st[s], want, rel=1e-4)


def test_matched_random_control_edits_as_much_as_the_trained_one(tiny_qwen):
    lm = tiny_qwen
    lr = _random(lm, scale=0.3)
    st = reply_states(lm, PROMPTS, REPLIES, lr.sites)
    want = lr.edit_norms(st)
    for s, p in lr.params.items():   # the edit's size by the formula, row by row
        h = st[s]
        by_hand = (h + ((h @ (p["W"] - p["R"]).T + p["b"]) @ p["R"]) - h).norm(dim=-1).mean()
        assert_close(want[s], float(by_hand), rel=1e-4)
    plain, matched = random_like(lr, seed=5), random_like(lr, seed=5, states=st)
    assert matched.meta["control"] == "edit size matched on real tokens"
    got, before = matched.edit_norms(st), plain.edit_norms(st)
    for s in lr.sites:
        assert_close(got[s], want[s], rel=1e-4)
        assert abs(before[s] - want[s]) > 1e-3 * want[s]   # the plain control was not matched
        q, p0 = matched.params[s], plain.params[s]
        assert torch.equal(q["R"], p0["R"])   # same random subspace, only rescaled
        assert_close(q["R"] @ q["R"].T, torch.eye(len(q["R"])))
    with pytest.raises(SteeringError, match="no states at"):
        lr.edit_norms({lr.sites[0]: st[lr.sites[0]]})


def test_trained_low_rank_edit_goes_down_stays_orthonormal_and_applies_as_trained(tiny_qwen):
    lm = tiny_qwen
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    data = PairData(list(PROMPTS), list(REPLIES))
    cfg = TrainConfig(layers=(0, 1), steps=20, batch_size=3, lr=0.3, init_strength=0.5,
                      max_norm=50.0, rank=2, positions="all")
    lr, log = train_vector(lm, data, objective("lm"), cfg, emotion="anger")
    assert isinstance(lr, LowRankIntervention) and lr.rank == 2 and lr.layers == [0, 1]
    assert max(log.losses[-3:]) < log.losses[0] - 0.02 * abs(log.losses[0]), log.losses
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p in lr.params.values():
        assert_close(p["R"] @ p["R"].T, torch.eye(2), rel=1e-5)
        assert float((p["W"] - p["R"]).norm()) > 0   # the input-dependent part learned something
    assert lr.meta["train"]["rank"] == 2
    # the saved intervention, applied at strength 1, is the edit the training forward made
    batch = pair_batch(lm, PROMPTS, REPLIES)
    m = batch.attention_mask.bool()
    with torch.no_grad():
        with lr.apply(lm, strength=1.0, positions="all"):
            applied = lm.model(**batch.inputs).logits
        expect = _by_hand(lm, batch, lr)
    assert_close(applied[m], expect[m])


def test_training_starts_as_the_rank_one_vector(tiny_qwen):
    """Rank r starts where the additive vector starts (R's first row the init direction, b =
    (init_strength, 0, ...), W = R): the first forward is the vector's."""
    from steering.train.reft import ReftSite

    lm = tiny_qwen
    d = lm.model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    u = torch.randn(d, generator=g)
    site = ReftSite(u, rank=3, rms=2.0, init_strength=0.7, seed=1)
    h = torch.randn(2, 4, d, generator=g)
    assert_close(site.delta(h), (2.0 * 0.7 * u / u.norm()).expand(2, 4, d))
    sites = [Site("hook_resid_post", 0)]
    batch = pair_batch(lm, PROMPTS, REPLIES)
    with torch.no_grad():
        a = SteeredModel(lm, sites, [site], [2.0], "last-prompt+generated")
        b = SteeredModel(lm, sites, [0.7 * u / u.norm()], [2.0], "last-prompt+generated")
        with a.hooks():
            la = a(batch)
        with b.hooks():
            lb = b(batch)
    assert_close(la, lb)
    with pytest.raises(SteeringError, match="rank must be"):
        TrainConfig(rank=-1)


def test_steer_train_rank_writes_an_intervention_that_steer_applies(capsys, tiny_dir, tmp_path, monkeypatch):
    """``probe steer-train --rank R`` writes a LoReFT file; ``probe steer --vector`` reads it and
    steers with it (its layers, strength x its edit); a bad rank is refused."""
    from probe.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    model = str(tiny_dir / "llama")
    out = tmp_path / "anger-reft"
    code, _, err = run("steer-train", "--model", model, "--emotion", "anger", "--objective", "lm",
                          "--rank", "2", "--layers", "0,1", "--steps", "2", "--prompts", "4", "--out", out)
    assert code == 0, err
    lr = load_steering(out)
    assert isinstance(lr, LowRankIntervention) and lr.rank == 2 and lr.layers == [0, 1]
    assert lr.meta["method"] == "trained-lm" and lr.meta["train"]["rank"] == 2
    js = tmp_path / "s.json"
    code, _, err = run("steer", "--model", model, "--emotion", "anger", "--vector", out, "--strength", "1",
                       "--max-new-tokens", "3", "--out", js, "--quiet", "Hi")
    assert code == 0, err
    record = json.loads(js.read_text())
    assert record["vector"]["layers"] == [0, 1] and record["vector"]["sha256"] == lr.checksum()
    code, _, err = run("steer-train", "--model", model, "--emotion", "anger", "--rank", "-1",
                       "--out", tmp_path / "x")
    assert code == 2 and "--rank >= 0" in err, err
