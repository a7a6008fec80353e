"""`probe behave` as a newcomer meets it: help, one run of everything, clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from probe.cli import main
from tests.tiny import CORPUS


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("behave") / "toy.csv"
    labels = ["sadness", "joy", "neutral", "anger"]
    rows = [{"text": f"{CORPUS[i % 6]} Day {i}.", "label": labels[i % 4], "group": f"g{i // 2}"}
            for i in range(60)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["behave", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "probe behave --dataset ../shared/data/emobank --target A" in out
    assert "--experiments" in out and "--templates" in out and "--stimuli" in out


def test_everything_end_to_end(capsys, tmp_path, toy_csv, tiny_dir, one_thread):
    out = tmp_path / "run"
    code, stdout, err = _run(
        capsys, "behave", "--model", tiny_dir / "llama", "--dataset", toy_csv, "--group-column",
        "group", "--experiments", "all", "--out", out, "--cache-dir", tmp_path / "cache",
        "--bootstrap", "50", "--max-new-tokens", "3", "--personas", "cheerful,gloomy",
        "--persona-templates", "letters", "--stimuli", "EP02,NP01", "--max-distance", "6",
        "--quiet")
    assert code == 0, err
    assert "zero-shot vs probe" in stdout and "system prompts" in stdout
    assert "EmotionPrompt" in stdout and "persistence: P(true emotion)" in stdout
    files = {p.name for p in out.iterdir()}
    for stem in ("probe_vs_behaviour_last", "probe_vs_behaviour_content-mean", "personas_last",
                 "emotionprompt", "persistence"):
        assert {f"{stem}.png", f"{stem}.svg"} <= files
    assert {"results.csv", "results.json", "run.json", "items_recognition.csv",
            "items_personas.csv", "items_emotionprompt.csv", "items_persistence.csv"} <= files
    results = pd.read_csv(out / "results.csv")
    assert set(results["experiment"]) == {"recognition", "compare", "personas",
                                          "persona-answers", "emotionprompt",
                                          "emotionprompt-shift", "persistence"}
    assert {"value", "ci_low", "ci_high"} <= set(results.columns)
    assert len(json.loads((out / "results.json").read_text())) == len(results)
    run = json.loads((out / "run.json").read_text())
    assert run["command"].startswith("probe behave --model") and run["n_rows"] == 60
    assert run["provenance"]["n_layers"] == 3 and "environment" in run
    items = pd.read_csv(out / "items_recognition.csv")
    assert items["id"].str.startswith("row-").all()  # the store's sample ids
    # the default templates, recorded by name
    assert run["recognition"]["config"]["templates"] == ["completion", "options"]
    assert set(items["template"]) == {"completion", "options"}


@pytest.mark.parametrize("extra, message", [
    (["--templates", "one-word,nope"], "unknown template 'nope'"),
    (["--experiments", "recognition,dance"], "unknown experiment 'dance'"),
    (["--experiments", "personas", "--personas", "grumpy"], "unknown persona 'grumpy'"),
    (["--experiments", "emotionprompt", "--stimuli", "EP42"], "unknown stimulus 'EP42'"),
    (["--experiments", "personas", "--no-chat-template"], "no system prompt"),
    (["--folds", "40"], "fewer than n_splits=40"),
])
def test_errors_say_what_to_fix(capsys, tmp_path, toy_csv, tiny_dir, extra, message):
    out = tmp_path / "run"
    code, _, err = _run(capsys, "behave", "--model", tiny_dir / "llama", "--dataset", toy_csv,
                        "--out", out, "--cache-dir", tmp_path / "cache", "--quiet", *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_multilabel_and_rating_targets_are_refused_early(capsys, tmp_path, tiny_dir):
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": ["joy", "fear"][: 1 + i % 2]}) + "\n"
                            for i, t in enumerate(CORPUS)))
    code, _, err = _run(capsys, "behave", "--model", tiny_dir / "llama", "--dataset", path,
                        "--out", tmp_path / "r", "--quiet")
    assert code == 2 and "multi-label" in err
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame({"text": CORPUS, "label": [1.0 + i % 5 for i in range(len(CORPUS))]}).to_csv(
        ratings, index=False)
    code, _, err = _run(capsys, "behave", "--model", tiny_dir / "llama", "--dataset", ratings,
                        "--experiments", "personas", "--out", tmp_path / "r", "--quiet")
    assert code == 2 and "classification target" in err


def test_fold_fallback_reduce_runs_with_fewer_folds(capsys, tmp_path, toy_csv, tiny_dir, one_thread):
    out = tmp_path / "run"
    code, _, err = _run(capsys, "behave", "--model", tiny_dir / "llama", "--dataset", toy_csv,
                        "--group-column", "group", "--folds", "40", "--fold-fallback", "reduce",
                        "--templates", "one-word", "--bootstrap", "20", "--out", out,
                        "--cache-dir", tmp_path / "cache", "--quiet")
    assert code == 0, err
    results = pd.read_csv(out / "results.csv")
    assert 1 < results["n_folds"].dropna().max() < 40
