"""Steering flips: zero-shot answers under steering, flip rates with CIs, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from probe.cli import main
from probe.sites import Site
from steering.flips.cli import parse_bands, parse_strengths
from steering.flips.measure import (
    RANDOM,
    Asker,
    FlipsConfig,
    flip_table,
    measure,
    random_like,
    split_groups,
)
from steering.vector import SteeringError, SteeringVector

CLASSES = ["anger", "fear", "joy"]


def test_flip_table_counts_what_it_says():
    # 6 items in 3 groups; gold anger, fear, joy, anger, fear, joy; unsteered all correct
    gold = np.array([0, 1, 2, 0, 1, 2])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    rows = [{"direction": "none", "band": "", "strength": 0.0, "variant": "sum", "item": i,
             "answer": g} for i, g in enumerate(gold)]
    steered = [2, 2, 2, 0, 2, 2]  # joy-steering flips 3 of the 4 non-joy items to joy
    rows += [{"direction": "joy", "band": "0-1", "strength": 4.0, "variant": "sum", "item": i,
              "answer": a} for i, a in enumerate(steered)]
    t = flip_table(pd.DataFrame(rows), gold, groups, CLASSES, n_boot=200)
    v = t.set_index("metric")["value"]
    n = t.set_index("metric")["n"]
    assert v["flip_to"] == pytest.approx(3 / 4) and n["flip_to"] == 4
    assert v["flip_away"] == pytest.approx(3 / 6) and n["flip_away"] == 6
    assert v["share_shift"] == pytest.approx(5 / 6 - 2 / 6)
    assert v["share"] == pytest.approx(5 / 6) and v["share_unsteered"] == pytest.approx(2 / 6)
    assert v["accuracy"] == pytest.approx(3 / 6) and v["accuracy_shift"] == pytest.approx(-0.5)
    lo, hi = t.set_index("metric").loc["flip_to", ["ci_low", "ci_high"]]
    assert 0 <= lo <= 0.75 <= hi <= 1


def test_split_and_random_control():
    groups = np.repeat([f"g{i}" for i in range(10)], 7)
    held = split_groups(groups, 0.5, seed=1)
    assert held.sum() == 35 and len(set(groups[held]) & set(groups[~held])) == 0
    assert (split_groups(groups, 0.5, seed=1) == held).all()
    with pytest.raises(SteeringError, match="at least 2 scenarios"):
        split_groups(["a", "a"], 0.5)
    vec = SteeringVector({Site("hook_resid_post", 1): torch.ones(8)}, {"rms": {}})
    r = random_like(vec, seed=0)
    assert r.emotion == RANDOM and float(r[Site("hook_resid_post", 1)].norm()) == pytest.approx(1)


def test_a_direction_that_must_flip_does(tiny_llama, one_thread):
    """A push along the unembedding of 'joy''s first candidate token at the last layer makes
    every answer joy: flip_to 1 for joy; zero strength changes nothing (same computation)."""
    lm = tiny_llama
    asker = Asker(lm, ["I lost my keys.", "The sun is out.", "A dog barked.", "It rained."],
                  CLASSES, "options", batch_size=2)
    last = lm.n_layers - 1
    k = CLASSES.index("joy")
    w = lm.model.get_output_embeddings().weight[asker.cands[k][0]].detach().float()
    w = w / lm.model.model.norm.weight.detach().float()  # undo the final norm's gain
    joy = SteeringVector({Site("hook_resid_post", last): w / w.norm()},
                         {"rms": {f"blocks.{last}.hook_resid_post": 1.0}})
    cfg = FlipsConfig(strengths=(0.0, 1000.0), bands=((last, last),), n_boot=50)
    answers = measure(asker, {"joy": joy}, cfg)
    base = answers[answers["direction"] == "none"]
    zero = answers[(answers["direction"] == "joy") & (answers["strength"] == 0.0)]
    assert (base["answer"].to_numpy() == zero["answer"].to_numpy()).all()
    big = answers[(answers["direction"] == "joy") & (answers["strength"] == 1000.0)
                  & (answers["variant"] == "sum")]
    assert (big["answer"] == k).all()
    gold = np.array([0, 1, 0, 1])
    t = flip_table(answers, gold, np.array(["a", "b", "c", "d"]), CLASSES, n_boot=50)
    row = t[(t["variant"] == "sum") & (t["strength"] == 1000.0) & (t["metric"] == "flip_to")]
    eligible = (base[base["variant"] == "sum"]["answer"].to_numpy() != k).sum()
    assert row["n"].iloc[0] == eligible and (eligible == 0 or row["value"].iloc[0] == 1.0)


def test_parsers_refuse_bad_input():
    assert parse_bands("10-19, 20-29,5") == ((10, 19), (20, 29), (5, 5))
    assert parse_strengths("1,2.5") == (1.0, 2.5)
    with pytest.raises(SteeringError, match="FIRST-LAST"):
        parse_bands("19-10")
    with pytest.raises(SteeringError, match="numbers"):
        parse_strengths("big")


def test_cli_end_to_end(capsys, tmp_path, tiny_dir, one_thread):
    out = tmp_path / "flips"
    code = main(["steer-flips", "--model", str(tiny_dir / "llama"), "--limit", "28",
                 "--bands", "0-1", "--strengths", "4", "--emotions", "anger,happiness",
                 "--dataset", "emotion-scenarios", "--bootstrap", "50", "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "steering flips" in captured.out
    assert {"results.csv", "answers.csv", "run.json", "flips.png", "flips.svg"} <= \
        {p.name for p in out.iterdir()}
    t = pd.read_csv(out / "results.csv")
    assert set(t["direction"]) == {"anger", "happiness", RANDOM}
    assert set(t["metric"]) == {"flip_to", "flip_away", "share", "share_unsteered",
                                "share_shift", "accuracy", "accuracy_shift"}
    assert "unsteered (sum): accuracy" in captured.out
    run = json.loads((out / "run.json").read_text())
    assert run["n_items"] + run["n_direction_rows"] == 28
    assert main(["steer-flips", "--model", str(tiny_dir / "llama"), "--bands", "0-9",
                 "--limit", "28", "--quiet", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "outside the model's layers" in capsys.readouterr().err
    assert main(["steer-flips", "--model", str(tiny_dir / "llama"), "--bands", "0-1",
                 "--emotions", "joy", "--limit", "28", "--quiet", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "bad")]) == 2
    assert "unknown emotion(s) ['joy']" in capsys.readouterr().err
