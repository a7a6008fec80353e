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
                          "--strength", "8", "--max-new-tokens", "5", "--out", js, "--quiet",
                          "We won the final!", "Someone stole my bike.")
    assert code == 0, err
    assert out.count("prompt:") == 2 and "unsteered" in out and "steered: joy add x8 RMS" in out
    rec = json.loads(js.read_text())
    assert rec["prompts"] == ["We won the final!", "Someone stole my bike."]
    assert rec["setting"]["strength"] == 8 and rec["vector"]["method"] == "mean-diff"
    assert len(rec["steered"]) == len(rec["unsteered"]) == 2
    assert rec["steered"] != rec["unsteered"]
    # --mode scale takes --factor (a multiplier), the value under its own name to the hook
    code, out, err = _run(capsys, "steer", "--model", model, "--vectors", out_dir, "--emotion", "joy",
                          "--mode", "scale", "--factor", "0", "--layers", "1-2", "--max-new-tokens",
                          "3", "--out", root / "scaled.json", "--quiet", "We won the final!")
    assert code == 0, err
    assert "steered: joy scale x0 at" in out and "positions" not in out
    # positions other than the default are named in the header and the record
    code, out, err = _run(capsys, "steer", "--model", model, "--vectors", out_dir, "--emotion", "joy",
                          "--strength", "8", "--positions", "opening:2", "--max-new-tokens", "4",
                          "--out", root / "opening.json", "--quiet", "We won the final!")
    assert code == 0, err
    assert "opening:2" in out
    assert json.loads((root / "opening.json").read_text())["setting"]["positions"] == "opening:2"
    rec = json.loads((root / "scaled.json").read_text())
    assert rec["setting"]["factor"] == 0 and rec["setting"]["mode"] == "scale"


@pytest.mark.parametrize("extra, message", [
    (["--emotion", "love", "--strength", "2", "--layers", "1-2"], "no direction for emotion 'love'"),
    (["--emotion", "joy", "--strength", "nan", "--layers", "1-2"], "finite"),
    (["--emotion", "joy", "--strength", "2", "--layers", "1-7"], "out of range"),
    (["--emotion", "joy"], "no operating point for model"),
    (["--emotion", "joy", "--strength", "2"], "pass --strength and --layers"),
    (["--emotion", "joy", "--mode", "scale", "--strength", "2", "--layers", "1-2"],
     "--mode scale multiplies the projection by --factor"),
    (["--emotion", "joy", "--factor", "0.5", "--layers", "1-2"], "--factor multiplies the projection"),
    (["--emotion", "joy", "--mode", "scale", "--factor", "inf", "--layers", "1-2"], "--factor must be"),
    (["--emotion", "joy", "--strength", "2", "--layers", "1-2", "--positions", "generated:-1"],
     "write generated:K"),
    (["--emotion", "joy", "--strength", "2", "--layers", "1-2", "--positions", "later"],
     "unknown positions 'later'"),
])
def test_steer_errors_are_clear(capsys, tiny_dir, toy_store, extra, message):
    root, store = toy_store
    code, _, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--store", store,
                        "--method", "mean-diff", *extra, "--out", root / "bad.json", "--quiet", "Hi there")
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
    """SmolLM2 with no --strength/--layers: the operating point picks method, layers, strength
    (disgust's is a steer-eval point: its directions are computed from the store)."""
    from probe.data.loaders import bundled_scenarios_path
    from steering.operating_points import operating_point

    point = operating_point("smollm2-135m", "disgust")
    assert point.vector is None
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
    js = tmp_path / "disgust.json"
    code, out, err = _run(capsys, "steer", "--emotion", "disgust", "--store", store, "--max-new-tokens",
                          "12", "--out", js, "How was your day?")
    assert code == 0, err
    assert f"operating point ({point.origin}): disgust" in err and f"layers {lo}-{hi}" in err
    rec = json.loads(js.read_text())
    assert rec["operating_point"]["strength"] == point.strength and rec["vector"]["layers"] == list(point.layers)
    assert rec["steered"][0] != rec["unsteered"][0]


