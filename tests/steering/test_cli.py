"""`probe directions` and `probe steer` as a newcomer meets them: outputs, JSON, clear errors."""

from __future__ import annotations

import json

import pytest

from probe.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def toy_store(tiny_dir, tmp_path_factory):
    """A toy CSV (3 labels x 6 groups) cached through the tiny Llama with `probe cache`."""
    from tests.tiny import CORPUS

    root = tmp_path_factory.mktemp("cli")
    labels = ["anger", "joy", "neutral"]
    lines = ["text,label,group"] + [f"{t.replace(',', '')},{labels[i % 3]},g{i // 3}"
                                    for i, t in enumerate(CORPUS[:18])]
    (root / "toy.csv").write_text("\n".join(lines) + "\n")
    store = root / "toy.zarr"
    code = main(["cache", "--model", str(tiny_dir / "llama"), "--dataset", str(root / "toy.csv"),
                 "--group-column", "group", "--sites", "blocks.*.hook_resid_post", "--out",
                 str(store), "--quiet"])
    assert code == 0
    return root, store


def test_help_reads_well(capsys):
    for cmd in ("directions", "steer"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert 'probe steer --emotion fear "How was your day?"' in out and "--method" in out


def test_directions_then_steer(capsys, tiny_dir, toy_store):
    root, store = toy_store
    model = str(tiny_dir / "llama")
    out_dir = root / "dirs"
    code, out, err = _run(capsys, "directions", "--model", model, "--store", store, "--method",
                          "mean-diff", "--folds", "3", "--gguf", "--out", out_dir, "--quiet")
    assert code == 0, err
    assert "held-out AUROC" in out and "joy" in out and "anger" in out
    names = sorted(p.name for p in out_dir.iterdir())
    for f in ("anger.safetensors", "anger.json", "joy.gguf", "cosine.png", "cosine.svg",
              "heldout_auroc.csv", "heldout_auroc.png", "run.json"):
        assert f in names, names
    assert not [n for n in root.iterdir() if n.name.startswith(".dirs")]
    run = json.loads((out_dir / "run.json").read_text())
    assert run["method"] == "mean-diff" and run["emotions"] == ["anger", "joy"]
    # the folder must not be reused silently
    code, _, err = _run(capsys, "directions", "--model", model, "--store", store, "--out", out_dir)
    assert code == 2 and "not empty" in err

    js = root / "steer.json"
    code, out, err = _run(capsys, "steer", "--model", model, "--vectors", out_dir, "--emotion", "joy",
                          "--strength", "8", "--max-new-tokens", "5", "--json", js, "--quiet",
                          "We won the final!", "Someone stole my bike.")
    assert code == 0, err
    assert out.count("prompt:") == 2 and "unsteered" in out and "steered: joy add x8 RMS" in out
    rec = json.loads(js.read_text())
    assert rec["prompts"] == ["We won the final!", "Someone stole my bike."]
    assert rec["setting"]["scale"] == 8 and rec["vector"]["method"] == "mean-diff"
    assert len(rec["steered"]) == len(rec["unsteered"]) == 2
    assert rec["steered"] != rec["unsteered"]


@pytest.mark.parametrize("extra, message", [
    (["--emotion", "love", "--strength", "2", "--layers", "1-2"], "no direction for emotion 'love'"),
    (["--emotion", "joy", "--strength", "nan", "--layers", "1-2"], "finite"),
    (["--emotion", "joy", "--strength", "2", "--layers", "1-7"], "out of range"),
    (["--emotion", "joy"], "no shipped operating point"),
    (["--emotion", "joy", "--strength", "2"], "pass --strength and --layers"),
])
def test_steer_errors_are_clear(capsys, tiny_dir, toy_store, extra, message):
    root, store = toy_store
    code, _, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--store", store,
                        "--method", "mean-diff", *extra, "--json", root / "bad.json", "--quiet", "Hi there")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (root / "bad.json").exists()


def test_steer_needs_prompts_and_a_matching_vector(capsys, tiny_dir, toy_store):
    root, store = toy_store
    code, _, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--emotion", "joy")
    assert code == 2 and "at least one prompt" in err
    vec_dir = root / "dirs_q"
    assert main(["directions", "--model", str(tiny_dir / "llama"), "--store", str(store),
                 "--folds", "0", "--out", str(vec_dir), "--quiet"]) == 0
    code, _, err = _run(capsys, "steer", "--model", tiny_dir / "gpt2", "--vectors", vec_dir,
                        "--emotion", "joy", "--strength", "2", "Hi")
    assert code == 2 and "architecture" in err or "weights" in err


@pytest.mark.slow
def test_real_model_steer_uses_the_shipped_operating_point(capsys, tmp_path):
    """SmolLM2 with no --strength/--layers: the operating point picks method, layers, strength."""
    from steering.operating_points import operating_point

    from probe.data.loaders import bundled_scenarios_path

    point = operating_point("smollm2-135m", "fear")
    cache = tmp_path / "cache"
    lo, hi = min(point.layers), max(point.layers)
    # the first 10 scenarios, whole (context-agnostic directions need every emotion per scenario)
    subset = tmp_path / "scenarios"
    subset.mkdir()
    lines = (bundled_scenarios_path() / "stimuli.jsonl").read_text().splitlines()
    (subset / "stimuli.jsonl").write_text("\n".join(lines[:70]) + "\n")
    code, out, err = _run(capsys, "cache", "--dataset", subset, "--cache-dir", cache, "--sites",
                          f"blocks.{lo}-{hi}.hook_resid_post", "--quiet")
    assert code == 0, err
    store = out.split("store: ")[1].split()[0]
    js = tmp_path / "fear.json"
    code, out, err = _run(capsys, "steer", "--emotion", "fear", "--store", store, "--max-new-tokens",
                          "12", "--json", js, "How was your day?")
    assert code == 0, err
    # (the side-by-side header may wrap; the operating-point line is one line)
    assert "operating point: fear" in err and f"layers {lo}-{hi}" in err
    rec = json.loads(js.read_text())
    assert rec["operating_point"]["scale"] == point.scale and rec["vector"]["layers"] == list(point.layers)
    assert rec["steered"][0] != rec["unsteered"][0]


def test_shipped_operating_points_load_and_can_be_replaced(tmp_path):
    from steering.operating_points import (
        OperatingPoint,
        load_operating_points,
        operating_point,
        write_operating_point,
    )
    from steering.vector import SteeringError

    table = load_operating_points()
    shipped = table["models"]["smollm2-135m"]["emotions"]
    assert sorted(shipped) == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    for e in shipped:
        point = operating_point("smollm2-135m", e)
        # either a provisional quick-look point or one `probe steer-eval` selected (and says so)
        assert point.provisional or "probe steer-eval run" in point.source
        assert point.layers and 0 <= min(point.layers) <= max(point.layers) < 30
        assert 0 < point.scale <= 4 and point.positions in ("last-prompt+generated", "all")
        assert ("provisional" in point.describe()) == point.provisional
    path = tmp_path / "points.json"
    new = OperatingPoint(model="m", emotion="joy", method="mean-diff", site="resid_post",
                         layers=(3, 4), scale=1.5, provisional=False, source="steer-eval run x")
    write_operating_point(new, weight_fingerprint="abc", path=path)
    assert operating_point("m", "joy", path=path) == new
    with pytest.raises(SteeringError, match="known: \\['joy'\\]"):
        operating_point("m", "fear", path=path)
    path.write_text("{not json")
    with pytest.raises(SteeringError, match="not valid JSON"):
        load_operating_points(path)
