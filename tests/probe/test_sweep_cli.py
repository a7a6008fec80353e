"""`probe sweep` as a user meets it: the task it chose, held-out data, saved probes."""

from __future__ import annotations

import json

import pytest

from probe.cli import main
from probe.results import read_results


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _csv(path, rows, header="text,label,story"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _stories(n=48, offset=0, label=lambda i: ["joy", "sadness", "anger"][i % 3]):
    words = {"joy": "sunny", "sadness": "grey", "anger": "loud"}
    nouns = ["day", "dog", "rain", "plan", "trip", "meal", "song"]
    return [(f"a {words[label(i)]} story number {i + offset} about the {nouns[i % 7]}", label(i),
             f"s{(i + offset) // 3}") for i in range(n)]


def _sweep(capsys, tiny_dir, tmp_path, *extra):
    return _run(capsys, "sweep", "--model", str(tiny_dir / "llama"), "--folds", "3",
                "--bootstrap", "30", "--quiet", "--cache-dir", str(tmp_path / "cache"),
                "--group-column", "story", *extra)


def test_whole_number_labels_are_refused_before_any_work(capsys, tiny_dir, tmp_path):
    data = _csv(tmp_path / "ids.csv", [(t, i % 3, g) for i, (t, _, g) in enumerate(_stories())])
    code, out, err = _sweep(capsys, tiny_dir, tmp_path, "--dataset", str(data),
                            "--out", str(tmp_path / "run"))
    assert code == 2 and "whole numbers (0, 1, 2)" in err and "--task classification" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    code, out, err = _sweep(capsys, tiny_dir, tmp_path, "--dataset", str(data), "--task",
                            "classification", "--out", str(tmp_path / "run"), "--no-save-probes")
    assert code == 0, err
    assert "target 'label': classification, 3 classes (0, 1, 2); --task classification" in out
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["task"] == "classification" and meta["task_reason"] == "--task classification"


def test_eval_dataset_reports_transfer_next_to_cv(capsys, tiny_dir, tmp_path):
    train = _csv(tmp_path / "train.csv", _stories())
    held = _csv(tmp_path / "held.csv", _stories(offset=100))
    run = tmp_path / "run"
    code, out, err = _sweep(capsys, tiny_dir, tmp_path, "--dataset", str(train), "--eval-dataset",
                            str(held), "--out", str(run), "--max-iter", "500")
    assert code == 0, err
    assert "held out on held: n=48" in out and "held-out peak" in out
    assert "held-out lexical" in out and out.count("held-out store: ") == 1
    df, meta = read_results(run)
    assert set(df.evaluation) == {"cv", "heldout"}
    assert meta["heldout"]["dataset"] == "held" and meta["heldout"]["n"] == 48
    assert meta["eval"]["max_iter"] == 500
    assert (run / "layerwise_last.png").stat().st_size > 10_000
    # the saved probe (fitted on all training rows) is the held-out probe of the table
    from probe.saved import load_probe
    from probe.store import open_store

    store = open_store(meta["heldout"]["store"])
    for layer in (0, 2):
        X = store["hook_resid_post"].sel(layer=layer, pooling="last").values.astype("float32")
        saved = load_probe(run, "hook_resid_post", layer, "last")
        accuracy = (saved.predict(X) == store["label"].values.astype(str)).mean()
        table = df[(df.evaluation == "heldout") & (df.estimator == "probe") & (df.layer == layer)
                   & (df.metric == "accuracy") & (df.pooling == "last")].value.iloc[0]
        assert accuracy == pytest.approx(table, abs=1.5 / 48)  # at most one borderline row


def test_heldout_options_are_checked_before_any_work(capsys, tiny_dir, tmp_path):
    train = _csv(tmp_path / "train.csv", _stories())
    two = _csv(tmp_path / "two.csv", _stories(label=lambda i: ["joy", "sadness"][i % 2]))
    for extra, message in (
        (["--eval-dataset", str(two)], "['anger'] only in the training rows"),
        (["--eval-dataset", str(train), "--split-eval", "train"], "cannot be combined"),
        (["--split-eval", "train:test"], "no training rows"),
    ):
        code, _, err = _sweep(capsys, tiny_dir, tmp_path, "--dataset", str(train), *extra,
                              "--out", str(tmp_path / "run"))
        assert code == 2 and message in err, err
        assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_split_column_without_cv(capsys, tiny_dir, tmp_path):
    rows = [(t, lab, g, "train" if i < 36 else "test") for i, (t, lab, g) in enumerate(_stories())]
    data = _csv(tmp_path / "split.csv", rows, header="text,label,story,split")
    run = tmp_path / "run"
    code, out, err = _sweep(capsys, tiny_dir, tmp_path, "--dataset", str(data), "--split-eval",
                            "train:test", "--out", str(run), "--no-save-probes")
    assert code == 0, err
    assert "trained on 36, held out 12 (--split-eval train:test)" in out
    df, meta = read_results(run)
    assert set(df.evaluation) == {"heldout"} and meta["heldout"]["split_eval"] == "train:test"


@pytest.mark.usefixtures("one_thread")
def test_saved_probes_reproduce_the_fit(capsys, tiny_dir, tmp_path):
    import numpy as np

    from probe.probes import LogisticProbe
    from probe.saved import load_probe
    from probe.store import open_store

    data = _csv(tmp_path / "d.csv", _stories())
    run = tmp_path / "run"
    code, out, err = _sweep(capsys, tiny_dir, tmp_path, "--dataset", str(data), "--out", str(run))
    assert code == 0, err
    assert "probes/" in out
    meta = json.loads((run / "probes" / "hook_resid_post.json").read_text())
    assert meta["layers"] == [0, 1, 2] and meta["classes"] == ["anger", "joy", "sadness"]
    assert meta["poolings"] == ["last", "content-mean"] and meta["n_train"] == 48
    store = open_store(json.loads((run / "run.json").read_text())["store"])
    X = store["hook_resid_post"].sel(layer=2, pooling="last").values.astype("float32")
    y = store["label"].values.astype(str)
    saved = load_probe(run, "blocks.2.hook_resid_post", pooling="last")
    ref = LogisticProbe(C=0.05, tol=1e-8, max_iter=5000).fit(X, y)
    np.testing.assert_allclose(saved.predict_proba(X), ref.predict_proba(X), atol=2e-3)
    assert (saved.predict(X) == ref.predict(X)).mean() > 0.97
    for k, label in enumerate(saved.classes):
        d = saved.direction(label)
        assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-6)
        assert d @ ref.direction(label) > 0.99
    embed = load_probe(run, "hook_embed", pooling="content-mean")
    assert embed.coef.shape == (3, store.sizes["d_model"])
    with pytest.raises(ValueError, match="layers \\[0, 1, 2\\]"):
        load_probe(run, "hook_resid_post", 7, pooling="last")
    with pytest.raises(ValueError, match="choose one of"):
        load_probe(run, "blocks.1.hook_resid_post")
    with pytest.raises(FileNotFoundError, match="saved: \\['hook_embed', 'hook_resid_post'\\]"):
        load_probe(run, "blocks.1.hook_mlp_out", pooling="last")


