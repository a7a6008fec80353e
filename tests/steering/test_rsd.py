"""Rejection-sampled teacher replies (the ``rsd-*`` objectives): what is kept, how it is sampled."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from steering.vector import SteeringError

PROMPTS = ["How do plants get water?", "Describe a garden gate.", "I am at the bus stop."]


def _fake_judging(monkeypatch, verdicts, seen):
    """Replace the judging with ``verdicts[i] = (label, passed, echo, relevance)`` per sampled row."""
    import steering.eval.score as S

    def judge_replies(lm, prompts, replies, targets, *, judges, words, instructions, relevance, **kw):
        seen.update(prompts=list(prompts), replies=list(replies), instructions=list(instructions),
                    relevance=relevance, judges=dict(judges))
        label, passed, echo, rel = zip(*verdicts[:len(replies)])
        return pd.DataFrame({"prompt": prompts, "reply": replies, "target": targets,
                             "label:teacher": label, "passed": passed, "echo": echo,
                             "perplexity": 1.0, "relevance": rel})

    monkeypatch.setattr(S, "judge_replies", judge_replies)


def test_sampled_teacher_keeps_the_judged_emotion_on_topic_replies(tiny_qwen, tmp_path, monkeypatch):
    import steering.inject as I
    import steering.train.data as D
    from steering.eval.baselines import prompt_arms

    calls = []
    real = I.generate_settings

    def spy(lm, prompts, settings, **kw):
        calls.append((list(prompts), kw))
        out = real(lm, prompts, settings, **kw)
        # distinct texts per row, so the de-duplication does not hide what was kept
        return [[f"{t} reply {i}" for i, t in enumerate(out[0])]]

    monkeypatch.setattr(I, "generate_settings", spy)
    # 3 prompts x 3 samples; rows 0-2 prompt 0, 3-5 prompt 1, 6-8 prompt 2
    verdicts = [("anger", True, False, 0.5), ("anger", True, False, 0.9), ("anger", True, False, 0.2),
                ("joy", True, False, 0.9), ("anger", False, False, 0.9), ("anger", True, True, 0.9),
                ("anger", True, False, -0.1), ("anger", True, False, 0.3), ("neutral", True, False, 1.0)]
    seen: dict = {}
    _fake_judging(monkeypatch, verdicts, seen)
    judge = object()
    out = D.sampled_teacher(tiny_qwen, PROMPTS, "anger", judge=judge, samples=3, keep=2,
                            max_new_tokens=3, temperature=0.7, top_p=0.9, cache=tmp_path)
    designed = next(a for a in prompt_arms("anger") if a.condition == "prompt-designed")
    (rows, kw), = calls
    assert rows == [p + designed.user_suffix for p in PROMPTS for _ in range(3)]
    assert kw["system_prompt"] == designed.system_prompt and kw["do_sample"] is True
    assert (kw["temperature"], kw["top_p"], kw["max_new_tokens"]) == (0.7, 0.9, 3)
    assert seen["prompts"] == [p for p in PROMPTS for _ in range(3)]       # judged on the plain prompt
    assert seen["relevance"] and set(seen["instructions"]) == {designed.instruction}
    assert seen["judges"] == {"teacher": judge}
    # prompt 0: all three accepted, the two most relevant kept (rows 1 then 0); prompt 1: none
    # (wrong label, failed gate, echo); prompt 2: row 7 only (row 6 is off-topic, row 8 neutral)
    r = seen["replies"]
    assert out.prompts == [PROMPTS[0], PROMPTS[0], PROMPTS[2]]
    assert out.replies == [r[1], r[0], r[7]]
    assert out.meta["accepted"] == [3, 0, 1] and out.meta["prompts_kept"] == 2
    # each kept reply's negative: its prompt's most relevant fluent sample of another label
    # (prompt 0 has none; prompt 2's is the neutral row 8, not the off-topic anger row 6)
    assert out.negatives == ["", "", r[8]]
    assert out.meta["sampler"] == {"prompted": True}
    assert math.isclose(out.meta["rate"], 4 / 9)
    assert (out.system_prompt, out.user_suffix) == (designed.system_prompt, designed.user_suffix)
    # cached: the same call does not sample again
    monkeypatch.setattr(I, "generate_settings", lambda *a, **k: pytest.fail("sampled again"))
    again = D.sampled_teacher(tiny_qwen, PROMPTS, "anger", judge=judge, samples=3, keep=2,
                              max_new_tokens=3, temperature=0.7, top_p=0.9, cache=tmp_path)
    assert again == out


def test_min_confidence_also_asks_the_judges_probability_of_the_emotion(tiny_qwen, tmp_path, monkeypatch):
    import numpy as np

    import steering.inject as I
    import steering.train.data as D

    real = I.generate_settings
    monkeypatch.setattr(I, "generate_settings", lambda lm, prompts, settings, **kw: [
        [f"{t} reply {i}" for i, t in enumerate(real(lm, prompts, settings, **kw)[0])]])
    # prompt 0: three arg-max anger rows at p 0.6, 0.3, 0.5; prompts 1-2: none
    verdicts = [("anger", True, False, 0.5), ("anger", True, False, 0.9), ("anger", True, False, 0.2),
                *[("joy", True, False, 0.1)] * 6]
    seen: dict = {}
    _fake_judging(monkeypatch, verdicts, seen)

    class Judge:
        classes = ("anger", "joy")

        def predict_proba(self, texts):
            assert list(texts) == seen["replies"]
            p = np.array([0.6, 0.3, 0.5] + [0.1] * 6)
            return np.stack([p, 1 - p], axis=1)

    run = {"samples": 3, "keep": 3, "max_new_tokens": 3, "cache": tmp_path}
    out = D.sampled_teacher(tiny_qwen, PROMPTS, "anger", judge=Judge(), min_confidence=0.5, **run)
    r = seen["replies"]
    assert out.replies == [r[0], r[2]]                 # row 1 (p 0.3 < 0.5) is out, though the most relevant
    assert out.meta["accepted"] == [2, 0, 0] and "p(emotion) >= 0.5" in out.meta["rule"]
    # the threshold is in the cache key: without it the same call samples again and keeps row 1
    plain = D.sampled_teacher(tiny_qwen, PROMPTS, "anger", judge=Judge(), **run)
    assert plain.replies == [r[1], r[0], r[2]] and "p(emotion)" not in plain.meta["rule"]
    for bad, judge, emotion in ((0.0, Judge(), "anger"), (1.0, Judge(), "anger"), (0.5, object(), "anger"),
                                (0.5, Judge(), "fear")):    # a judge that cannot say fear
        with pytest.raises(SteeringError, match="min_confidence must be in"):
            D.sampled_teacher(tiny_qwen, PROMPTS, emotion, judge=judge, min_confidence=bad, **run)


def test_sampled_teacher_refuses_when_nothing_is_kept_and_bad_settings(tiny_qwen, monkeypatch):
    import steering.train.data as D

    _fake_judging(monkeypatch, [("joy", True, False, 1.0)] * 6, {})
    with pytest.raises(SteeringError, match="no sampled anger reply was accepted"):
        D.sampled_teacher(tiny_qwen, PROMPTS[:2], "anger", judge=object(), samples=3, max_new_tokens=2)
    for bad in ({"samples": 0}, {"keep": 0}, {"temperature": 0.0}, {"top_p": 1.5}):
        with pytest.raises(SteeringError, match="sampled_teacher needs"):
            D.sampled_teacher(tiny_qwen, PROMPTS, "anger", judge=object(), **bad)


def test_sampling_is_seeded(tiny_qwen, monkeypatch):
    import steering.train.data as D

    seen: dict = {}
    _fake_judging(monkeypatch, [("anger", True, False, 1.0)] * 12, seen)
    a = D.sampled_teacher(tiny_qwen, PROMPTS[:2], "anger", judge=object(), samples=3, keep=3,
                          max_new_tokens=6, seed=3)
    first = list(seen["replies"])
    D.sampled_teacher(tiny_qwen, PROMPTS[:2], "anger", judge=object(), samples=3, keep=3,
                      max_new_tokens=6, seed=3)
    assert seen["replies"] == first and a.replies
    D.sampled_teacher(tiny_qwen, PROMPTS[:2], "anger", judge=object(), samples=3, keep=3,
                      max_new_tokens=6, seed=4)
    assert seen["replies"] != first   # another seed samples other tokens


def test_rsd_data_maps_each_name_to_its_objective():
    from steering.train.data import RSD_OBJECTIVES, SampledSet, rsd_data

    s = SampledSet(prompts=["p0", "p0", "p1"], replies=["a", "b", "c"], emotion="anger",
                   system_prompt="Be angry.", user_suffix=" (angry)", meta={})
    data, obj = rsd_data("rsd-lm", s)
    assert obj.name == "lm" and data.prompts == ["p0", "p0", "p1"] and data.replies == ["a", "b", "c"]
    assert data.system_prompt is None                    # learnt from the plain prompt
    data, obj = rsd_data("rsd-distill", s, plausible=0.2)
    assert obj.name == "distill" and (obj.amplify, obj.plausible) == (0.0, 0.2)
    assert (data.system_prompt, data.user_suffix) == ("Be angry.", " (angry)")   # the teacher
    assert set(RSD_OBJECTIVES) == {"rsd-lm", "rsd-distill", "rsd-pref", "rsd-pref-kl"}
    for name in ("rsd-pref", "rsd-pref-kl"):
        with pytest.raises(SteeringError, match=f"{name} needs rejected samples"):
            rsd_data(name, s)   # a set cached before negatives were kept
    s = SampledSet(prompts=["p0", "p0", "p1"], replies=["a", "b", "c"], negatives=["n0", "n0", ""],
                   emotion="anger", system_prompt="Be angry.", user_suffix=" (angry)", meta={})
    data, obj = rsd_data("rsd-pref", s, kl_weight=0.7)   # only the rows with a rejected sample
    assert (obj.name, obj.lm_weight, obj.kl_weight) == ("preference", 1.0, 0.0)   # no KL term here
    kl_data, kl_obj = rsd_data("rsd-pref-kl", s, kl_weight=0.7)   # the same rows, plus the KL term
    assert (kl_obj.lm_weight, kl_obj.kl_weight) == (1.0, 0.7) and kl_data.replies == data.replies
    assert data.prompts == ["p0", "p0"] and data.replies == ["a", "b"] and data.negatives == ["n0", "n0"]
    assert data.system_prompt is None
    with pytest.raises(SteeringError, match="unknown objective"):
        rsd_data("rsd-x", s)
    for name in RSD_OBJECTIVES:   # a skipped opening reaches the data of both objectives
        assert rsd_data(name, s, skip_opening=3)[0].skip_reply_tokens == 3
    with pytest.raises(SteeringError, match="skip_opening must be >= 0"):
        rsd_data("rsd-lm", s, skip_opening=-1)
    for name in RSD_OBJECTIVES:   # the opening cap applies before either objective's data
        data = rsd_data(name, SampledSet(prompts=["p0", "p1", "p2"], replies=["Oh no, not a", "Oh no, not b", "Well c"],
                                         negatives=["n0", "n1", "n2"], emotion="fear",
                                         system_prompt="Be afraid.", user_suffix="",
                                         meta={}), max_opening=1)[0]
        assert data.prompts == ["p0", "p2"] and data.replies == ["Oh no, not a", "Well c"]


def test_on_policy_sampling_steers_the_plain_prompt(tiny_qwen, tmp_path, monkeypatch):
    """``steer=..., prompted=False``: the sampler is the steered model given the plain prompt (no
    designed system prompt, no suffix), and the cache tells vectors and strengths apart."""
    import steering.inject as I
    import steering.train.data as D
    from steering.train.objectives import PairData, objective
    from steering.train.trainer import TrainConfig, train_vector

    vec, _ = train_vector(tiny_qwen, PairData(PROMPTS, ["Oh no.", "Oh dear.", "Oh my."]), objective("lm"),
                          TrainConfig(layers=(0, 1), steps=2, batch_size=3))
    calls = []
    real = I.generate_settings

    def spy(lm, prompts, settings, **kw):
        calls.append((list(prompts), list(settings), kw))
        return real(lm, prompts, settings, **kw)

    monkeypatch.setattr(I, "generate_settings", spy)
    _fake_judging(monkeypatch, [("anger", True, False, 1.0), ("joy", True, False, 0.5)] * 3, {})
    run = {"judge": object(), "samples": 2, "keep": 1, "max_new_tokens": 3, "cache": tmp_path,
           "prompted": False}
    out = D.sampled_teacher(tiny_qwen, PROMPTS, "anger", steer=I.Setting(vector=vec, strength=1.5), **run)
    (rows, settings, kw), = calls
    assert rows == [p for p in PROMPTS for _ in range(2)] and kw["system_prompt"] is None
    assert settings[0].vector is vec and settings[0].strength == 1.5
    assert out.meta["sampler"]["prompted"] is False and out.meta["sampler"]["strength"] == 1.5
    assert out.meta["sampler"]["digest"] == D.vector_digest(vec) != D.vector_digest(vec * 2)
    assert len(out.replies) == 3 and all(n.strip() for n in out.negatives)   # one joy row each
    D.sampled_teacher(tiny_qwen, PROMPTS, "anger", steer=I.Setting(vector=vec, strength=1.5), **run)
    assert len(calls) == 1                                     # cached
    D.sampled_teacher(tiny_qwen, PROMPTS, "anger", steer=I.Setting(vector=vec * 2, strength=1.5), **run)
    D.sampled_teacher(tiny_qwen, PROMPTS, "anger", steer=I.Setting(vector=vec, strength=1.0), **run)
    assert len(calls) == 3                                     # another vector, another strength
    with pytest.raises(SteeringError, match="prompted=False samples the plain model"):
        D.sampled_teacher(tiny_qwen, PROMPTS, "anger", judge=object(), prompted=False)


def test_cap_openings_spreads_the_cap_over_prompts_by_rank():
    from steering.train.data import SampledSet, cap_openings

    # p0..p3 kept two replies each, most relevant first; five open "I'm afraid of", in any case
    # and punctuation
    replies = ["I'm afraid of the dark.", "Oh no, a storm!",
               "(I'm afraid of spiders.)", "i'm AFRAID OF heights",
               "Well, that is scary.", "I'm afraid of the sea.",
               "I'm afraid of clocks.", "Yikes, what a noise."]
    s = SampledSet(prompts=[f"p{i // 2}" for i in range(8)], replies=replies, emotion="fear",
                   system_prompt="Be afraid.", user_suffix="", meta={"rate": 0.5})
    out = cap_openings(s, 2)
    assert out.negatives == []   # a set without negatives stays without
    # first ranks first: p0's, p1's and p3's first replies are "I'm afraid of": p0 and p1 take
    # the two places, p3's first and every second one is dropped
    assert out.replies == ["I'm afraid of the dark.", "Oh no, a storm!", "(I'm afraid of spiders.)",
                           "Well, that is scary.", "Yikes, what a noise."]
    assert out.prompts == ["p0", "p0", "p1", "p2", "p3"]
    assert out.meta["before_cap"] == 8 and out.meta["max_per_opening"] == 2 and out.meta["rate"] == 0.5
    assert cap_openings(s, 0) is s
    assert len(cap_openings(s, 1, words=1).replies) == 4   # one each of "i'm", "oh", "well", "yikes"
    with pytest.raises(SteeringError, match="max_per_opening >= 0"):
        cap_openings(s, -1)


def test_steer_train_rsd_samples_keeps_and_trains(capsys, tiny_dir, tmp_path, monkeypatch):
    """``probe steer-train --objective rsd-lm``: --judge is required (and refused elsewhere); the
    replies are sampled on the training prompts, kept by the judge, and a vector is trained."""
    from probe.cli import main
    from steering.judges.emotion import ARTIFACT_DIR, ARTIFACT_NAME
    from steering.train import cli as train_cli
    from steering.train.data import RSD_OBJECTIVES
    from steering.vector import SteeringVector

    def run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    assert train_cli.RSD_OBJECTIVES == RSD_OBJECTIVES
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    model, judge = str(tiny_dir / "llama"), ARTIFACT_DIR / ARTIFACT_NAME
    base = ["steer-train", "--model", model, "--emotion", "fear", "--layers", "0,1", "--steps", "2"]
    for bad, msg in ((["--objective", "rsd-lm"], "take --judge PATH"), (["--judge", judge], "take no --judge"),
                     (["--objective", "rsd-lm", "--judge", judge, "--samples", "0"], "--samples and --keep"),
                     (["--objective", "rsd-lm", "--judge", judge, "--max-opening", "-1"], "--max-opening and"),
                     (["--max-opening", "2"], "--max-opening is for the rsd-* objectives"),
                     (["--min-confidence", "0.5"], "--min-confidence is for the rsd-* objectives"),
                     (["--objective", "rsd-lm", "--judge", judge, "--min-confidence", "1"], "lies in (0, 1)"),
                     (["--objective", "rsd-lm", "--judge", tmp_path / "none"], "judge artifact incomplete")):
        code, _, err = run(*base, "--out", tmp_path / "x", *bad)
        assert code == 2 and msg in err, err
    # a random tiny model's samples fail the fluency gate: nothing is kept, and it says so
    code, _, err = run(*base, "--objective", "rsd-lm", "--judge", judge, "--prompts", "3",
                       "--samples", "2", "--keep", "1", "--out", tmp_path / "x")
    assert code == 2 and "no sampled fear reply was accepted (6 sampled)" in err, err
    # with every sample accepted, the vector trains on them
    _fake_judging(monkeypatch, [("fear", True, False, 1.0)] * 6, {})
    code, _, err = run(*base, "--objective", "rsd-lm", "--judge", judge, "--prompts", "3",
                          "--samples", "2", "--keep", "1", "--out", tmp_path / "fear-rsd")
    assert code == 0, err
    vec = SteeringVector.load(tmp_path / "fear-rsd")
    assert vec.meta["method"] == "trained-rsd-lm" and vec.meta["train"]["rows"] == 3   # 1 per prompt
    # --max-opening and --skip-opening reach the training data
    import steering.train.data as D
    seen = {}
    rsd = D.rsd_data
    monkeypatch.setattr(D, "rsd_data", lambda *a, **k: seen.update(cap=k["max_opening"], skip=k["skip_opening"])
                        or rsd(*a, **k))
    sampler = D.sampled_teacher   # --min-confidence reaches the sampler (the threshold is tested above)
    monkeypatch.setattr(D, "sampled_teacher", lambda *a, **k: seen.update(p=k["min_confidence"])
                        or sampler(*a, **{**k, "min_confidence": None}))
    code, _, err = run(*base, "--objective", "rsd-distill", "--judge", judge, "--prompts", "3",
                       "--samples", "2", "--keep", "1", "--max-opening", "5", "--skip-opening", "2",
                       "--min-confidence", "0.4", "--out", tmp_path / "fear-rsd-capped")
    assert code == 0, err
    assert seen == {"cap": 5, "skip": 2, "p": 0.4}
    drawn = SteeringVector.load(tmp_path / "fear-rsd-capped").meta["sampled"]   # provenance, in the JSON
    assert drawn["sampler"] == {"prompted": True} and drawn["judge_sources"] == ["goemotions"]
    assert (drawn["samples"], drawn["keep"], drawn["rate"]) == (2, 1, 1.0) and "judge label" in drawn["rule"]
    monkeypatch.setattr(D, "sampled_teacher", sampler)
    # --sample-vector / --sample-strength: the steered model samples its own replies to the plain
    # prompt, and the vector trained goes on from it
    for bad, msg in ((["--sample-vector", tmp_path / "fear-rsd"], "go together"),
                     (["--objective", "lm", "--judge", judge, "--sample-vector", tmp_path / "fear-rsd",
                       "--sample-strength", "1"], "take no --judge"),
                     (["--objective", "rsd-lm", "--judge", judge, "--sample-vector", tmp_path / "fear-rsd",
                       "--sample-strength", "0"], "--sample-strength must be > 0"),
                     (["--objective", "rsd-lm", "--judge", judge, "--sample-vector", tmp_path / "fear-rsd",
                       "--sample-strength", "1", "--layers", "0,2"], "has no direction at layers [2]")):
        code, _, err = run(*base, "--out", tmp_path / "x", *bad)
        assert code == 2 and msg in err, err
    import steering.inject as I
    calls = []
    real = I.generate_settings
    monkeypatch.setattr(I, "generate_settings", lambda lm, p, st, **kw: calls.append((st, kw))
                        or real(lm, p, st, **kw))
    _fake_judging(monkeypatch, [("fear", True, False, 1.0), ("joy", True, False, 1.0)] * 3, {})
    code, _, err = run(*base, "--objective", "rsd-pref", "--judge", judge, "--prompts", "3",
                       "--samples", "2", "--keep", "1", "--sample-vector", tmp_path / "fear-rsd",
                       "--sample-strength", "1.5", "--out", tmp_path / "fear-self")
    assert code == 0, err
    (settings, kw), = calls
    assert settings[0].strength == 1.5 and kw["system_prompt"] is None
    self_vec = SteeringVector.load(tmp_path / "fear-self")
    assert self_vec.meta["method"] == "trained-rsd-pref" and self_vec.meta["train"]["init_strength"] is None
    assert self_vec.meta["train"]["rows"] == 3
    # rsd-pref-kl: the same data, with --kl-weight x KL(steered || unsteered) in the loss it trains
    code, _, err = run(*base, "--objective", "rsd-pref-kl", "--judge", judge, "--prompts", "3",
                       "--samples", "2", "--keep", "1", "--sample-vector", tmp_path / "fear-rsd",
                       "--sample-strength", "1.5", "--kl-weight", "-1", "--out", tmp_path / "fear-kl")
    assert code == 2 and "--kl-weight >= 0 (got -1.0)" in err, err
    code, _, err = run(*base, "--objective", "rsd-pref-kl", "--judge", judge, "--prompts", "3",
                       "--samples", "2", "--keep", "1", "--sample-vector", tmp_path / "fear-rsd",
                       "--sample-strength", "1.5", "--kl-weight", "0.5", "--out", tmp_path / "fear-kl")
    assert code == 0, err
    kl_vec = SteeringVector.load(tmp_path / "fear-kl")
    assert kl_vec.meta["method"] == "trained-rsd-pref-kl" and kl_vec.meta["train"]["rows"] == 3
    assert "kl_weight=0.5" in kl_vec.meta["train"]["objective"]
    assert "kl_weight=0.0" in self_vec.meta["train"]["objective"]
