"""Injection: operators, positions, per-row settings, KV cache, prefix reuse, bad input."""

from __future__ import annotations

import pytest
import torch

from probe.forward import generate_batch, make_batch
from probe.sites import Site
from steering.inject import Setting, generate_settings, prefix_reusable, steering_hooks
from steering.vector import SteeringError, SteeringVector
from tests.steering.conftest import random_vector
from tests.tolerance import assert_close, assert_same_generations

PROMPTS = ["We won the final!", "The meeting is at noon in room four.", "Someone stole my bike."]
SITE = Site("hook_resid_post", 1)
F32 = torch.finfo(torch.float32).eps


def _read(lm, texts, site=SITE, steer=None):
    """The value at ``site`` as later blocks see it (after any steering hook on it)."""
    seen = {}

    def grab(t, ctx):
        seen["v"] = t.detach().clone()

    batch = make_batch(lm, texts)
    with torch.no_grad():
        if steer is None:
            with lm.hooks({site: grab}):
                lm.logits(batch)
        else:
            with steer, lm.hooks({site: grab}):
                lm.logits(batch)
    return seen["v"], batch


def test_removal_restores_logits_bit_exactly(tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(0, 1, 2))
    batch = make_batch(lm, PROMPTS)
    with torch.no_grad():
        before = lm.logits(batch)
        with vec.apply(lm, strength=4.0, positions="all"):
            during = lm.logits(batch)
        after = lm.logits(batch)
    assert torch.equal(before, after)
    assert not torch.allclose(before, during, atol=1e-3)


@pytest.mark.parametrize("mode", ["add", "ablate", "clamp", "scale"])
def test_operators_do_what_they_say(tiny_llama, mode):
    lm = tiny_llama
    vec = random_vector(lm, layers=(1,), rms=2.0)
    u = vec.directions[SITE]
    h, batch = _read(lm, PROMPTS)
    amount = {"factor": 3.0} if mode == "scale" else {"strength": 3.0}
    h2, _ = _read(lm, PROMPTS, steer=vec.apply(lm, **amount, mode=mode, positions="all"))
    real = batch.attention_mask.bool()
    p, p2 = h @ u, h2 @ u
    tol = 64 * F32 * h.abs().max()
    expect = {"add": p + 3.0 * 2.0, "ablate": torch.zeros_like(p), "clamp": torch.full_like(p, 6.0),
              "scale": 3.0 * p}[mode]
    assert torch.allclose(p2[real], expect[real], atol=tol)
    # the orthogonal part is untouched, and so is padding
    orth, orth2 = h - p[..., None] * u, h2 - p2[..., None] * u
    assert torch.allclose(orth[real], orth2[real], atol=tol)
    assert torch.equal(h[~real], h2[~real])


def test_positions_generated_leaves_the_prompt_alone(tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(0, 1))
    batch = make_batch(lm, PROMPTS)
    with torch.no_grad():
        plain = lm.logits(batch)
        with vec.apply(lm, strength=5.0, positions="generated"):
            gen_only = lm.logits(batch)
        with vec.apply(lm, strength=5.0, positions="last-prompt+generated"):
            last = lm.logits(batch)
    assert torch.equal(plain, gen_only)  # a prompt forward has no generated positions
    assert torch.equal(plain[:, :-1], last[:, :-1]) and not torch.allclose(plain[:, -1], last[:, -1])


def test_delayed_positions_leave_the_replys_opening_to_the_model(tiny_qwen):
    lm = tiny_qwen
    vec = random_vector(lm, layers=(0, 1, 2), seed=4)
    kw = {"max_new_tokens": 6, "min_new_tokens": 6}
    with torch.no_grad():
        plain = generate_batch(lm, PROMPTS, **kw).new_ids
        with vec.apply(lm, strength=8.0, positions="generated:2"):
            late = generate_batch(lm, PROMPTS, **kw).new_ids
        with vec.apply(lm, strength=8.0, positions="generated:2"):
            full = generate_batch(lm, PROMPTS, use_cache=False, **kw).new_ids
    # tokens 0-2 are predicted from untouched states (the steering starts on token 2's state,
    # which predicts token 3); after that the reply follows the vector. Before token 2 the hook
    # adds exact zeros (the position mask), so those states are the plain computation bit for bit
    assert torch.equal(late[:, :3], plain[:, :3])
    assert not torch.equal(late[:, 3:], plain[:, 3:])
    assert_same_generations(late, full)
    _prefix_reuse_and_refusals(lm, vec, "generated:2", ("generated:", "generated:-2", "generated:two",
                                                        "later:3"), "generated:K", kw)


def _prefix_reuse_and_refusals(lm, vec, positions, bad_values, message, kw):
    """A counted position mode touches no prompt token before the last, so grid generation may
    share each prompt's prefix; malformed counts are refused with the mode's own syntax."""
    settings = [Setting(vector=vec, strength=s, positions=positions) for s in (0.0, 4.0)]
    assert prefix_reusable(settings)
    shared = generate_settings(lm, PROMPTS, settings, reuse_prefix=True, **kw)
    alone = generate_settings(lm, PROMPTS, settings, reuse_prefix=False, **kw)
    for a, b in zip(shared, alone):
        assert_same_generations(a, b)
    for bad in bad_values:
        with pytest.raises(SteeringError, match=message):
            Setting(vector=vec, strength=1.0, positions=bad)


