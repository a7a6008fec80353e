"""`probe circuits` as a newcomer meets it: help, a whole run on a tiny model, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from probe.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path_factory.getbasetemp() / "circuits-cache"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Twelve scenarios of emotion-scenarios (84 rows) as a user JSONL file: a quick dataset."""
    from probe.data import load_dataset

    f = load_dataset("emotion-scenarios").frame
    keep = f[f["group"].isin(sorted(set(f["group"]))[:12])]
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    keep[["id", "text", "emotion", "group"]].to_json(path, orient="records", lines=True)
    return ["--dataset", str(path), "--label-column", "emotion", "--group-column", "group"]


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["circuits", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "direction:happiness,sadness@L24" in out and "--validate [N|all]" in out
    assert "--max-error" in out and "says:EMOTION" in out
    assert "--baseline {mean,pairs,zero}" in out


def test_a_whole_run_on_a_tiny_model(capsys, tiny_dir, tmp_path, cache, small):
    out = tmp_path / "run"
    code, text, err = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small,
                           "--metric", "direction:sadness@L2", "--prompts", "4",
                           "--validate", "6", "--validate-prompts", "2", "--circuit-prompts", "4",
                           "--influence-prompts", "2", "--out", str(out), "--quiet")
    assert code == 0, err
    print(text)
    # the estimator that ranks the circuit (ig against the mean) is the one validated
    assert "validation of ig against activation patching" in text and "circuit:" in text
    assert "held-out normalised error |M_k - M| / |M_0 - M| on 4 prompts" in text
    assert "random circuits of the same composition" in text and "split-half" in text
    assert "under each ablation: mean" in text and "resample" in text
    assert "neurons: top 6 + 6 random (stratified by layer) of 384 (subsampled" in text
    run = json.loads((out / "run.json").read_text())
    assert set(run["emotions"]) == {"sadness"}
    assert not set(run["dataset"]["train_groups"]) & set(run["dataset"]["test_groups"])
    v = run["emotions"]["sadness"]["validation"]
    assert v["estimator"] == "ig" and v["baseline"] == "mean" and v["ranks_the_circuit"]
    ranker, other = v["runs"]
    assert ranker["types"] == ["heads", "neurons"] and ranker["estimator"] == "ig"
    assert other["types"] == ["sublayers"] and other["estimator"] == "atp"
    assert not other["ranks_the_circuit"]
    assert v["sampled"]["heads"] == "all" and other["sampled"]["sublayers"] == "all"
    assert v["components"] == 12 + 12 + 6 and {r["type"] for r in v["table"]} == {"heads", "neurons", "sublayers"}
    assert all(r["spearman_low"] <= r["spearman"] + 1e-9 for r in v["table"])
    c = run["emotions"]["sadness"]["circuit"]
    assert set(c["faithfulness"]["ablations"]) == {"mean", "zero", "resample"}
    assert c["faithfulness"]["random"]["n"] == 20 or c["size"] in (0, c["n_candidates"])
    df = pd.read_csv(out / "results.csv")
    assert {"atp", "patch:mean", "spearman", "recall@20", "faithfulness", "completeness",
            "influence"} <= set(df["measure"])
    assert (df["ci_low"].dropna() <= df["value"][df["ci_low"].notna()] + 1e-12).all()
    c = json.loads((out / "circuit_sadness.json").read_text())
    assert c["format"] == "emoprobe.circuit/1" and c["size"] == len(c["components"])
    for stem in ("heads_sadness", "scatter_sadness", "scatter_sadness_sublayers",
                 "influence_sadness", "faithfulness",
                 "circuit_sadness", "neurons_sadness"):
        assert (out / f"{stem}.png").exists() and (out / f"{stem}.svg").exists()


