"""Live monitoring: per-token readings equal a second forward's, probes give probabilities,
steering shows up in the readings, the trace draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.forward import make_batch
from probe.sites import Site
from steering.inject import Setting
from steering.monitor import TokenReader, monitor
from steering.vector import SteeringError, SteeringVector
from tests.steering.conftest import random_vector
from tests.tolerance import assert_close

PROMPTS = ["We won the final!", "Someone stole my bike."]
SITE = Site("hook_resid_post", 1)


def _probe(lm, site=SITE, k=3, seed=0):
    from probe.saved import SavedProbe

    rng = np.random.default_rng(seed)
    d = lm.arch.d_model(lm.model)
    return SavedProbe(site=site, pooling="last", task="classification",
                      classes=("anger", "joy", "neutral"), coef=rng.normal(size=(k, d)) * 0.1,
                      intercept=rng.normal(size=k), mean=np.zeros(d), scale=np.ones(d))


def test_readings_during_generation_equal_a_second_forward(tiny_qwen):
    lm = tiny_qwen
    vecs = {"joy": random_vector(lm, layers=(1, 2), rms=2.0),
            "anger": random_vector(lm, layers=(1, 2), seed=1, emotion="anger", rms=2.0)}
    probe = _probe(lm)
    trace = monitor(lm, PROMPTS, [probe, vecs], max_new_tokens=5, min_new_tokens=5)
    assert trace.readers == ["probe blocks.1.hook_resid_post (last)", "random directions"]
    alone = monitor(lm, PROMPTS[1:], [probe], max_new_tokens=5, min_new_tokens=5)
    # batched == alone, up to rounding: a near-tie may flip a greedy token, so the readings are
    # compared over the tokens both runs share (the prompt at least)
    a_tok, b_tok = alone.tokens[0], trace.tokens[1]
    same = next((k for k, (x, y) in enumerate(zip(a_tok, b_tok)) if x != y), min(len(a_tok), len(b_tok)))
    assert same >= alone.prompt_lengths[0]
    assert_close(alone.values[alone.readers[0]][0][:same], trace.values[trace.readers[0]][1][:same],
                 equal_nan=True)
    # the prompt part equals one plain forward of the prompts (same positions)
    batch = make_batch(lm, PROMPTS)
    _, cache = lm.run_with_cache(batch, [SITE, Site("hook_resid_post", 2)])
    for i in range(len(PROMPTS)):
        off = batch.input_ids.shape[1] - batch.lengths[i]
        h1 = cache[SITE][i, off:]
        h2 = cache[Site("hook_resid_post", 2)][i, off:]
        p = torch.softmax(h1.double() @ torch.as_tensor(probe.coef).T + torch.as_tensor(probe.intercept), -1)
        got = trace.values[trace.readers[0]][i][: batch.lengths[i]]
        assert_close(got, p.numpy())
        assert np.allclose(got.sum(1), 1.0, atol=1e-6)
        u1, u2 = (vecs["anger"].directions[s] for s in (SITE, Site("hook_resid_post", 2)))
        want = ((h1 @ u1) / 2.0 + (h2 @ u2) / 2.0) / 2  # mean over the two sites, in RMS units
        proj = trace.values[trace.readers[1]][i][: batch.lengths[i], 1]
        assert np.allclose(proj, want.numpy(), atol=1e-4 * float(want.abs().max()))
        # generated tokens were read too (all but the last one, which is never fed back)
        gen_vals = trace.values[trace.readers[0]][i][batch.lengths[i]:]
        assert not np.isnan(gen_vals[:-1]).any() and np.isnan(gen_vals[-1]).all()
    top = trace.top(0)
    assert len(top) == len(trace.tokens[0]) - trace.prompt_lengths[0]
    assert all(lab in ("anger", "joy", "neutral") for _, lab, _ in top)


def test_steering_shows_up_in_the_readings(tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(1,), rms=1.0)
    kw = dict(max_new_tokens=3, min_new_tokens=3)
    plain = monitor(lm, PROMPTS, [vec], **kw)
    steered = monitor(lm, PROMPTS, [vec], steer=Setting(vector=vec, strength=3.0, positions="all"), **kw)
    name = plain.readers[0]
    assert steered.steer["strength"] == 3.0 and steered.steer["unit"] == "rms" and plain.steer is None
    for i in range(len(PROMPTS)):
        n = plain.prompt_lengths[i]
        a, b = plain.values[name][i][:n, 0], steered.values[name][i][:n, 0]
        # read after the steering hook, same site; rounding scales with the readings' size
        assert np.allclose(b - a, 3.0, atol=1e-5 * max(1.0, float(np.abs(a).max())) + 1e-5)


def test_token_reader_on_a_plain_forward_and_errors(tiny_llama, tmp_path):
    lm = tiny_llama
    vec = random_vector(lm, layers=(2,), rms=None)
    batch = make_batch(lm, PROMPTS)
    with TokenReader(lm, vec) as reader, torch.no_grad():
        lm.logits(batch)
    grid = reader.columns(batch.input_ids.shape[1])[reader.readers[0].name]
    _, cache = lm.run_with_cache(batch, [Site("hook_resid_post", 2)])
    want = cache[Site("hook_resid_post", 2)] @ vec.directions[Site("hook_resid_post", 2)]
    assert_close(grid[..., 0], want.numpy())
    with pytest.raises(SteeringError, match="no readers"):
        monitor(lm, PROMPTS, [])
    with pytest.raises(SteeringError, match="cannot read"):
        monitor(lm, PROMPTS, ["a string"])
    wide = SteeringVector({SITE: torch.ones(32)}, {})
    with pytest.raises(SteeringError, match="32 dims"):
        monitor(lm, PROMPTS, [wide], max_new_tokens=2)
    with pytest.raises(SteeringError, match="Setting"):
        monitor(lm, PROMPTS, [vec], steer=vec)
    trace = monitor(lm, PROMPTS, [_probe(lm), vec], max_new_tokens=4)
    from steering.figures import trace_figure

    png = trace_figure(trace, tmp_path / "trace", row=1)
    assert png.stat().st_size > 5000 and (tmp_path / "trace.svg").is_file()
    saved = trace.save(tmp_path / "trace.json")
    import json

    back = json.loads(saved.read_text())
    assert back["readers"] == trace.readers and len(back["values"][trace.readers[0]]) == 2


def test_trace_figures_read_old_and_new_steering_records():
    """Traces written before the one vocabulary named the strength "scale" and its unit
    "strength"; the figure titles read both."""
    from steering.figures import _amount

    assert _amount({"scale": 2.0, "strength": "rms", "mode": "add"}) == "x2 rms"
    assert _amount({"strength": 2.0, "unit": "rms", "factor": None, "mode": "add"}) == "x2 rms"
    assert _amount({"strength": 0.0, "unit": "rms", "factor": 0.5, "mode": "scale"}) == "x0.5"