def test_opening_positions_steer_only_the_replys_first_tokens(tiny_qwen):
    lm = tiny_qwen
    vec = random_vector(lm, layers=(0, 1, 2), seed=4)
    kw = {"max_new_tokens": 6, "min_new_tokens": 6}
    with torch.no_grad():
        plain = generate_batch(lm, PROMPTS, **kw).new_ids
        with vec.apply(lm, strength=8.0):
            steered = generate_batch(lm, PROMPTS, **kw).new_ids
        with vec.apply(lm, strength=8.0, positions="opening:2"):
            opening = generate_batch(lm, PROMPTS, **kw).new_ids
        with vec.apply(lm, strength=8.0, positions="opening:2"):
            full = generate_batch(lm, PROMPTS, use_cache=False, **kw).new_ids
    # tokens 0-1 are predicted from the same steered states as under the default positions
    # (the same computation at those columns); from token 2 on the model goes on from its own
    # states, so the reply leaves the steered one
    assert torch.equal(opening[:, :2], steered[:, :2])
    assert not torch.equal(opening[:, :2], plain[:, :2])
    assert not torch.equal(opening[:, 2:], steered[:, 2:])
    assert_same_generations(opening, full)
    _prefix_reuse_and_refusals(lm, vec, "opening:2", ("opening:", "opening:0", "opening:two"),
                               "opening:K", kw)


def test_token_range_steers_only_that_span(tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(1,))
    h, batch = _read(lm, PROMPTS)
    h2, _ = _read(lm, PROMPTS, steer=vec.apply(lm, strength=2.0, positions=range(2, 4)))
    changed = (h2 - h).norm(dim=-1) > 1e-4
    first = batch.attention_mask.float().argmax(1)
    for i in range(len(PROMPTS)):
        cols = changed[i].nonzero().flatten().tolist()
        assert cols == [first[i].item() + 2, first[i].item() + 3]


def test_token_rms_uses_each_positions_own_norm(tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(1,), rms=None)
    u = vec.directions[SITE]
    h, batch = _read(lm, PROMPTS)
    h2, _ = _read(lm, PROMPTS, steer=vec.apply(lm, strength=0.5, unit="token-rms", positions="all"))
    rms = h.pow(2).mean(-1).sqrt()
    real = batch.attention_mask.bool()
    want = h + 0.5 * rms[..., None] * u
    assert torch.allclose(h2[real], want[real], atol=64 * F32 * h.abs().max())


def test_spread_divides_the_strength_over_layers(tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(0, 1, 2), rms=1.0)
    a_full = Setting(vector=vec, strength=6.0).operator(SITE).offset
    a_spread = Setting(vector=vec, strength=6.0, spread=True).operator(SITE).offset
    assert a_full == pytest.approx(6.0) and a_spread == pytest.approx(2.0)
    batch = make_batch(lm, PROMPTS)
    with torch.no_grad():
        with vec.apply(lm, strength=6.0, spread=True, positions="all"):
            spread = lm.logits(batch)
        with (vec * (1 / 3)).apply(lm, strength=6.0, positions="all"):
            thirds = lm.logits(batch)
    assert_close(spread, thirds)  # the same steering as two different float computations


def test_per_row_settings_equal_separate_runs(tiny_llama):
    lm = tiny_llama
    vec, other = random_vector(lm, layers=(0, 1), seed=1), random_vector(lm, layers=(1, 2), seed=2)
    settings = [Setting(vector=None), Setting(vector=vec, strength=2.0),
                Setting(vector=other, strength=-3.0, mode="clamp", positions="all"),
                Setting(vector=vec, mode="ablate")]
    batch_texts = [p for _ in settings for p in PROMPTS]
    with torch.no_grad():
        with lm.hooks(steering_hooks(settings, lm, rows_per_setting=len(PROMPTS))):
            together = lm.logits(batch_texts)
        for i, st in enumerate(settings):
            with lm.hooks(steering_hooks(st, lm)):
                alone = lm.logits(PROMPTS)
            rows = together[i * len(PROMPTS):(i + 1) * len(PROMPTS)]
            width = alone.shape[1]
            assert_close(rows[:, -width:], alone, err_msg=str(i))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generate_settings_matches_one_setting_at_a_time(tiny_dir, family):
    from probe.models import load_model

    lm = load_model(str(tiny_dir / family), device="cpu", dtype="float32")
    vec = random_vector(lm, layers=(0, 1, 2), seed=3)
    settings = [Setting(vector=None)] + [Setting(vector=vec, strength=s) for s in (0.5, 1.0, 2.0)]
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    grid = generate_settings(lm, PROMPTS, settings, batch_size=5, **kw)
    assert len(grid) == 4 and all(len(row) == len(PROMPTS) for row in grid)
    for st, texts in zip(settings, grid):
        with lm.hooks(steering_hooks(st, lm)):
            assert_same_generations(texts, lm.generate(PROMPTS, **kw))
    assert grid[0] != grid[3]  # steering changed something (the test is not vacuous)


