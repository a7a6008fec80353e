"""Trained steering vectors on a tiny model: objectives go down, only the vector learns."""

from __future__ import annotations

import math

import pytest
import torch

from steering.train.batching import pair_batch
from steering.train.objectives import PairData, objective
from steering.train.trainer import TrainConfig, train_vector
from steering.vector import SteeringError, SteeringVector
from tests.steering.sev_fake import fake_sev

PROMPTS = ["The meeting is at noon.", "I lost my keys again today.", "The letter arrived.",
           "We won the final!"]
REPLIES = ["Someone stole my bike and laughed at me.", "Everyone is cheering in the street.",
           "My friend surprised me with a party.", "The bus left without me."]
# the other side of the preference: a different register, learnable by one vector
NEGATIVES = ["The meeting is at noon in room four.", "The letter from the hospital arrived.",
             "The meeting is in room four.", "The letter arrived this morning."]


def _data(**kw):
    return PairData(list(PROMPTS), list(REPLIES), negatives=list(NEGATIVES),
                    system_prompt="Someone stole my bike and laughed at me. We won the final!",
                    user_suffix=" Everyone is cheering in the street.", **kw)


def _fast(**kw):
    return TrainConfig(**{"layers": (0, 1), "steps": 20, "batch_size": 4, "lr": 0.2,
                          "init_strength": 0.0 + 1e-3, "max_norm": 50.0, **kw})


# a random tiny model barely listens to its prompt: distillation's toy target is amplified
@pytest.mark.parametrize("name,kw,lr", [("distill", {"amplify": 10.0}, 0.01),
                                        ("preference", {"beta": 20.0}, 0.05), ("lm", {}, 0.2)])
def test_objective_goes_down_and_model_is_untouched(tiny_qwen, name, kw, lr):
    lm = tiny_qwen
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    batch = pair_batch(lm, PROMPTS, REPLIES)
    with torch.no_grad():
        logits_before = lm.model(**batch.inputs).logits
    vec, log = train_vector(lm, _data(), objective(name, **kw), _fast(lr=lr), emotion="anger")
    # full batch, fixed data: the loss at the end is clearly below the start
    assert max(log.losses[-3:]) < log.losses[0] - 0.02 * abs(log.losses[0]), log.losses
    # only the vector learned: no weight changed, no weight collected a gradient
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in lm.model.parameters())
    # every hook removed: the same forward gives bit-identical logits
    with torch.no_grad():
        assert torch.equal(lm.model(**batch.inputs).logits, logits_before)
    assert isinstance(vec, SteeringVector) and vec.layers == [0, 1]
    assert vec.meta["method"] == f"trained-{name}" and set(vec.meta["rms"]) == {str(s) for s in vec.sites}


def _by_hand(lm, batch, deltas, mask=None):
    """Logits with ``deltas[layer]`` added to each decoder layer's output (at ``mask`` only, if
    given) by plain torch forward hooks, independent of the hook layer under test."""
    def add(d):
        d = d if mask is None else mask.unsqueeze(-1) * d
        def hook(module, args, out):
            return (out[0] + d,) + tuple(out[1:]) if isinstance(out, tuple) else out + d
        return hook

    handles = [lm.model.model.layers[L].register_forward_hook(add(d)) for L, d in deltas.items()]
    try:
        return lm.model(**batch.inputs).logits
    finally:
        for h in handles:
            h.remove()


def test_saved_vector_adds_what_was_trained(tiny_qwen):
    lm = tiny_qwen
    vec, _ = train_vector(lm, _data(), objective("lm"), _fast(positions="all", steps=5))
    batch = pair_batch(lm, PROMPTS, REPLIES)
    with torch.no_grad():
        plain = lm.model(**batch.inputs).logits
        with vec.apply(lm, strength=1.0, positions="all"):
            steered = lm.model(**batch.inputs).logits
        # the same additions written by hand at each layer's output
        by_hand = _by_hand(lm, batch, {s.layer: vec.rms(s) * vec.directions[s] for s in vec.sites})
    m = batch.attention_mask.bool()
    assert not torch.allclose(steered[m], plain[m])
    scale = by_hand[m].abs().max()
    torch.testing.assert_close(steered[m], by_hand[m], rtol=1e-4, atol=1e-5 * float(scale))