def test_shipped_operating_points_load_and_can_be_replaced(tmp_path):
    from steering.operating_points import (
        OperatingPoint,
        load_operating_points,
        operating_point,
        point_vector,
        write_operating_point,
    )
    from steering.vector import SteeringError

    table = load_operating_points()
    shipped = table["models"]["smollm2-135m"]["emotions"]
    assert sorted(shipped) == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    for e in shipped:
        point = operating_point("smollm2-135m", e)
        # a provisional quick-look point, or one `probe steer-eval` or the trained-steering
        # benchmark selected (and says so); a point naming a vector file ships that file
        assert point.provisional or "probe steer-eval run" in point.source \
            or "benchmarks/eval_trained_steering.py" in point.source
        if point.vector is not None:
            assert point_vector(point).layers == list(point.layers)
        if point.prompt and point.prompt.get("vector"):
            assert point_vector(point, with_prompt=True).layers
        assert point.layers and 0 <= min(point.layers) <= max(point.layers) < 30
        assert 0 < point.strength <= 4 and point.positions in ("last-prompt+generated", "all")
        assert ("provisional" in point.describe()) == point.provisional
    path = tmp_path / "points.json"
    new = OperatingPoint(model="m", emotion="joy", method="mean-diff", site="resid_post",
                         layers=(3, 4), strength=1.5, provisional=False, source="steer-eval run x")
    write_operating_point(new, weight_fingerprint="abc", path=path)
    assert operating_point("m", "joy", path=path) == new
    with pytest.raises(SteeringError, match="known: \\['joy'\\]"):
        operating_point("m", "fear", path=path)
    path.write_text("{not json")
    with pytest.raises(SteeringError, match="not valid JSON"):
        load_operating_points(path)


# ------------------------------------------------------------------ probe steer as a user meets it


@pytest.mark.parametrize("strength", ["nan", "inf", "-inf"])
def test_steer_rejects_a_non_finite_strength_before_loading_anything(capsys, tmp_path, strength):
    # a model that does not exist: the strength must be refused before any load is tried
    code, _out, err = _run(capsys, "steer", "--model", tmp_path / "no-such-model", "--emotion",
                          "joy", f"--strength={strength}", "--layers", "1", "Hi there")
    assert code == 2 and "finite" in err and "no-such-model" not in err, err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("out", ["Tell me about your day.", "How was your day?", "my replies.json"])
def test_steer_refuses_a_prompt_looking_out_path(capsys, tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "steer", "--model", tmp_path / "no-such-model", "--emotion", "joy",
                        "--strength", "2", "--out", out, "Hi there")
    assert code == 2 and "looks like a prompt" in err, err
    assert not list(tmp_path.iterdir())


def test_steer_old_json_file_form_is_refused_with_the_fix(capsys, tmp_path):
    code, _, err = _run(capsys, "steer", "--model", tmp_path / "nope", "--emotion", "joy",
                        "--json", "out.json", "Hi")
    assert code == 2 and "--out out.json" in err, err


@pytest.fixture(scope="module")
def joy_vectors(tiny_dir, toy_store):
    root, store = toy_store
    vec_dir = root / "dirs_steer"
    assert main(["directions", "--model", str(tiny_dir / "llama"), "--store", str(store),
                 "--method", "mean-diff", "--folds", "0", "--out", str(vec_dir), "--quiet"]) == 0
    return vec_dir


