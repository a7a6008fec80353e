"""The `probe` CLI as a newcomer meets it: help, listings, clear errors, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.cli import main
from probe.store import open_store
from tests.conftest import REAL_LIMIT, REPO_ROOT, stores_in


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _csv(tmp_path, rows, name="data.csv"):
    path = tmp_path / name
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    return path


def test_help_reads_well(capsys):
    for argv in (["--help"], ["cache", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "probe sweep --dataset ../shared/data/emobank --target A" in out
    assert "--pooling" in out and "content-mean" in out


def test_models_and_datasets_are_listed(capsys):
    code, out, _ = _run(capsys, "models")
    assert code == 0 and "llama-3-8b" in out and "smollm2-135m" in out and "qwen3-8b" in out
    code, out, _ = _run(capsys, "datasets")
    assert code == 0 and "emotion-scenarios" in out and "goemotions" in out


def test_unknown_alias(capsys):
    code, _, err = _run(capsys, "cache", "--model", "llama-9000")
    assert code == 2 and "unknown model 'llama-9000'" in err and "Traceback" not in err


def test_missing_weights_say_how_to_get_them(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run(capsys, "cache", "--model", "llama-3-8b", "--out", str(tmp_path / "s.zarr"))
    assert code == 2
    assert "meta-llama/Meta-Llama-3-8B" in err and "hf download meta-llama/Meta-Llama-3-8B" in err
    assert "accept the licence" in err and "Traceback" not in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if a command loads model weights."""
    import probe.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(probe.models, "load_model", refuse)


@pytest.mark.parametrize("command", ["cache", "sweep"])
@pytest.mark.parametrize("sites, pooling, message", [
    ("blocks.*.hook_foo", "last", "unknown site kind"),
    ("blocks.7.hook_resid_post", "last", "out of range"),
    ("nonsense", "last", "cannot parse site pattern"),
    ("resid_post", "last,middle", "unknown pooling 'middle'"),
    ("resid_post", "token", "no 'target_word' column"),
])
def test_bad_sites_and_poolings_fail_before_the_model_loads(
        capsys, tiny_dir, tmp_path, no_model_load, command, sites, pooling, message):
    out = tmp_path / "s.zarr"
    data = _csv(tmp_path, [(f"text {i}", "ab"[i % 2]) for i in range(20)])  # no target_word
    code, _, err = _run(capsys, command, "--model", str(tiny_dir / "llama"), "--dataset", str(data),
                        "--sites", sites, "--pooling", pooling,
                        "--store" if command == "sweep" else "--out", str(out), "--quiet")
    assert code == 2 and message in err, err
    assert not out.exists()