def test_init_strength_none_continues_the_init_vector_in_this_datas_rms(tiny_qwen):
    """``init_strength=None``: training starts from the init vector itself (self-training goes on
    from the sampler's vector at its strength), each layer converted to the new data's RMS so the
    same absolute edit is added; a tiny learning rate leaves it there."""
    lm = tiny_qwen
    first, _ = train_vector(lm, _data(), objective("lm"), _fast(steps=3))
    # pretend it was made where the residual stream was twice as large: the same absolute edit
    # is then twice as many of this data's RMS
    meta = dict(first.meta, rms={k: 2 * v for k, v in first.meta["rms"].items()})
    init = SteeringVector(dict(first.directions), meta) * 1.5
    vec, _ = train_vector(lm, _data(), objective("lm"), _fast(steps=1, lr=1e-9, init_strength=None),
                          init=init)
    for site in first.sites:
        want = 1.5 * 2 * first.directions[site] * first.rms(site) / vec.rms(site)
        torch.testing.assert_close(vec.directions[site], want, rtol=1e-4, atol=1e-6)
    with pytest.raises(SteeringError, match="continues an init vector"):
        train_vector(lm, _data(), objective("lm"), _fast(steps=1, init_strength=None))
    with pytest.raises(SteeringError, match="init_strength=None .continue a vector. is for rank 0"):
        train_vector(lm, _data(), objective("lm"), _fast(steps=1, init_strength=None, rank=2), init=init)
    with pytest.raises(SteeringError, match="init_strength must be positive"):
        _fast(init_strength=0.0)


def test_norm_constraint_holds(tiny_qwen):
    _vec, log = train_vector(tiny_qwen, _data(), objective("lm"), _fast(max_norm=0.05, steps=4))
    assert all(n <= 0.05 * (1 + 1e-5) for n in log.norms.values())


def test_steer_mask_covers_last_prompt_token_and_reply(tiny_qwen):
    b = pair_batch(tiny_qwen, PROMPTS, REPLIES)
    mask = b.steer_mask("last-prompt+generated").bool()
    assert mask[:, : b.width - 1].sum() == 0
    assert mask[:, b.width - 1].all()
    assert torch.equal(mask[:, b.width:], b.reply_mask)
    assert torch.equal(b.steer_mask("all").bool(), b.attention_mask.bool())
    # opening:K: the states that predict the reply's first K tokens (columns W - 1 .. W + K - 2)
    opening = b.steer_mask("opening:2").bool()
    assert torch.equal(opening[:, : b.width + 1], mask[:, : b.width + 1])
    assert opening[:, b.width + 1:].sum() == 0 and mask[:, b.width + 1:].any()
    for bad in ("opening:0", "opening:", "later"):
        with pytest.raises(SteeringError, match="opening:K" if "opening" in bad else "must be one of"):
            b.steer_mask(bad)
        with pytest.raises(SteeringError):
            TrainConfig(positions=bad)


def test_bad_input(tiny_qwen):
    with pytest.raises(SteeringError, match="distillation needs"):
        train_vector(tiny_qwen, PairData(PROMPTS, REPLIES), objective("distill"), _fast())
    with pytest.raises(SteeringError, match="contrast replies"):
        train_vector(tiny_qwen, PairData(PROMPTS, REPLIES), objective("preference"), _fast())
    with pytest.raises(SteeringError, match="out of range"):
        train_vector(tiny_qwen, _data(), objective("lm"), _fast(layers=(7,)))
    with pytest.raises(SteeringError, match="unknown objective"):
        objective("reinforce")
    with pytest.raises(SteeringError, match="no non-empty"):
        PairData(["a"], [" "])