def test_kv_cache_and_prefix_reuse_give_the_same_tokens(tiny_qwen):
    lm = tiny_qwen
    vec = random_vector(lm, layers=(0, 1, 2), seed=4)
    settings = [Setting(vector=vec, strength=s) for s in (0.0, 1.0, 3.0)]
    assert prefix_reusable(settings)
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    shared = generate_settings(lm, PROMPTS, settings, reuse_prefix=True, **kw)
    alone = generate_settings(lm, PROMPTS, settings, reuse_prefix=False, **kw)
    recomputed = generate_settings(lm, PROMPTS, settings, reuse_prefix=False, use_cache=False, **kw)
    for a, b, c in zip(shared, alone, recomputed):  # per setting: reuse, plain, no KV cache
        assert_same_generations(a, b)
        assert_same_generations(a, c)
    with vec.apply(lm, strength=3.0), torch.no_grad():
        cached = generate_batch(lm, PROMPTS, **kw).new_ids
        full = generate_batch(lm, PROMPTS, use_cache=False, **kw).new_ids
    assert_same_generations(cached, full)


def test_prefix_reuse_is_refused_when_the_prompt_is_steered(tiny_qwen):
    lm = tiny_qwen
    vec = random_vector(lm)
    settings = [Setting(vector=vec, strength=1.0, positions="all")]
    assert not prefix_reusable(settings)
    with pytest.raises(SteeringError, match="reuse_prefix"):
        generate_settings(lm, PROMPTS, settings, reuse_prefix=True, max_new_tokens=2)
    assert len(generate_settings(lm, PROMPTS, settings, max_new_tokens=2)[0]) == 3


def test_bad_input_gets_clear_errors(tiny_llama, tiny_dir):
    from probe.models import load_model

    lm = tiny_llama
    vec = random_vector(lm)
    with pytest.raises(SteeringError, match="finite"):
        Setting(vector=vec, strength=float("nan"))
    with pytest.raises(SteeringError, match="unknown mode"):
        Setting(vector=vec, mode="multiply")
    with pytest.raises(SteeringError, match="unknown positions"):
        Setting(vector=vec, positions="middle")
    with pytest.raises(SteeringError, match="spread"):
        Setting(vector=vec, mode="clamp", spread=True)
    with pytest.raises(SteeringError, match="no prompts"):
        generate_settings(lm, [], [Setting(vector=vec, strength=1.0)])
    with pytest.raises(SteeringError, match="list"):
        generate_settings(lm, "hello", [Setting(vector=vec, strength=1.0)])
    with pytest.raises(SteeringError, match="NaN/inf"), torch.no_grad():
        with vec.apply(lm, strength=1e38, unit="absolute"):
            lm.generate(PROMPTS, max_new_tokens=2)
    far = SteeringVector({Site("hook_resid_post", 7): torch.ones(64)}, {"d_model": 64})
    with pytest.raises(SteeringError, match="out of range"):
        with far.apply(lm, strength=1.0, unit="absolute"):
            pass
    gpt2 = load_model(str(tiny_dir / "gpt2"), device="cpu", dtype="float32")
    wide = random_vector(gpt2)  # d_model 64 too, but another family
    with pytest.raises(SteeringError, match="architecture"):
        with wide.apply(lm, strength=1.0):
            pass
    narrow = SteeringVector({SITE: torch.ones(32)}, {})
    with pytest.raises(SteeringError, match="32 dims"):
        with narrow.apply(lm, strength=1.0, unit="absolute"):
            pass
    no_rms = random_vector(lm, rms=None)
    with pytest.raises(SteeringError, match="typical RMS"):
        with no_rms.apply(lm, strength=1.0):
            pass


@pytest.mark.slow
def test_smollm2_grid_equals_one_setting_at_a_time():
    """The embedded model: a strength grid in one batch (with prefix reuse) gives the texts that
    steering one setting at a time gives, and the KV cache changes no token."""
    from probe.models import load_model

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    vec = random_vector(lm, layers=range(10, 20), seed=5, rms=None)
    prompts = ["Tell me about your day.", "What is a good name for a cat?"]
    settings = [Setting(vector=vec, strength=s, unit="absolute") for s in (0.0, 4.0, 12.0)]
    kw = dict(max_new_tokens=10, min_new_tokens=10)
    grid = generate_settings(lm, prompts, settings, **kw)
    for st, texts in zip(settings, grid):
        with vec.apply(lm, strength=st.strength, unit="absolute"), torch.no_grad():
            cached = generate_batch(lm, prompts, **kw)
            assert_same_generations(cached.texts, texts)
            if st.strength == 12.0:
                full = generate_batch(lm, prompts, use_cache=False, **kw)
                assert_same_generations(cached.new_ids, full.new_ids)
    assert grid[2] != grid[0]
