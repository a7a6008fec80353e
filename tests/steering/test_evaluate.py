"""steer-eval's protocol: selection logic, statistics, scoring interventions, the report, the CLI.

Tiny models for the plumbing (their replies are noise, so every expression rate is 0 and the
gate rejects them); one SmolLM2 run of ``probe steer-eval`` on a sliver of the quick slice.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from probe.cli import main
from steering.eval.baselines import random_like
from steering.eval.grid import GridConfig, GridPoint, ladder_points
from steering.eval.protocol import EvalConfig, mean_rows, spread
from steering.eval.selection import best_configs, select
from steering.judges.emotion import EMOTIONS, JudgeError
from tests.steering.conftest import random_vector


def _rec(emotion, total, score, ppl, *, method="m", layers=(1, 2), positions="all", with_echoes=None):
    pt = GridPoint(emotion=emotion, method=method, layers=layers, positions=positions,
                   strength=total / len(layers))
    return {"emotion": emotion, **pt.record(), "score": score, "ppl_ratio": ppl,
            "with_echoes": score if with_echoes is None else with_echoes, "point": pt}


def test_spread_keeps_order_and_covers_the_ends():
    assert spread(list(range(40)), 4) == [0, 13, 26, 39]
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2, 3], None) == [1, 2, 3]


def test_best_configs_ranks_by_the_best_fluent_strength():
    recs = pd.DataFrame([
        _rec("fear", 5, 0.2, 1.2), _rec("fear", 10, 0.9, 5.0),            # A: 0.9 not fluent
        _rec("fear", 5, 0.4, 1.5, layers=(3, 4)), _rec("fear", 10, 0.1, 1.9, layers=(3, 4)),
        _rec("fear", 5, 0.0, 9.0, positions="last"), _rec("fear", 10, 0.0, 20.0, positions="last"),
    ])
    best = best_configs(recs, k=3, max_ppl=2.0)["fear"]
    assert [(p.layers, p.total) for p in best] == [((3, 4), 5.0), ((1, 2), 5.0), ((1, 2), 5.0)]
    assert best[2].positions == "last"  # no fluent strength: ranked last, at its weakest strength


def test_select_respects_both_constraints_and_says_why():
    recs = pd.DataFrame([_rec("anger", 4, 0.8, 3.0), _rec("anger", 2, 0.6, 1.5),
                         _rec("anger", 1, 0.6, 1.1), _rec("anger", 0.5, 0.2, 1.0)])
    drops = {2.0: 0.30, 1.0: 0.05, 0.5: 0.0}
    seen = []

    def drop(pt):
        seen.append(pt.total)
        return drops[pt.total]

    sel = select(recs, max_ppl=2.0, max_drop=0.1, checks=3, capability_drop=drop)["anger"]
    # 4 is not fluent; 1 and 2 tie on score: the weaker is tried first and meets the drop bound
    assert sel.point.total == 1.0 and sel.constraints_met and seen == [1.0]
    sel = select(recs, max_ppl=2.0, max_drop=0.01, checks=2, capability_drop=drop)["anger"]
    assert not sel.constraints_met and "no tune point met" in sel.note
    assert [c[1] for c in sel.checked] == [0.05, 0.30]


def test_ladder_refines_around_the_best_strength():
    best = GridPoint(emotion="fear", method="m", layers=(0, 1, 2, 3), positions="all", strength=2.5)
    totals = sorted(p.total for p in ladder_points(best, (5.0, 10.0, 20.0), steps=1))
    assert totals == pytest.approx([5.0, 10.0 / 2 ** 0.5, 10.0, 10.0 * 2 ** 0.5, 20.0], rel=1e-3)


def test_mean_rows_average_emotions_and_pair_the_prompts():
    rows = []
    for p in range(6):
        for e in ("anger", "fear"):
            rows.append({"condition": "steered", "prompt_id": f"p{p}", "target": e,
                         "label:j": e if p < 3 else "neutral", "passed": True, "echo": False,
                         "perplexity": 2.0, "relevance": 0.5})
            rows.append({"condition": "prompt-designed", "prompt_id": f"p{p}", "target": e,
                         "label:j": e if (p < 3 and e == "anger") else "neutral",
                         "passed": p != 0, "echo": False, "perplexity": 1.0, "relevance": 0.5})
    means, comp = mean_rows(pd.DataFrame(rows), reference=1.0, n_boot=300, seed=0)
    by = {r["condition"]: r for r in means}
    assert by["steered"]["value"] == pytest.approx(0.5)
    assert by["prompt-designed"]["value"] == pytest.approx(2 / 12)  # p0 failed the gate
    assert by["steered"]["ppl_ratio"] == 2.0
    c = [c for c in comp if c["versus"] == "prompt-designed"][0]
    assert c["difference"] == pytest.approx(0.5 - 2 / 12) and c["ci_low"] <= c["difference"] <= c["ci_high"]


def test_config_errors_are_clear():
    with pytest.raises(JudgeError, match="unknown or no emotions"):
        EvalConfig(emotions=("joy",))
    with pytest.raises(ValueError, match="empty or negative"):
        GridConfig(bands=((5, 2),))


def test_random_direction_keeps_norm_and_rms(tiny_llama):
    vec = random_vector(tiny_llama, layers=(0, 1), rms=3.0)
    rnd = random_like(vec, seed=1)
    for site in vec.sites:
        assert float(rnd[site].norm()) == pytest.approx(float(vec[site].norm()), rel=1e-5)
        assert rnd.rms(site) == vec.rms(site)
        assert abs(float(rnd[site] @ vec[site])) < 0.9
    assert rnd.meta["method"] == "random"


# ---------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny_setup(tiny_llama, shared_data):
    from steering.eval.scorer import Scorer, load_judges

    vecs = {"context-agnostic": {e: random_vector(tiny_llama, layers=(0, 1), seed=i, emotion=e)
                                 for i, e in enumerate(EMOTIONS)}}
    judges = load_judges(lexicon=str(shared_data / "lexicons"))
    return vecs, judges, Scorer(tiny_llama, judges, batch_size=16)


def test_score_intervention_hook_dict_callable_and_setting_agree(tiny_llama, tiny_setup, one_thread):
    from steering.eval.grid import Decoding
    from steering.eval.prompts import load_prompts
    from steering.eval.scorer import score_intervention
    from steering.inject import Setting, steering_hooks

    vecs, _, scorer = tiny_setup
    scorer.decoding = Decoding(max_new_tokens=6)
    vec = vecs["context-agnostic"]["fear"]
    prompts = load_prompts("test")[:3]
    setting = Setting(vector=vec, strength=2.0, positions="all")
    got = {}
    for name, iv in {"setting": setting, "hooks": steering_hooks(setting, tiny_llama),
                     "callable": lambda: vec.apply(tiny_llama, strength=2.0, positions="all")}.items():
        rows, frame = score_intervention(tiny_llama, iv, emotion="fear", prompts=prompts,
                                         scorer=scorer, n_boot=50, condition=name, return_frame=True)
        got[name] = list(frame["reply"])
        assert [r["judge"] for r in rows] == ["classifier", "lexicon"]
        assert {r["condition"] for r in rows} == {name} and rows[0]["n"] == 3
        assert math.isfinite(rows[0]["ppl_ratio"]) and 0 <= rows[0]["value"] <= rows[0]["judge_only"] + 1e-12
    plain = score_intervention(tiny_llama, None, emotion="fear", prompts=prompts, scorer=scorer,
                               n_boot=50, return_frame=True)[1]
    assert got["setting"] == got["hooks"] == got["callable"] != list(plain["reply"])
    with pytest.raises(JudgeError, match="context manager"):
        score_intervention(tiny_llama, lambda: 3, emotion="fear", prompts=prompts, scorer=scorer)
    with pytest.raises(JudgeError, match="unknown emotion"):
        score_intervention(tiny_llama, None, emotion="joy", prompts=prompts, scorer=scorer)


def test_tiny_run_writes_a_complete_report(tiny_llama, tiny_setup, tmp_path, one_thread):
    from steering.eval.grid import Decoding
    from steering.eval.protocol import run_evaluation
    from steering.eval.report import write_report

    vecs, judges, _ = tiny_setup
    config = EvalConfig(emotions=("anger", "fear"), grid=GridConfig(
        methods=("context-agnostic",), bands=((0, 1),), positions=("last-prompt+generated", "all"),
        totals=(1.0, 4.0), coarse_prompts=2, ladder_configs=1, ladder_steps=0),
        decoding=Decoding(max_new_tokens=5), ladder_prompts=2, test_prompts=3, capability_items=6,
        capability_checks=1, n_boot=50, batch_size=16)
    result = run_evaluation(tiny_llama, config, vectors=vecs, judges=judges)
    t = result.table
    conds = {"unsteered", "steered", "random", "prompt-system", "prompt-designed",
             "prompt-designed+steered"}
    for e in ("anger", "fear", "mean"):
        part = t[t.emotion == e]
        assert set(part.condition) == conds and set(part.judge) == {"classifier", "lexicon"}
    steered = t[(t.condition == "steered") & (t.emotion != "mean")]
    assert steered["capability"].notna().all() and steered["method"].eq("context-agnostic").all()
    assert (t[t.condition == "random"]["capability"].notna().sum()) == 4  # 2 emotions x 2 judges
    assert set(result.tune.stage) == {"coarse", "ladder"} and len(result.test) == 3 * (2 + 5 * 2)
    assert np.all((t.ci_low <= t.value + 1e-12) & (t.value <= t.ci_high + 1e-12))
    out = write_report(result, tmp_path / "run", run={"command": "test"})
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dose_response.png", "dose_response.svg", "examples.html", "pareto.png",
                     "pareto.svg", "replies.csv", "results.csv", "results.json", "run.json",
                     "tune.csv"]
    res = json.loads((out / "results.json").read_text())
    assert set(res["selected"]) == {"anger", "fear"} and res["capability"]["unsteered"]["n"] == 6
    assert pd.read_csv(out / "results.csv").shape[0] == len(t)
    assert len(pd.read_csv(out / "replies.csv")) == len(result.test)
    html = (out / "examples.html").read_text()
    assert "prompt-designed+steered" in html and result.test["reply"].iloc[0][:20].replace(
        "&", "&amp;").replace("<", "&lt;") in html
    with pytest.raises(FileExistsError, match="not empty"):
        write_report(result, out, run={})


def test_cli_errors_are_clear(capsys, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["steer-eval", "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["steer-eval", "--emotions", "joy", "--out", str(tmp_path / "new")]) == 2
    assert "unknown or no emotions" in capsys.readouterr().err


@pytest.mark.slow
def test_real_model_quick_slice(capsys, tmp_path, shared_data, real_cache):
    """``probe steer-eval --quick`` on SmolLM2, cut to one emotion, one strength, 2 + 2 prompts;
    directions from the session's 84-row store (caching all 448 texts would dominate the test)."""
    from tests.conftest import stores_in

    store, = stores_in(real_cache)
    out = tmp_path / "quick"
    code = main(["steer-eval", "--quick", "--store", str(store), "--emotions", "happiness", "--ladder-prompts", "2",
                 "--test-prompts", "2", "--max-new-tokens", "16", "--capability-items", "6",
                 "--strengths", "10",
                 "--threads", "1", "--lexicon", str(shared_data / "lexicons"), "--quiet",
                 "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "held-out expression" in cap.out and "prompt-designed+steered" in cap.out
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["emotions"] == ["happiness"] and run["model"]["model"] == "smollm2-135m"
    res = pd.read_csv(out / "results.csv")
    assert len(res) == 2 * 6 * 2  # (happiness, mean) x 6 conditions x 2 judges
    sel = json.loads((out / "results.json").read_text())["selected"]["happiness"]
    assert sel["method"] == "context-agnostic" and sel["layers"] == "10-19"


def test_an_arm_with_hooks_generates_under_them_and_removes_them(tiny_llama, one_thread):
    import torch

    from steering.eval.grid import Arm, Decoding, generate_arms
    from steering.inject import Setting, steering_hooks

    vec = random_vector(tiny_llama, layers=(0, 1), seed=3, emotion="fear")
    setting = Setting(vector=vec, strength=4.0, positions="all")
    prompts = ["How was your day?", "Tell me about trains.", "What is on your mind?"]
    batch = tiny_llama.batch(prompts)
    before = tiny_llama.model(**batch.inputs).logits
    arms = [Arm(condition="unsteered", emotion=None),
            Arm(condition="setting", emotion="fear", setting=setting),
            Arm(condition="hook dict", emotion="fear", hooks=steering_hooks(setting, tiny_llama)),
            Arm(condition="callable", emotion="fear",
                hooks=lambda: vec.apply(tiny_llama, strength=4.0, positions="all"))]
    texts = generate_arms(tiny_llama, prompts, arms, decoding=Decoding(max_new_tokens=6))
    assert texts[1] == texts[2] == texts[3] != texts[0]
    after = tiny_llama.model(**batch.inputs).logits
    assert torch.equal(before, after)   # every hook removed
    with pytest.raises(JudgeError, match="context manager"):
        generate_arms(tiny_llama, prompts, [Arm(condition="x", emotion="fear", hooks=lambda: 3)],
                      decoding=Decoding(max_new_tokens=2))