def test_too_small_limit_names_one_that_works(capsys, tmp_path, no_model_load):
    code, _, err = _run(capsys, "sweep", "--limit", "16", "--cache-dir", str(tmp_path))
    assert code == 2 and "--limit 16 keeps 14 rows" in err
    assert "The smallest --limit that works here is 35" in err
    with pytest.raises(AssertionError, match="the model was loaded"):  # 2 scenarios, 2 folds: fine
        main(["sweep", "--limit", "16", "--folds", "2", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        main(["cache", "--limit", "0"])
    assert exc.value.code == 2 and "--limit: must be at least 1" in capsys.readouterr().err


def test_bad_datasets(capsys, tiny_dir, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": "a"}\n{"text": "oops", \n')
    for path, message in ((empty, "no rows"), (broken, "broken.jsonl:2: not valid JSON"),
                          (tmp_path / "absent.csv", "absent.csv")):
        code, _, err = _run(capsys, "cache", "--model", str(tiny_dir / "llama"), "--dataset",
                            str(path), "--out", str(tmp_path / "s.zarr"), "--quiet")
        assert code == 2 and message in err, err
        assert not (tmp_path / "s.zarr").exists()


def test_one_class_dataset_is_refused_before_any_work(capsys, tiny_dir, tmp_path):
    data = _csv(tmp_path, [(f"text number {i}", "joy") for i in range(20)])
    code, _, err = _run(capsys, "sweep", "--model", str(tiny_dir / "llama"), "--dataset", str(data),
                        "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and "at least two" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_cache_then_info(capsys, tiny_dir, tmp_path, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_text("key,text,label\n" + "".join(
        f"k{i},I lost my keys {i} times,{'sadness' if i % 2 else 'joy'}\n" for i in range(12)))
    store = tmp_path / "s.zarr"
    monkeypatch.chdir(tmp_path)  # a relative --out is reported as an absolute path
    code, out, err = _run(capsys, "cache", "--model", str(tiny_dir / "llama"), "--dataset",
                          "data.csv", "--id-column", "key", "--sites", "resid_post blocks.1.attn.hook_z",
                          "--pooling", "last,mean", "--out", "s.zarr", "--quiet")
    assert code == 0, err
    assert f"store: {store}\n" in out
    assert list(open_store(store).sample.values[:2]) == ["k0", "k1"]
    code, out, _ = _run(capsys, "info", "s.zarr")  # a relative path is echoed absolute
    assert code == 0 and "status    complete" in out and "attn.hook_z" in out
    assert f"store     {store}\n" in out and store.is_absolute()
    assert open_store(store)["hook_resid_post"].shape[:3] == (12, 3, 2)
    code, _, err = _run(capsys, "info", str(tmp_path / "nothing.zarr"))
    assert code == 2 and "no activation store" in err


def test_sweep_on_a_tiny_model_writes_everything(capsys, tiny_dir, tmp_path):
    data = _csv(tmp_path, [(f"{w} story number {i}", lab) for i in range(40)
                           for w, lab in [("happy", "joy")] if i % 2] +
                [(f"{w} story number {i}", lab) for i in range(40)
                 for w, lab in [("gloomy", "sadness")] if not i % 2])
    run = tmp_path / "run"
    code, out, err = _run(capsys, "sweep", "--model", str(tiny_dir / "llama"), "--dataset", str(data),
                          "--folds", "4", "--bootstrap", "50", "--out", str(run), "--quiet",
                          "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    for name in ("results.csv", "results.json", "run.json", "layerwise_last.png",
                 "layerwise_content-mean.svg", "panels_last.png"):
        assert (run / name).stat().st_size > 0, name
    figure_mode = (run / "layerwise_last.png").stat().st_mode
    for name in ("results.csv", "results.json", "run.json"):
        assert (run / name).stat().st_mode == figure_mode, name  # not mkstemp's 0600
    assert "peak" in out and f"results: {run}" in out
    meta = json.loads((run / "run.json").read_text())
    assert meta["target"] == "label" and meta["provenance"]["n_layers"] == 3
    assert Path(meta["store"]).is_absolute() and f"store:   {meta['store']}" in out


@pytest.mark.slow
def test_real_embedded_model_end_to_end(capsys, tmp_path, real_cache):
    """The README's main job on a small slice: SmolLM2 on CPU, cache then sweep, through the CLI.

    ``real_cache`` already holds this slice's store (the session's one real-model store):
    ``probe cache`` and ``probe sweep`` must find it complete and reuse it.
    """
    before = stores_in(real_cache)
    code, out, err = _run(capsys, "cache", "--limit", str(REAL_LIMIT), "--cache-dir",
                          str(real_cache), "--quiet")
    assert code == 0, err
    store = out.split("store: ")[1].split()[0]
    code, info, _ = _run(capsys, "info", store)
    assert "status    complete" in info and "smollm2-135m" in info and "layers cached: 0-29" in info
    run = tmp_path / "run"
    code, out, err = _run(capsys, "sweep", "--limit", str(REAL_LIMIT), "--cache-dir", str(real_cache),
                          "--folds", "3", "--bootstrap", "100", "--out", str(run), "--quiet")
    assert code == 0, err
    from probe.results import read_results

    df, meta = read_results(run)
    probe = df[(df.estimator == "probe") & (df.metric == "accuracy") & (df.site == "hook_resid_post")]
    assert sorted(probe.layer.unique()) == list(range(30))
    assert meta["store"] == store  # the sweep reused the cached store
    assert stores_in(real_cache) == before  # nothing was recomputed or rewritten
    assert (run / "layerwise_last.png").stat().st_size > 10_000


def test_closed_pipe_ends_quietly(tmp_path):
    """`probe datasets | head -0`: the reader is gone before we write; no traceback."""
    read, write = os.pipe()
    os.close(read)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run([sys.executable, "-m", "probe.cli", "datasets"], stdout=write,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env, timeout=120)
    os.close(write)
    assert res.returncode == 141 and res.stderr == "", res.stderr


def test_other_packages_register_commands_one_way(capsys, monkeypatch):
    """`probe` finds subcommands through entry points; a handler's own errors are user errors."""
    import importlib.metadata as md

    class Oops(ValueError):
        pass

    def register(sub):
        sub.add_parser("hello", help="say hello").add_argument("--fail", action="store_true")

        def hello(args):
            if not args.fail:
                print("hello from a plugin")
                return 0
            raise Oops("bad plugin input")
        hello.user_errors = (Oops,)
        return {"hello": hello}

    class EP:
        name, value = "demo", "demo:register"

        def load(self):
            return register

    real = md.entry_points
    monkeypatch.setattr(md, "entry_points",
                        lambda **kw: [EP()] if kw.get("group") == "emoprobe.commands" else real(**kw))
    assert main(["hello"]) == 0 and "hello from a plugin" in capsys.readouterr().out
    code, _, err = _run(capsys, "hello", "--fail")
    assert code == 2 and "error: bad plugin input" in err and "Traceback" not in err


def test_probe_never_imports_steering_or_circuits():
    import re
    from pathlib import Path

    import probe
    root = Path(probe.__file__).parent
    bad = [str(p) for p in root.rglob("*.py")
           if re.search(r"^\s*(from|import)\s+(steering|circuits)\b", p.read_text(), re.M)]
    assert not bad, bad
