"""The classifier and lexicon judges, their agreement, and gated expression scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steering.judges.build import (
    JudgeConfig, _vectorizers, build_judge, content_hash, fit_judge, load_source)
from steering.judges.emotion import (
    ARTIFACT_DIR, EMOTIONS, LABELS, ClassifierJudge, JudgeError, LexiconJudge, agreement,
    cohen_kappa, expressed, expression_scores)

SMALL = JudgeConfig(word_max_features=3000, char_max_features=3000, max_iter=500)


@pytest.fixture(scope="module")
def go_slice(shared_data):
    data = load_source("goemotions", shared_data)
    return data.train.head(1500), data.test.head(300)


def test_shipped_artifact_is_small_safe_and_complete(judge):
    files = sorted(p.name for p in ARTIFACT_DIR.iterdir() if p.is_file())
    assert files == ["emotion_judge.json", "emotion_judge.safetensors"]
    assert sum(p.stat().st_size for p in ARTIFACT_DIR.rglob("*") if p.is_file()) < 5e6
    vectors = sorted(p.name for p in (ARTIFACT_DIR / "vectors").iterdir())  # shipped steering vectors
    assert all(n.endswith((".json", ".safetensors")) for n in vectors)
    assert {n.rsplit(".", 1)[0] for n in vectors if n.endswith(".json")} == \
        {n.rsplit(".", 1)[0] for n in vectors if n.endswith(".safetensors")}
    assert judge.classes == LABELS
    assert judge.meta["training"]["sources"] == ["goemotions"]
    assert set(judge.meta["heldout"]) == {"goemotions", "dair", "sev-replies"}
    assert len(judge.words) > 5000 and {"the", "table", "because"} <= judge.words


def test_recorded_heldout_accuracy_reproduces(judge, shared_data):
    test = load_source("sev-replies", shared_data).test
    rec = judge.meta["heldout"]["sev-replies"]
    assert content_hash(test) == rec["data_sha256"] and len(test) == rec["n"]
    acc = np.mean(np.asarray(judge.predict(list(test["text"]))) == test["y"].to_numpy())
    assert abs(acc - rec["accuracy"]) <= 1 / rec["n"]
    assert rec["accuracy"] > 1 / 6 + 0.2  # well above chance on replies it never saw


def test_meld_source_maps_joy_and_keeps_dev_out(shared_data):
    from steering.judges.emotion import EMOTIONS

    data = load_source("meld", shared_data)
    assert (len(data.train), len(data.test)) == (9989, 2610)          # dev (1,109) is left out
    assert set(data.train["y"]) == set(EMOTIONS) | {"neutral"}       # all six, joy -> happiness


def test_artifact_inference_equals_sklearn(go_slice, one_thread):
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    train, test = go_slice
    meta, tensors = fit_judge(train, SMALL)
    judge = ClassifierJudge(classes=tuple(meta["classes"]), meta=meta, tensors=tensors)
    vecs = [v for v, _ in _vectorizers(SMALL).values()]
    x = sp.hstack([v.fit_transform(train["text"]) for v in vecs], format="csr")
    clf = LogisticRegression(C=SMALL.C, class_weight="balanced", max_iter=500).fit(x, train["y"])
    xt = sp.hstack([v.transform(test["text"]) for v in vecs], format="csr")
    np.testing.assert_allclose(judge.features(list(test["text"])).toarray(), xt.toarray(),
                               atol=1e-6)
    ref = clf.predict_proba(xt)[:, [list(clf.classes_).index(c) for c in judge.classes]]
    np.testing.assert_allclose(judge.predict_proba(list(test["text"])), ref, atol=1e-5)


def test_rebuild_is_deterministic(go_slice, shared_data, tmp_path, one_thread):
    cfg = JudgeConfig(word_max_features=3000, char_max_features=3000, max_iter=500, limit=800)
    metas = [build_judge(["goemotions"], [], data_root=shared_data, out=tmp_path / f"j{i}",
                         cfg=cfg, log=lambda *_: None) for i in range(2)]
    a, b = (ClassifierJudge.load(tmp_path / f"j{i}") for i in range(2))
    assert a.meta["blocks"] == b.meta["blocks"] and a.classes == b.classes
    for key in a.tensors:
        np.testing.assert_allclose(a.tensors[key], b.tensors[key], rtol=0, atol=1e-6)
    assert metas[0]["training"]["data_sha256"] == metas[1]["training"]["data_sha256"]
    assert metas[0]["training"]["rows"] == {"goemotions": 800}


def test_load_errors(tmp_path):
    with pytest.raises(JudgeError, match="build_judge.py"):
        ClassifierJudge.load(tmp_path / "missing")
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(JudgeError, match="not an emoprobe judge"):
        ClassifierJudge.load(tmp_path / "x")
    with pytest.raises(JudgeError, match="list of texts"):
        ClassifierJudge.load().predict("one string")


def test_classifier_on_plain_emotional_sentences(judge):
    texts = {"happiness": "I am so happy today, this is wonderful!",
             "sadness": "I miss her so much, I cried all night.",
             "anger": "This makes me so angry!",
             "neutral": "The meeting is at noon in room four."}
    assert judge.predict(list(texts.values())) == list(texts)


def test_lexicon_judge(lexicon):
    got = lexicon.predict(["The meeting is at noon.", "What a horrible, disgusting mess.",
                           "I was crying with grief.", ""])
    assert got[0] == "neutral" and got[3] == "neutral"
    assert got[2] == "sadness"
    s = lexicon.scores(["grieving"])  # 'grieving' is found through its stem 'grieve'
    assert s.shape == (1, len(EMOTIONS)) and s.sum() > 0


def test_lexicon_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("EMOPROBE_SHARED_DATA", raising=False)
    monkeypatch.delenv("EMOPROBE_DATA", raising=False)
    with pytest.raises(JudgeError, match="saifmohammad.com"):
        LexiconJudge.load()
    bad = tmp_path / "NRC-Emotion-Lexicon-Wordlevel-v0.92.txt"
    bad.write_text("word\tanger\n")
    with pytest.raises(JudgeError, match=r":1: expected"):
        LexiconJudge.load(tmp_path)


def test_cohen_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.choice(LABELS, 200).tolist()
    b = [x if rng.random() < 0.6 else rng.choice(LABELS) for x in a]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa(["anger"] * 5, ["anger"] * 5))
    pairs = agreement({"x": a, "y": b, "z": a})
    assert set(pairs) == {("x", "y"), ("x", "z"), ("y", "z")} and pairs[("x", "z")] == 1.0
    with pytest.raises(JudgeError, match="same texts"):
        cohen_kappa(a, b[:3])


def test_expression_needs_the_gate():
    labels = ["anger", "anger", "fear", "anger"]
    targets = ["anger", "anger", "anger", "anger"]
    passed = [True, False, True, True]
    assert expressed(labels, targets, passed).tolist() == [True, False, False, True]
    (s,) = expression_scores({"j": labels}, targets, passed, ["p1", "p2", "p3", "p4"], n_boot=500)
    assert s.accuracy == 0.5 and s.judge_only == 0.75 and s.gate_pass == 0.75 and s.n == 4
    assert s.ci_low <= s.accuracy <= s.ci_high
    with pytest.raises(JudgeError, match="unknown target"):
        expressed(["anger"], ["rage"], [True])
    with pytest.raises(JudgeError, match="same replies"):
        expressed(["anger"], ["anger", "fear"], [True])


def test_bootstrap_resamples_prompts_not_replies():
    # Two prompts, each with 50 identical outcomes: the CI must span what resampling 2 prompts
    # gives (0, 0.5 or 1), not the tight interval of 100 independent replies.
    labels = ["anger"] * 50 + ["fear"] * 50
    prompts = ["a"] * 50 + ["b"] * 50
    (s,) = expression_scores({"j": labels}, ["anger"] * 100, [True] * 100, prompts, n_boot=2000)
    assert s.ci_low == 0.0 and s.ci_high == 1.0
