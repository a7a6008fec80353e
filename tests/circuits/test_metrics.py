"""Metrics compute what they say, and refuse directions that do not fit the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.metrics import (
    MetricError,
    as_direction,
    direction,
    label_logprob,
    logit_diff,
    parse_metric_spec,
    probe_logit,
)
from probe.forward import run_with_cache
from probe.sites import Site
from tests.circuits.conftest import TEXTS, direction_for


def test_direction_metric_is_the_last_token_projection(llama):
    batch = llama.batch(TEXTS[:3], padding_side="right")
    v = direction_for(llama)
    m = direction(v, layer=1, lm=llama)
    _, cache = run_with_cache(llama, batch, m.sites)
    x = cache[Site("hook_resid_post", 1)]
    want = torch.stack([x[i, n - 1] for i, n in enumerate(batch.lengths)]) @ (v / v.norm()).float()
    torch.testing.assert_close(m(cache, batch), want)
    assert m.layer == 1 and m.name == "direction@L1"


def test_logit_metrics_read_the_last_token(llama):
    batch = llama.batch(TEXTS[:2])
    logits = llama.logits(batch)
    tok = llama.tokenizer
    a, b = tok.encode("I", add_special_tokens=False)[0], tok.encode("The", add_special_tokens=False)[0]
    d = logit_diff(llama, ["I"], ["The"])
    torch.testing.assert_close(d(logits, batch), logits[:, -1, a] - logits[:, -1, b])
    lp = label_logprob(llama, "I")
    torch.testing.assert_close(lp(logits, batch), logits[:, -1].log_softmax(-1)[:, a])
    assert d.layer is None and d.sites == ()
    with pytest.raises(MetricError, match="share a first token"):
        logit_diff(llama, ["I"], ["I"])


def test_probe_logit_matches_the_probe(llama):
    from probe.probes import LogisticProbe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 64))
    y = np.repeat(["joy", "anger", "fear"], 20)
    X[y == "joy", 0] += 3
    p = LogisticProbe(C=1.0).fit(X, y)
    m = probe_logit(p, "joy", layer=1)
    batch = llama.batch(TEXTS[:2])
    _, cache = run_with_cache(llama, batch, m.sites)
    x = cache[m.sites[0]][:, -1].double().numpy()
    want = x @ p.coef_[list(p.classes_).index("joy")] + p.intercept_[list(p.classes_).index("joy")]
    np.testing.assert_allclose(m(cache, batch).numpy(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(MetricError, match="no class"):
        probe_logit(p, "calm", layer=1)


class _Vector:
    """A SteeringVector-like value from another model."""

    def __init__(self, d, model):
        self.directions = {Site("hook_resid_post", 1): d}
        self.provenance = {"model_id": model}


def test_directions_from_another_model_are_refused(llama):
    d = direction_for(llama)
    with pytest.raises(MetricError, match="another model"):
        direction(torch.randn(576), layer=1, lm=llama)
    with pytest.raises(MetricError, match="another model"):
        direction(_Vector(d, "meta-llama/Meta-Llama-3-8B"), layer=1, lm=llama)
    ok = direction(_Vector(d, llama.provenance()["model_id"]), layer=1, lm=llama)
    assert ok.sites == (Site("hook_resid_post", 1),)
    with pytest.raises(MetricError, match="no direction at"):
        direction(_Vector(d, llama.provenance()["model_id"]), layer=2, lm=llama)
    with pytest.raises(MetricError, match="zero"):
        as_direction(torch.zeros(64), d_model=64)
    with pytest.raises(MetricError, match="out of range"):
        direction(d, layer=7, lm=llama)


def test_steering_vectors_are_checked_against_the_model(llama, tiny_dir):
    from probe.models import load_model
    from steering.vector import SteeringVector

    meta = {k: llama.provenance()[k] for k in ("model", "weight_fingerprint", "architecture",
                                                "d_model", "n_layers")}
    vec = SteeringVector({Site("hook_resid_post", 1): torch.randn(64)}, meta)
    m = direction(vec, layer=1, lm=llama)
    assert m.sites == (Site("hook_resid_post", 1),)
    other = load_model(str(tiny_dir / "mistral"), device="cpu", dtype="float32")
    with pytest.raises(MetricError, match="does not fit this model"):
        direction(vec, layer=1, lm=other)


def test_metric_specs_parse_or_explain():
    assert parse_metric_spec("direction:happiness,sadness@L24") == ("direction", ["happiness", "sadness"], 24)
    assert parse_metric_spec("logit-diff:happy,glad-sad") == ("logit-diff", [["happy", "glad"], ["sad"]], None)
    assert parse_metric_spec("logprob:happy") == ("logprob", ["happy"], None)
    for bad, msg in (("direction:happy", "needs a layer"), ("logprob:x@L3", "drop @L3"),
                     ("cosine:x", "cannot parse"), ("logit-diff:a-b-c", "POSITIVE-NEGATIVE")):
        with pytest.raises(MetricError, match=msg):
            parse_metric_spec(bad)


def test_says_is_the_log_odds_of_the_emotion_words_at_the_reply_start(llama):
    from circuits.metrics import EMOTION_WORDS, emotion_tokens, says
    lm = llama
    toks = emotion_tokens(lm)
    assert set(toks) == set(EMOTION_WORDS)
    for e, ts in toks.items():  # no token counts for two emotions
        assert not set(ts) & {t for o, us in toks.items() if o != e for t in us}
    m = says(lm, "sadness")
    batch = lm.batch(TEXTS[:3])
    logits = lm.logits(batch)
    lp = logits[torch.arange(3), batch.last].float().log_softmax(-1)
    other = sorted({t for e, ts in toks.items() if e != "sadness" for t in ts})
    want = lp[:, toks["sadness"]].logsumexp(-1) - lp[:, other].logsumexp(-1)
    got = m(logits, batch)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert m.name == "says:sadness" and m.sites == ()
    with pytest.raises(MetricError, match="no emotion words for 'joy'"):
        says(lm, "joy")
    assert parse_metric_spec("says:happiness,fear") == ("says", ["happiness", "fear"], None)
    with pytest.raises(MetricError, match="no emotion words"):
        parse_metric_spec("says:joy")