def test_steer_json_goes_to_stdout_and_out_to_a_file(capsys, tiny_dir, joy_vectors, tmp_path):
    model = str(tiny_dir / "llama")
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "steer", "--model", model, "--vectors", joy_vectors, "--emotion",
                          "joy", "--strength", "2", "--max-new-tokens", "4", "--json", "--out", js,
                          "Tell me about your day.", "Hi")
    assert code == 0, err
    rec = json.loads(out)  # stdout is the JSON record and nothing else
    assert rec["prompts"] == ["Tell me about your day.", "Hi"]
    assert json.loads(js.read_text()) == rec
    assert oct(js.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    cut = rec["steered_hit_limit"]
    assert len(cut) == 2 and all(isinstance(x, bool) for x in cut)
    # progress and loading lines went to stderr
    assert "generating" in err


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_steer_marks_replies_cut_by_the_token_limit(capsys, tiny_dir, joy_vectors):
    """The tiny random model never says its end token within 3 tokens: every reply is cut."""
    code, out, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--vectors", joy_vectors,
                          "--emotion", "joy", "--strength", "2", "--max-new-tokens", "3",
                          "--quiet", "Hi there")
    assert code == 0, err
    assert out.count("[... max_new_tokens reached]") == 2, out


def test_steer_header_stands_above_the_replies(capsys, tiny_dir, joy_vectors, monkeypatch):
    monkeypatch.setenv("COLUMNS", "64")  # a narrow terminal: the steered header wraps
    code, out, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--vectors", joy_vectors,
                          "--emotion", "joy", "--strength", "2", "--max-new-tokens", "3",
                          "--quiet", "Hi there")
    assert code == 0, err
    lines = out.splitlines()
    rule = next(i for i, ln in enumerate(lines) if ln.startswith("---") and " | " in ln)
    header = lines[lines.index(next(ln for ln in lines if ln.startswith("unsteered"))):rule]
    assert len(header) >= 2, out  # the description wrapped over several lines ...
    assert all("max_new_tokens" not in ln for ln in header)  # ... and no reply line among them
    assert "steered: joy add x2 RMS" in " ".join(header)


def test_steer_warns_far_past_the_fluent_strengths(capsys, tiny_dir, joy_vectors):
    code, _out, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--vectors", joy_vectors,
                          "--emotion", "joy", "--strength", "1e9", "--max-new-tokens", "2",
                          "--quiet", "Hi there")
    assert code == 0, err
    assert "warning: --strength 1e+09 is far past the strengths measured as fluent" in err
    code, _out, err = _run(capsys, "steer", "--model", tiny_dir / "llama", "--vectors", joy_vectors,
                          "--emotion", "joy", "--strength", "2", "--max-new-tokens", "2",
                          "--quiet", "Hi there")
    assert "far past" not in err


def test_fluent_range_comes_from_the_selected_operating_points():
    from steering.steer_output import fluent_range, strength_warning

    top, where = fluent_range("smollm2-135m")
    assert 0 < top < 10 and "operating_points.json" in where
    assert strength_warning(top, "rms", "smollm2-135m") is None
    assert "far past" in strength_warning(3 * top, "rms", "smollm2-135m")
    assert strength_warning(1e9, "absolute", "smollm2-135m") is None  # other units: no range known


def test_a_model_without_operating_points_warns_past_where_smollm2_broke():
    from steering.steer_output import BROKEN_RMS, strength_warning

    assert strength_warning(BROKEN_RMS, "rms", "no-such-model") is None
    assert "no operating points" in strength_warning(BROKEN_RMS * 1.5, "rms", "no-such-model")


def test_directions_expression_from_the_models_own_replies(tiny_dir, tmp_path, monkeypatch):
    """``probe directions --method expression``: the model's designed-prompt replies, read over
    their tokens, one unit vector per emotion (the replies cached under $EMOPROBE_CACHE)."""
    from probe.cli import main
    from steering.vector import VectorSet

    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "expr"
    assert main(["directions", "--model", str(tiny_dir / "llama"), "--method", "expression",
                 "--layers", "1", "--out", str(out), "--quiet"]) == 0
    vecs = VectorSet.load(out)
    assert len(vecs) == 6 and all(v.layers == [1] for v in vecs.values())
    assert all(abs(float(v[v.sites[0]].norm()) - 1) < 1e-4 for v in vecs.values())