@pytest.mark.parametrize("args, message", [
    (["--metric", "direction:joy@L2"], "no direction for 'joy'"),
    (["--metric", "direction:neutral@L2"], "the neutral class has none"),
    (["--metric", "direction:happiness@L9"], "out of range"),
    (["--metric", "direction:happiness"], "needs a layer"),
    (["--components", "heads,edges"], "unknown component type"),
    (["--metric", "logprob:happy"], "need --label"),
    (["--prompts", "0"], "--prompts must be >= 1"),
    (["--metric", "says:joy"], "no emotion words for 'joy'"),
    (["--max-error", "0"], "--max-error must be > 0"),
    (["--test-fraction", "1"], "--test-fraction must be > 0 and < 1"),
    (["--random-circuits", "-1"], "--random-circuits must be >= 0"),
    (["--search-rounds", "-2"], "--search-rounds must be >= 0"),
    (["--circuit-types", "heads,bananas"], "unknown component type"),
])
def test_bad_input_is_explained_before_the_model_loads(capsys, tiny_dir, tmp_path, cache, small,
                                                       monkeypatch, args, message):
    import probe.cli

    def no_model(_args):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(probe.cli, "_load_model", no_model)
    circuit = [] if "--circuit-types" in args else ["--no-circuit"]
    code, _, err = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small, *circuit,
                        "--influence-prompts", "0", "--prompts", "2", *args,
                        "--out", str(tmp_path / "r"), "--quiet")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_failed_run_leaves_no_empty_run_folder(capsys, tiny_dir, tmp_path, cache, small,
                                                 monkeypatch):
    import circuits.pipeline
    from circuits.metrics import MetricError

    def fails(lm, dataset, cfg, out, **kw):
        (out / "directions").mkdir(parents=True)
        raise MetricError("found only after the model loaded")

    monkeypatch.setattr(circuits.pipeline, "run_circuits", fails)
    out = tmp_path / "r"
    code, _, err = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small,
                        "--metric", "direction:sadness@L2", "--out", str(out), "--quiet")
    assert code == 2 and "found only after the model loaded" in err
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("a user's file")
    code, _, _ = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small,
                      "--metric", "direction:sadness@L2", "--out", str(kept), "--quiet")
    assert code == 2 and (kept / "mine.txt").read_text() == "a user's file"


def test_bad_validate_value(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["circuits", "--validate", "some"])
    assert exc.value.code == 2 and "number or 'all'" in capsys.readouterr().err


def test_edges_are_attributed_and_checked_by_edge_patching(capsys, tiny_dir, tmp_path, cache, small):
    out = tmp_path / "e"
    code, text, err = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small,
                           "--metric", "direction:sadness@L2", "--components", "heads",
                           "--no-circuit", "--prompts", "4", "--validate-prompts", "4",
                           "--influence-prompts", "0", "--edges", "5", "--out", str(out), "--quiet")
    assert code == 0, err
    assert "validation of hybrid (EAP-sublayer, the edges of 2 nodes patched)" in text  # the default
    assert "edge patching" in text
    edges = pd.read_csv(out / "edges_sadness.csv")
    assert edges["patched"].notna().sum() == 10 and edges["patched"].iloc[:5].notna().all()
    e = json.loads((out / "run.json").read_text())["emotions"]["sadness"]["edges"]
    assert e["patched"] == 10 and e["table"][0]["type"] == "edges"
    assert (out / "edges_sadness.png").exists() and e["estimator"] == "hybrid"
    assert e["compute"]["attribution"] == e["compute"]["eap"] and e["compute"]["attribution"]["forward_passes"] > 0
    code, text, _ = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small,
                         "--metric", "direction:sadness@L2", "--components", "heads", "--no-circuit",
                         "--prompts", "4", "--validate-prompts", "4", "--influence-prompts", "0",
                         "--edges", "5", "--edge-estimator", "eap", "--out", str(tmp_path / "f"),
                         "--quiet")
    assert code == 0 and "validation of EAP against activation patching" in text
    code, text, _ = _run(capsys, "circuits", "--model", str(tiny_dir / "llama"), *small,
                         "--metric", "direction:sadness@L2", "--components", "heads", "--no-circuit",
                         "--prompts", "4", "--validate-prompts", "4", "--influence-prompts", "0",
                         "--edges", "5", "--edge-estimator", "hybrid", "--exact-nodes", "1",
                         "--out", str(tmp_path / "h"), "--quiet")
    assert code == 0 and "validation of hybrid (EAP-sublayer, the edges of 1 node patched)" in text
    assert "hold patched values (exact by construction)" in text
    h = pd.read_csv(tmp_path / "h" / "edges_sadness.csv")
    node = json.loads((tmp_path / "h" / "run.json").read_text())["emotions"]["sadness"]["edges"]["exact_nodes"]
    mine = h["upstream"] == node[0]
    assert len(node) == 1 and mine.any() and (h.loc[~mine, "estimate"] == h.loc[~mine, "value"]).all()
    both = h[mine & h["patched"].notna()]   # patched twice (estimator, validation): the same numbers
    assert np.allclose(both["value"], both["patched"], rtol=1e-6, atol=1e-9)
    code, _, err = _run(capsys, "circuits", "--metric", "logprob:happy", "--label", "happiness",
                        "--edges", "5", "--out", str(tmp_path / "x"))
    assert code == 2 and "--edges needs a direction metric" in err