def test_a_sweep_killed_while_plotting_leaves_no_completion_record(capsys, tiny_dir, tmp_path,
                                                                    monkeypatch):
    """run.json is written last: a sweep that dies while plotting does not look complete
    (even in an --out that holds an earlier run's run.json), and `probe report` says so."""
    import probe.figures

    data = _csv(tmp_path / "d.csv", _stories())
    run = tmp_path / "run"
    args = ("--dataset", str(data), "--out", str(run), "--no-save-probes")
    assert _sweep(capsys, tiny_dir, tmp_path, *args)[0] == 0
    assert (run / "run.json").is_file()

    def killed(*a, **k):
        raise KeyboardInterrupt  # the user's Ctrl-C (or a kill) while the figures are drawn

    monkeypatch.setattr(probe.figures, "plot_sweep_panels", killed)
    assert _sweep(capsys, tiny_dir, tmp_path, *args)[0] == 130  # the CLI's Ctrl-C exit
    assert (run / "results.csv").is_file() and not (run / "run.json").exists()
    code, _, err = _run(capsys, "report", str(run), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "no run.json" in err
    monkeypatch.undo()
    assert _sweep(capsys, tiny_dir, tmp_path, *args)[0] == 0
    names = sorted(p.name for p in run.iterdir())
    newest = max(run.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "run.json", names