def test_with_prompt_steers_the_modes_own_vector(capsys, tiny_dir, toy_store, tmp_path, monkeypatch):
    """A prompt + steering mode that names its own vector file steers that vector at its own
    layers and strength (no store needed), from the user's <EMOPROBE_HOME>/vectors."""
    from steering.vector import VectorSet

    _root, store = toy_store
    model = str(tiny_dir / "llama")
    home = tmp_path / "home"
    monkeypatch.setenv("EMOPROBE_HOME", str(home))
    assert main(["directions", "--model", model, "--store", str(store), "--method", "mean-diff",
                 "--folds", "0", "--out", str(tmp_path / "dirs"), "--quiet"]) == 0
    VectorSet.load(tmp_path / "dirs")["joy"].at([1]).save(home / "vectors" / "joy-own")
    table = {"format": 2, "models": {"llama": {"emotions": {"joy": {
        "method": "mean-diff", "site": "resid_post", "layers": [2], "strength": 1.0, "unit": "rms",
        "mode": "add", "positions": "last-prompt+generated",
        "prompt": {"system_prompt": "Be joyful.", "user_suffix": " (joyfully)", "strength": 4.0,
                   "vector": "joy-own"}}}}}}
    (home / "operating_points.json").write_text(json.dumps(table))
    js = tmp_path / "wp.json"
    code, _out, err = _run(capsys, "steer", "--model", model, "--emotion", "joy", "--with-prompt",
                          "--max-new-tokens", "3", "--out", js, "--quiet", "We won the final!")
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert rec["vector"]["layers"] == [1] and rec["setting"]["strength"] == 4.0
    assert rec["prompts"] == ["We won the final!"] and rec["sent"] == ["We won the final! (joyfully)"]
    assert rec["system_prompt"] == "Be joyful."
    # without --with-prompt the point's own method and layers are used (it needs a store)
    code, _, err = _run(capsys, "steer", "--model", model, "--emotion", "joy", "--store", store,
                        "--max-new-tokens", "3", "--out", tmp_path / "plain.json", "--quiet", "Hi")
    assert code == 0, err
    assert json.loads((tmp_path / "plain.json").read_text())["vector"]["layers"] == [2]