@pytest.mark.parametrize("positions", ["last-prompt+generated", "opening:2"])
def test_prefix_cache_forward_equals_full_forward(tiny_qwen, positions):
    from probe.sites import Site
    from steering.train.trainer import SteeredModel

    lm = tiny_qwen
    g = torch.Generator().manual_seed(0)
    sites = [Site("hook_resid_post", 0), Site("hook_resid_post", 2)]
    weights = [torch.randn(64, generator=g) for _ in sites]
    cached = SteeredModel(lm, sites, weights, [3.0, 5.0], positions)
    batch = pair_batch(lm, PROMPTS, REPLIES)
    with torch.no_grad(), cached.hooks():
        fast = batch.reply_logits(cached.forward(batch))
        again = batch.reply_logits(cached.forward(batch))      # from the stored prefix cache
    # the same additions over the whole row, masked to the steered positions
    mask = batch.steer_mask(positions)

    def add(k):
        def fn(value, ctx):
            return value + mask.unsqueeze(-1) * ([3.0, 5.0][k] * weights[k])
        return fn

    with torch.no_grad(), lm.hooks({s: add(k) for k, s in enumerate(sites)}):
        full = batch.reply_logits(lm.model(**batch.inputs).logits)
    m = batch.reply_mask
    scale = float(full[m].abs().max())
    torch.testing.assert_close(fast[m], full[m], rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(again[m], fast[m], rtol=1e-5, atol=1e-6 * scale)


def test_expression_vectors_are_unit_directions_with_rms(tiny_qwen):
    from steering.expression import expression_vectors

    emotions = ["anger", "sadness"]
    prompts = PROMPTS + PROMPTS
    replies = REPLIES + NEGATIVES
    labels = ["anger"] * 4 + ["sadness"] * 4
    groups = [str(i) for i in range(4)] * 2
    vecs = expression_vectors(tiny_qwen, prompts, replies, labels, layers=[0, 2], emotions=emotions,
                              groups=groups)
    for v in vecs.values():
        assert v.layers == [0, 2] and v.meta["method"] == "expression"
        assert all(abs(float(t.norm()) - 1.0) < 1e-5 for t in v.directions.values())
        assert all(v.rms(s) > 0 for s in v.sites)
    # two emotions: each is the other's opposite
    for s in vecs["anger"].sites:
        torch.testing.assert_close(vecs["anger"][s], -vecs["sadness"][s])
    with pytest.raises(SteeringError, match="do not differ"):
        expression_vectors(tiny_qwen, prompts, REPLIES + REPLIES, labels, layers=[0], emotions=emotions,
                           groups=groups)


def test_operating_point_with_a_shipped_vector(tiny_qwen, tmp_path):
    import json

    from steering.operating_points import operating_point, point_vector

    vec, _ = train_vector(tiny_qwen, _data(), objective("lm"), _fast(steps=2), emotion="anger")
    vec.save(tmp_path / "anger-distill")
    table = {"format": 1, "models": {"tiny": {"emotions": {"anger": {
        "method": "trained-distill", "site": "resid_post", "layers": [0, 1], "scale": 1.0,
        "strength": "rms", "mode": "add", "positions": "last-prompt+generated",
        "vector": "anger-distill", "prompt": {"system_prompt": "Be angry.", "user_suffix": "",
                                              "scale": 0.5}}}}}}
    (tmp_path / "points.json").write_text(json.dumps(table))
    point = operating_point("tiny", "anger", path=tmp_path / "points.json")
    assert point.vector == "anger-distill" and point.prompt["strength"] == 0.5  # format 1, renamed
    assert point.strength == 1.0 and point.unit == "rms"
    loaded = point_vector(point, tiny_qwen, folder=tmp_path)
    for s in vec.sites:
        assert torch.equal(loaded[s], vec[s])
    missing = operating_point("tiny", "anger", path=tmp_path / "points.json")
    with pytest.raises(SteeringError, match="missing"):
        point_vector(missing, folder=tmp_path / "nowhere")


def test_prompt_mode():
    from steering.operating_points import OperatingPoint, prompt_mode

    point = OperatingPoint(model="m", emotion="anger", method="trained-distill", site="resid_post",
                           layers=(1,), strength=1.0,
                           prompt={"system_prompt": "Be angry.", "user_suffix": " (angrily)", "strength": 0.5})
    assert prompt_mode(point, "anger", ["Hi."]) == (["Hi. (angrily)"], "Be angry.", 0.5)
    with pytest.raises(SteeringError, match="--with-prompt"):
        prompt_mode(None, "anger", ["Hi."])


def test_train_config_reads_its_record_back_also_from_old_files(tiny_qwen, tmp_path):
    """meta["train"] records the config; files written before init_scale was renamed
    init_strength (one word for an amount added, x RMS) still load and read back."""
    config = _fast(steps=1)
    vec, _ = train_vector(tiny_qwen, _data(), objective("lm"), config)
    assert TrainConfig.from_record(vec.meta["train"]) == config
    old = {("init_scale" if k == "init_strength" else k): v for k, v in vec.meta["train"].items()}
    SteeringVector(vec.directions, {**vec.meta, "train": old}).save(tmp_path / "old")
    loaded = SteeringVector.load(tmp_path / "old", tiny_qwen)
    assert "init_scale" in loaded.meta["train"]
    assert TrainConfig.from_record(loaded.meta["train"]) == config


def test_amplified_target_keeps_plausible_tokens_only():
    from steering.train.objectives import amplified_target

    lt = torch.log(torch.tensor([[0.60, 0.30, 0.08, 0.02]]))   # prompted
    ls = torch.log(torch.tensor([[0.70, 0.10, 0.02, 0.18]]))   # plain
    full = amplified_target(lt, ls, 2.0)
    # classifier-free guidance by hand: p^3 / q^2, normalised
    raw = torch.exp(3 * lt - 2 * ls)
    torch.testing.assert_close(full.exp(), raw / raw.sum())
    cut = amplified_target(lt, ls, 2.0, plausible=0.1)          # keeps p >= 0.06: tokens 0-2
    p = cut.exp()
    assert p[0, 3] == 0 and torch.isfinite(cut).all()
    torch.testing.assert_close(p[0, :3], raw[0, :3] / raw[0, :3].sum())
    # amplification moves mass to the token the prompt raised most among the plausible ones
    assert p[0, 2] > torch.exp(lt[0, 2])
    with pytest.raises(SteeringError, match="plausible < 1"):
        objective("distill", amplify=2.0, plausible=1.5).prepare(None, _data())


def test_plausible_distillation_goes_down(tiny_qwen):
    _, log = train_vector(tiny_qwen, _data(), objective("distill", amplify=10.0, plausible=0.05),
                            _fast(lr=0.01), emotion="anger")
    assert max(log.losses[-3:]) < log.losses[0] - 0.02 * abs(log.losses[0]), log.losses


def test_objective_data_maps_each_name_to_its_objective_and_rows():
    from steering.train.data import OBJECTIVES, TeacherSet, objective_data

    teach = TeacherSet(prompts=["p0", "p1", "p2"],
                       replies={e: [f"{e}{i}" for i in range(3)] for e in ("anger", "joy", "fear")},
                       system_prompts={"anger": "Be angry.", "joy": "Be glad.", "fear": "Be afraid."},
                       user_suffixes={e: "" for e in ("anger", "joy", "fear")}, meta={})
    got = {n: objective_data(n, "anger", teach, amplify=3.0, plausible=0.2) for n in OBJECTIVES
           if n != "distill-boot"}                  # that one needs a steered teacher (below)
    assert [(o.amplify, o.plausible) for n, (_, o) in got.items() if n.startswith("distill")] == \
        [(3.0, 0.2), (0.0, 0.0), (3.0, 0.0)]          # distill-cd, distill, distill-amp
    data, _ = got["distill-cd"]
    assert data.system_prompt == "Be angry." and data.replies == ["anger0", "anger1", "anger2"]
    data, obj = got["preference"]
    assert obj.name == "preference" and data.negatives == ["joy0", "fear1", "joy2"]  # same prompt
    assert got["lm"][1].name == "lm" and got["lm"][0].negatives is None
    with pytest.raises(SteeringError, match="unknown objective 'x'"):
        objective_data("x", "anger", teach)


def _teach():
    from steering.train.data import TeacherSet

    return TeacherSet(prompts=list(PROMPTS), replies={"anger": list(REPLIES), "joy": list(NEGATIVES)},
                      system_prompts={"anger": "Be angry.", "joy": "Be glad."},
                      user_suffixes={"anger": " (angry)", "joy": ""}, meta={})


def _vector(lm, layers=(0, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    from probe.hooks import Site

    d = lm.model.config.hidden_size
    return SteeringVector({Site("hook_resid_post", L): torch.randn(d, generator=g) for L in layers},
                          {"method": "trained-distill-cd", "rms": {f"blocks.{L}.hook_resid_post": 1.5
                                                                   for L in layers}})


def test_distill_boot_needs_the_steered_teacher_it_names(tiny_qwen):
    from steering.train.data import objective_data

    teach, vec = _teach(), _vector(tiny_qwen)
    with pytest.raises(SteeringError, match="teacher_vector"):
        objective_data("distill-boot", "anger", teach)
    with pytest.raises(SteeringError, match="were not generated with this steered teacher"):
        objective_data("distill-boot", "anger", teach, teacher_vector=vec, teacher_strength=0.5)
    with pytest.raises(SteeringError, match="only distill-boot takes a teacher vector"):
        objective_data("distill-cd", "anger", teach, teacher_vector=vec, teacher_strength=0.5)
    teach.meta["steered"] = {"anger": {"strength": 0.5, "vector_checksum": vec.checksum()}}
    with pytest.raises(SteeringError, match="were not generated"):   # another vector's replies
        objective_data("distill-boot", "anger", teach, teacher_vector=_vector(tiny_qwen, seed=1),
                       teacher_strength=0.5)
    data, obj = objective_data("distill-boot", "anger", teach, teacher_vector=vec,
                               teacher_strength=0.5, amplify=3.0, plausible=0.2)
    assert (obj.amplify, obj.plausible) == (0.0, 0.2)       # no amplification, plausibility kept
    assert data.teacher_vector is vec and data.teacher_strength == 0.5
    assert data.system_prompt == "Be angry." and data.user_suffix == " (angry)"


def test_steered_teacher_adds_the_vector_at_the_steered_positions(tiny_qwen):
    """The teacher's logits under ``teacher_hooks`` equal the same additions written by hand."""
    lm, vec = tiny_qwen, _vector(tiny_qwen)
    data = PairData(list(PROMPTS), list(REPLIES), system_prompt="Be angry.", teacher_vector=vec,
                    teacher_strength=0.7)
    b = data.batch(lm, range(4), teacher=True)
    mask = b.steer_mask("last-prompt+generated")
    with torch.no_grad():
        plain = lm.model(**b.inputs).logits
        with data.teacher_hooks(lm, b):
            steered = lm.model(**b.inputs).logits
        by_hand = _by_hand(lm, b, {s.layer: 0.7 * 1.5 * v for s, v in vec.directions.items()},
                           mask=mask)
    m = b.attention_mask.bool()
    torch.testing.assert_close(steered[m], by_hand[m], rtol=1e-4, atol=1e-5 * float(by_hand[m].abs().max()))
    # the prompt before its last token is not steered; the reply is
    first = (~mask.bool()) & m
    torch.testing.assert_close(steered[first], plain[first])
    assert not torch.allclose(steered[mask.bool()], plain[mask.bool()])
    # strength 0: no hooks at all, the plain forward
    zero = PairData(list(PROMPTS), list(REPLIES), system_prompt="Be angry.", teacher_vector=vec,
                    teacher_strength=0.0)
    with torch.no_grad(), zero.teacher_hooks(lm, b):
        assert torch.equal(lm.model(**b.inputs).logits, plain)


def test_steered_teacher_replies_are_generated_once_and_recorded(tiny_qwen, tmp_path, monkeypatch):
    import steering.train.data as D

    teach, vec = _teach(), _vector(tiny_qwen)
    out = D.steered_teacher(tiny_qwen, teach, "anger", vec, 0.5, max_new_tokens=4, cache=tmp_path)
    assert out.replies["joy"] == teach.replies["joy"] and out.prompts == teach.prompts
    assert len(out.replies["anger"]) == len(PROMPTS) and out.replies["anger"] != teach.replies["anger"]
    assert out.meta["steered"]["anger"] == {"vector": "trained-distill-cd", "vector_checksum": vec.checksum(),
                                            "strength": 0.5, "unit": "rms",
                                            "positions": "last-prompt+generated"}
    monkeypatch.setattr(D, "generate_arms", lambda *a, **k: pytest.fail("regenerated"))
    again = D.steered_teacher(tiny_qwen, teach, "anger", vec, 0.5, max_new_tokens=4, cache=tmp_path)
    assert again.replies == out.replies
    data, _ = D.objective_data("distill-boot", "anger", again, teacher_vector=vec, teacher_strength=0.5)
    _, log = train_vector(tiny_qwen, data, D.objective("distill", plausible=0.1), _fast(steps=3, lr=0.01))
    assert all(map(math.isfinite, log.losses))
    with pytest.raises(SteeringError, match="non-zero strength"):
        D.steered_teacher(tiny_qwen, teach, "anger", vec, 0.0)


def test_sev_reply_data_contrasts_replies_to_the_same_prompt(tmp_path):
    from steering.train.data import SEV_OBJECTIVES, sev_prompts, sev_reply_data
    from steering.train.objectives import LanguageModel, Preference
    sev = fake_sev(tmp_path / "sev", missing={("work_00", "neutral", "anger"),
                                               ("home_01", "positive", "sadness"),
                                               ("home_01", "positive", "fear")})
    data, obj = sev_reply_data("sev-pref-lm", "anger", sev, n=None, lm_weight=0.5)
    assert isinstance(obj, Preference) and obj.lm_weight == 0.5
    # round-robin over themes (in sorted order): home_01, work_00, home_03, work_02; work_00's
    # neutral anger reply is missing, and home_01 positive has no contrast reply: both rows dropped
    assert len(data) == 12 - 2
    for p, t, n in zip(data.prompts, data.replies, data.negatives):
        sid, v = t.split(" reply to ")[1].split()
        assert t.startswith("anger ") and not n.startswith("anger ")
        assert n.endswith(f"reply to {sid} {v}")        # the contrast answers the same prompt
        assert p == f"I did task {int(sid[-2:])}. {v} event {int(sid[-2:])}"
    assert {n.split()[0] for n in data.negatives} == {"sadness", "fear"}   # other emotions in turn
    assert [p.split(".")[0][-1] for p in data.prompts] == list("1100333222")
    # slices follow sev_prompts' order, so disjoint ranges share no skeleton
    first, _ = sev_reply_data("sev-lm", "fear", sev, n=2)
    rest, obj = sev_reply_data("sev-lm", "fear", sev, n=None, offset=2)
    assert isinstance(obj, LanguageModel) and rest.negatives is None
    key = lambda d: {p.split(".")[0] for p in d.prompts}
    assert not key(first) & key(rest)
    assert key(rest) == {p.split(".")[0] for p in sev_prompts(sev, offset=2)}
    assert sev_reply_data("sev-preference", "fear", sev, n=None)[1].lm_weight == 0.0
    assert set(SEV_OBJECTIVES) == {"sev-preference", "sev-pref-lm", "sev-pref-lm-kl", "sev-lm"}
    with pytest.raises(SteeringError, match="unknown SEV objective"):
        sev_reply_data("preference", "fear", sev)
    with pytest.raises(SteeringError, match="has anger, fear, sadness"):
        sev_reply_data("sev-lm", "joy", sev)
    with pytest.raises(SteeringError, match="sev_accepted.jsonl"):
        sev_reply_data("sev-lm", "fear", tmp_path)


def test_preference_lm_weight_adds_the_target_replies_lm_loss(tiny_qwen):
    lm, data = tiny_qwen, _data()
    rows = [0, 1, 2, 3]

    def forward(b):
        return lm.model(**b.inputs).logits

    with torch.no_grad():
        plain, anchored = objective("preference"), objective("preference", lm_weight=0.7)
        plain.prepare(lm, data)
        anchored.prepare(lm, data)
        nll = float(objective("lm").loss(lm, forward, data, rows))
        got = float(anchored.loss(lm, forward, data, rows)) - float(plain.loss(lm, forward, data, rows))
    assert got == pytest.approx(0.7 * nll, rel=1e-4)
    assert nll > 1.0                                       # a real LM loss, not a zero term
    with pytest.raises(SteeringError, match="lm_weight >= 0"):
        objective("preference", lm_weight=-1.0).prepare(lm, data)


def test_skipped_opening_tokens_stay_in_the_input_but_out_of_the_loss(tiny_qwen, tmp_path):
    from steering.train.data import sev_reply_data
    lm = tiny_qwen
    full = pair_batch(lm, PROMPTS, REPLIES)
    skip = pair_batch(lm, PROMPTS, REPLIES, skip_reply_tokens=3)
    assert torch.equal(full.input_ids, skip.input_ids) and torch.equal(full.reply_ids, skip.reply_ids)
    n = full.reply_mask.sum(1)
    assert torch.equal(skip.reply_mask.sum(1), n - 3) and not skip.reply_mask[:, :3].any()
    # a reply no longer than the skip keeps its last token
    short = pair_batch(lm, PROMPTS[:1], ["Hi"], skip_reply_tokens=50)
    assert int(short.reply_mask.sum()) == 1 and bool(short.reply_mask[0, -1])
    # the LM objective then scores only the rest of each reply
    data = PairData(list(PROMPTS), list(REPLIES), skip_reply_tokens=3)
    def forward(b):
        return lm.model(**b.inputs).logits
    with torch.no_grad():
        logits = forward(full)
        lp = torch.log_softmax(full.reply_logits(logits).float(), -1)
        tok = lp.gather(-1, full.reply_ids.unsqueeze(-1)).squeeze(-1)
        want = -torch.stack([tok[i, 3:int(n[i])].mean() for i in range(len(PROMPTS))]).mean()
        got = objective("lm").loss(lm, forward, data, [0, 1, 2, 3])
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # distillation then matches the teacher only after each reply's first 2 tokens: the KL
    # summed over the remaining tokens of every reply, divided by their count
    dist = PairData(list(PROMPTS), list(REPLIES), system_prompt="Be angry.", skip_reply_tokens=2)
    obj = objective("distill")
    obj.prepare(lm, dist)
    assert [t.shape[0] for t in obj._target] == [int(k) - 2 for k in n]
    teach = pair_batch(lm, PROMPTS, REPLIES, system_prompt="Be angry.")
    with torch.no_grad():
        lt = torch.log_softmax(teach.reply_logits(lm.model(**teach.inputs).logits).float(), -1)
        kl = [(lt[i, 2:int(n[i])].exp() * (lt[i, 2:int(n[i])] - lp[i, 2:int(n[i])])).sum()
              for i in range(len(PROMPTS))]
        want = torch.stack(kl).sum() / int((n - 2).sum())
        got = obj.loss(lm, forward, dist, [0, 1, 2, 3])
    assert float(got) == pytest.approx(float(want), rel=2e-2, abs=1e-4)   # targets kept in bfloat16
    with pytest.raises(SteeringError, match=">= 0"):
        pair_batch(lm, PROMPTS, REPLIES, skip_reply_tokens=-1)
    assert data.skip_reply_tokens == 3
    d, _ = sev_reply_data("sev-lm", "fear", fake_sev(tmp_path / "sev"), skip_opening=4)
    assert d.skip_reply_tokens == 4


def test_kl_weight_adds_the_reverse_kl_to_the_unsteered_model(tiny_qwen):
    from probe.sites import Site
    from steering.train.objectives import reverse_kl
    from steering.train.trainer import SteeredModel

    lm, data, rows = tiny_qwen, _data(), [0, 1, 2, 3]
    g = torch.Generator().manual_seed(1)
    sites = [Site("hook_resid_post", 0), Site("hook_resid_post", 1)]
    steered = SteeredModel(lm, sites, [torch.randn(64, generator=g) for _ in sites], [3.0, 3.0],
                           "last-prompt+generated")
    b = data.batch(lm, rows)
    m = b.reply_mask
    plain, kl = objective("preference"), objective("preference", kl_weight=0.3)
    plain.prepare(lm, data)            # the unsteered references, before any hook is placed
    kl.prepare(lm, data)
    with torch.no_grad():
        plain_logits = b.reply_logits(lm.model(**b.inputs).logits)
        with steered.hooks():
            off = b.reply_logits(steered.unsteered(b))
            on = b.reply_logits(steered(b))
            # .unsteered is the plain model (through the same prefix cache), .__call__ steers
            scale = float(plain_logits[m].abs().max())
            torch.testing.assert_close(off[m], plain_logits[m], rtol=1e-4, atol=1e-5 * scale)
            assert float((on[m] - plain_logits[m]).abs().max()) > 1e-2 * scale
            got = float(kl.loss(lm, steered, data, rows)) - float(plain.loss(lm, steered, data, rows))
        ls, lu = torch.log_softmax(on.float(), -1), torch.log_softmax(plain_logits.float(), -1)
        # the KL computed here by hand, token by token
        want = sum(float((ls[i, t].exp() * (ls[i, t] - lu[i, t])).sum())
                   for i in range(len(rows)) for t in range(ls.shape[1]) if m[i, t]) / int(m.sum())
    assert want > 1e-3                                     # steering moved the distribution
    assert got == pytest.approx(0.3 * want, rel=1e-3)
    assert float(reverse_kl(lu, lu, m)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SteeringError, match="unsteered"):      # a plain function has no .unsteered
        kl.loss(lm, lambda batch: lm.model(**batch.inputs).logits, data, rows)
    with pytest.raises(SteeringError, match="kl_weight >= 0"):
        objective("preference", kl_weight=-1.0).prepare(lm, data)


def test_kl_weight_keeps_the_trained_vector_closer_to_the_unsteered_model(tiny_qwen):
    from steering.train.objectives import reverse_kl
    from steering.train.trainer import SteeredModel

    lm, data = tiny_qwen, _data()
    cfg = _fast(steps=15, lr=0.05)
    kls = {}
    for w in (0.0, 100.0):   # the tiny model's KLs are ~1e-2: a weight that makes the term count
        vec, _ = train_vector(lm, data, objective("preference", beta=20.0, kl_weight=w), cfg)
        sites = list(vec.directions)
        steered = SteeredModel(lm, sites, [vec.directions[s].float() for s in sites],
                               [vec.rms(s) for s in sites], "last-prompt+generated")
        b = data.batch(lm, [0, 1, 2, 3])
        with torch.no_grad(), steered.hooks():
            ls = torch.log_softmax(b.reply_logits(steered(b)).float(), -1)
            lu = torch.log_softmax(b.reply_logits(steered.unsteered(b)).float(), -1)
        kls[w] = float(reverse_kl(ls, lu, b.reply_mask))
    assert kls[100.0] < 0.5 * kls[0.0]