def test_steer_train_writes_a_vector_that_steer_applies_at_its_own_layers(capsys, tiny_dir, tmp_path,
                                                                        monkeypatch):
    """``probe steer-train``: the model's own designed-prompt replies, a vector trained from the
    expression direction, saved; ``probe steer --vector`` then steers at the vector's layers
    (not the operating point's), and bad input is refused before anything is generated."""
    from steering.train import cli as train_cli
    from steering.train.data import OBJECTIVES, SEV_OBJECTIVES
    from steering.vector import SteeringVector

    assert train_cli.OBJECTIVES == OBJECTIVES and train_cli.SEV_OBJECTIVES == SEV_OBJECTIVES
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    model = str(tiny_dir / "llama")
    out = tmp_path / "vec" / "anger-cd"
    code, text, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger",
                           "--layers", "0,1", "--steps", "3", "--prompts", "4", "--out", out)
    assert code == 0, err
    assert "distill-cd loss" in text and "probe steer --emotion anger --vector" in text
    vec = SteeringVector.load(out)
    assert vec.layers == [0, 1] and vec.meta["method"] == "trained-distill-cd"
    assert "plausible=0.1" in vec.meta["train"]["objective"]
    js = tmp_path / "s.json"
    code, _, err = _run(capsys, "steer", "--model", model, "--emotion", "anger", "--vector", out,
                        "--strength", "1", "--max-new-tokens", "3", "--out", js, "--quiet", "Hi")
    assert code == 0, err
    assert json.loads(js.read_text())["vector"]["layers"] == [0, 1]
    for bad, msg in ((["--emotion", "joy"], "unknown emotion"), (["--layers", "0,x"], "comma-separated"),
                     (["--emotion", "anger", "--layers", "9"], "out of range"),
                     (["--positions", "opening:0"], "write opening:K")):
        argv = ["steer-train", "--model", model, "--out", tmp_path / "x", *bad]
        if "--emotion" not in bad:
            argv += ["--emotion", "anger"]
        code, _, err = _run(capsys, *argv)
        assert code == 2 and msg in err, err
    code, _, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger", "--out", out)
    assert code == 2 and "exists" in err
    # distill-boot: the designed prompt + the vector just trained, distilled into a second vector
    for bad in (["--objective", "distill-boot"], ["--teacher-vector", out, "--teacher-strength", "0.5"]):
        code, _, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger",
                            "--out", tmp_path / "y", *bad)
        assert code == 2 and "--teacher-vector FILE and --teacher-strength" in err, err
    boot = tmp_path / "vec" / "anger-boot"
    code, text, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger",
                           "--objective", "distill-boot", "--teacher-vector", out, "--teacher-strength",
                           "0.5", "--layers", "0,1", "--steps", "2", "--prompts", "4",
                           "--positions", "opening:3", "--out", boot)
    assert code == 0, err
    b = SteeringVector.load(boot)
    assert b.meta["method"] == "trained-distill-boot" and b.meta["train"]["init"] == "trained-distill-cd"
    # trained at the reply's opening only: recorded, and the hint steers it there
    assert b.meta["train"]["positions"] == "opening:3" and "--positions opening:3" in text
    assert "amplify=0.0" in b.meta["train"]["objective"]
    # sev-*: SEV's replies instead of the model's own; --sev is required by them, refused by others
    from tests.steering.sev_fake import fake_sev
    sev = fake_sev(tmp_path / "sev")
    for bad, msg in ((["--objective", "sev-pref-lm"], "takes --sev FOLDER"), (["--sev", sev], "take no --sev"),
                     (["--objective", "sev-lm", "--sev", sev, "--lm-weight", "-1"], "--lm-weight >= 0"),
                     (["--objective", "sev-pref-lm-kl", "--sev", sev, "--kl-weight", "-0.5"],
                      "--kl-weight >= 0 (got -0.5)")):
        code, _, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger",
                            "--out", tmp_path / "z", *bad)
        assert code == 2 and msg in err, err
    code, _, err = _run(capsys, "steer-train", "--model", model, "--emotion", "happiness", "--objective",
                        "sev-lm", "--sev", sev, "--layers", "0,1", "--prompts", "4", "--out", tmp_path / "z")
    assert code == 2 and "SEV has no 'happiness' replies" in err, err
    pref = tmp_path / "vec" / "anger-sev"
    code, text, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger", "--objective",
                           "sev-pref-lm", "--sev", sev, "--lm-weight", "0.5", "--skip-opening", "2", "--layers", "0,1",
                           "--steps", "2", "--prompts", "4", "--out", pref)
    assert code == 0, err
    p = SteeringVector.load(pref)
    assert p.meta["method"] == "trained-sev-pref-lm" and "lm_weight=0.5" in p.meta["train"]["objective"]
    assert p.meta["train"]["rows"] == 12
    code, _, err = _run(capsys, "steer-train", "--model", model, "--emotion", "anger", "--skip-opening", "2",
                        "--out", tmp_path / "z")
    assert code == 2 and "--skip-opening is for the sev-* and rsd-* objectives" in err, err


def test_steer_header_names_the_layers_a_vector_steers():
    from steering.cli import _layer_list
    assert _layer_list([10, 11, 12]) == "10-12"
    assert _layer_list([15, 6, 9, 12]) == "6,9,12,15"   # not "6-15": layers 7, 8, ... are not steered
    assert _layer_list([4]) == "4"
