"""steering.geometry on a tiny model: pooling is padding- and batch-invariant, and
``probe geometry`` runs end to end (vectors usable by ``probe steer``)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from probe.cli import main
from steering.geometry.analysis import Labelled, analyze
from steering.geometry.features import GeometryError, offset_weights, pool_texts
from steering.geometry.ratings import Ratings
from steering.vector import SteeringVector
from tests.tiny import CORPUS

EMOTIONS = {"joy": 0.98, "anger": 0.17, "sadness": 0.05, "fear": 0.07, "love": 1.0}


def test_offset_weights_cover_the_span_on_either_side():
    w = offset_weights([3, 5], [(1, 3), (2, 5)], width=5, padding_side="left")
    assert torch.allclose(w[0, 0], torch.tensor([0, 0, 0, 0.5, 0.5]))
    assert torch.allclose(w[1, 0], torch.tensor([0, 0, 1 / 3, 1 / 3, 1 / 3]))
    w = offset_weights([3], [(1, 3)], width=5, padding_side="right")
    assert torch.allclose(w[0, 0], torch.tensor([0, 0.5, 0.5, 0, 0]))
    with pytest.raises(GeometryError):
        offset_weights([3], [(2, 4)], width=5, padding_side="right")


def test_pooling_matches_hidden_states_from_the_offset_on(tiny_llama):
    lm = tiny_llama
    texts = CORPUS[:6]
    f = pool_texts(lm, texts, token_offset=2, batch_size=3)
    assert f.kept == list(range(6))
    for i, text in enumerate(texts):
        ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = lm.model(ids, output_hidden_states=True).hidden_states
        for layer in range(lm.n_layers - 1):  # the last hidden state is after the final norm
            want = hs[layer + 1][0, 2:].mean(0)
            torch.testing.assert_close(
                f.values[i, layer], want, rtol=1e-4, atol=1e-5 * float(want.abs().max())
            )


def test_padding_side_and_batch_size_do_not_move_the_numbers(tiny_llama):
    texts = [t for t in CORPUS[:6] for _ in range(3)]
    texts = [f"{t} {'and then more happened ' * (i % 4)}".strip() for i, t in enumerate(texts)]
    labels = torch.tensor([i % 6 for i in range(len(texts))])
    runs = {}
    for side, bs in (("right", 32), ("left", 32), ("right", 1), ("left", 5)):
        f = pool_texts(tiny_llama, texts, token_offset=1, batch_size=bs, padding_side=side)
        runs[(side, bs)] = f.values
        data = Labelled("t", [f"e{i}" for i in range(6)], labels, f.values, f.layers)
        ratings = Ratings(
            data.emotions,
            ["valence"],
            torch.linspace(0, 1, 6).double()[:, None],
            {e: e for e in data.emotions},
            "test",
        )
        rows, _ = analyze(data, ratings, None, n_boot=20, n_perm=50)
        runs[(side, bs, "r")] = torch.tensor([r["value"] for r in rows])
    ref = runs[("right", 32)]
    for key in (("left", 32), ("right", 1), ("left", 5)):
        torch.testing.assert_close(runs[key], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        torch.testing.assert_close(
            runs[(*key, "r")], runs[("right", 32, "r")], rtol=1e-3, atol=1e-3
        )


def test_texts_shorter_than_the_offset_are_dropped_not_padded(tiny_llama):
    f = pool_texts(tiny_llama, ["Hi", CORPUS[0]], token_offset=3)
    assert f.kept == [1] and f.values.shape[0] == 1
    with pytest.raises(GeometryError, match="lower the token offset"):
        pool_texts(tiny_llama, ["Hi"], token_offset=30)


@pytest.fixture()
def tiny_inputs(tmp_path):
    rows = [
        {"text": f"{t} ({e} {i})", "label": e} for e in EMOTIONS for i, t in enumerate(CORPUS[:6])
    ]
    rows += [{"text": f"{t} (plain {i})", "label": "neutral"} for i, t in enumerate(CORPUS[:12])]
    pd.DataFrame(rows).to_csv(tmp_path / "texts.csv", index=False)
    pd.DataFrame(
        [{"emotion": e, "valence": v, "arousal": 1 - v / 2} for e, v in EMOTIONS.items()]
    ).to_csv(tmp_path / "ratings.csv", index=False)
    return tmp_path


def _args(tiny_dir, p, out, *extra):
    return [
        "geometry",
        "--model",
        str(tiny_dir / "llama"),
        "--sources",
        f"{p / 'texts.csv'},stories",
        "--neutral",
        str(p / "texts.csv"),
        "--ratings",
        str(p / "ratings.csv"),
        "--per-emotion",
        "6",
        "--n-neutral",
        "12",
        "--stories-per-emotion",
        "2",
        "--story-tokens",
        "8",
        "--story-offset",
        "1",
        "--bootstrap",
        "20",
        "--permutations",
        "50",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_cli_end_to_end_on_the_tiny_model(tiny_dir, tiny_inputs, tmp_path, capsys):
    out = tmp_path / "geo"
    assert main(_args(tiny_dir, tiny_inputs, out)) == 0
    text = capsys.readouterr().out
    assert "PC1 vs valence" in text and "wrote results.csv" in text
    table = pd.read_csv(out / "results.csv")
    assert {"pc_vs_rating", "pc_variance"} <= set(table.experiment)
    r = table[
        (table.experiment == "pc_vs_rating")
        & (table.metric == "abs_r")
        & (table.scale == "valence")
        & (table.pc == 1)
    ]
    assert len(r) == 3 * r.source.nunique() and r.value.between(0, 1).all()
    assert (r.ci_low <= r.ci_high + 1e-6).all() and r.p_value.between(0, 1).all()
    run = json.loads((out / "run.json").read_text())
    assert run["command"].startswith("probe geometry") and run["recipe"]["neutral_share"] == 0.5
    assert run["sources"]["stories"]["n_written"] == 10
    assert (out / "stories.jsonl").is_file() and (out / "layer_profile.png").is_file()
    assert (out / "emotion_map_texts.png").is_file()
    vec = SteeringVector.load(out / "vectors" / "texts" / "joy.safetensors")
    assert vec.layers == [0, 1, 2] and vec.meta["method"] == "geometry" and "rms" in vec.meta
    assert abs(float(vec.directions[vec.sites[0]].norm()) - 1) < 1e-5
    # probe steer takes a geometry vector as it is
    assert (
        main(
            [
                "steer",
                "--model",
                str(tiny_dir / "llama"),
                "--emotion",
                "joy",
                "--vector",
                str(out / "vectors" / "texts" / "joy"),
                "--layers",
                "1",
                "--strength",
                "2",
                "--max-new-tokens",
                "3",
                "--quiet",
                "Hello",
            ]
        )
        == 0
    )
    assert "steered" in capsys.readouterr().out
    # and the per-token monitor reads along geometry vectors
    from probe.models import load_model
    from steering.monitor import monitor
    from steering.vector import VectorSet

    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    trace = monitor(lm, ["Hello"], VectorSet.load(out / "vectors" / "texts", lm), max_new_tokens=3)
    name = trace.readers[0]
    assert set(trace.labels[name]) == set(EMOTIONS) and trace.kinds[name] == "projection"
    assert torch.isfinite(torch.as_tensor(trace.values[name][0][:-1])).all()
    # the stories are reused, and saved vectors compared
    out2 = tmp_path / "geo2"
    assert (
        main(
            _args(
                tiny_dir,
                tiny_inputs,
                out2,
                "--stories",
                str(out / "stories.jsonl"),
                "--compare-vectors",
                str(out / "vectors" / "texts"),
            )
        )
        == 0
    )
    t2 = pd.read_csv(out2 / "results.csv")
    assert (out2 / "stories.jsonl").read_text() == (out / "stories.jsonl").read_text()
    agree = t2[
        (t2.experiment == "rdm_agreement") & (t2.other == "vectors:texts") & (t2.source == "texts")
    ]
    assert len(agree) == 3 and (agree.value > 0.999).all()  # the same vectors agree with themselves


def test_bad_input_fails_before_the_model_loads(tiny_inputs, tmp_path, capsys):
    base = ["geometry", "--model", "no-such-model-xyz", "--quiet", "--out", str(tmp_path / "x")]
    assert main([*base, "--sources", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.csv" in err
    assert (
        main(
            [
                *base,
                "--sources",
                str(tiny_inputs / "texts.csv"),
                "--neutral-share",
                "0",
                "--ratings",
                str(tmp_path / "nope.csv"),
            ]
        )
        == 2
    )
    assert "ratings file" in capsys.readouterr().err
    pd.DataFrame([{"emotion": "joy", "valence": 1.0}]).to_csv(tmp_path / "few.csv", index=False)
    assert (
        main(
            [
                *base,
                "--sources",
                str(tiny_inputs / "texts.csv"),
                "--neutral-share",
                "0",
                "--ratings",
                str(tmp_path / "few.csv"),
            ]
        )
        == 2
    )
    assert "no rating for emotion(s)" in capsys.readouterr().err
    assert main([*base, "--sources", str(tiny_inputs / "texts.csv"), "--bootstrap", "-1"]) == 2
    assert not (tmp_path / "x").exists()


def test_second_model_agreement_by_relative_depth(tiny_dir, tiny_inputs, tmp_path):
    out = tmp_path / "geo2m"
    args = _args(tiny_dir, tiny_inputs, out, "--compare-model", str(tiny_dir / "qwen2"))
    args[args.index("--sources") + 1] = str(tiny_inputs / "texts.csv")
    assert main(args) == 0
    t = pd.read_csv(out / "results.csv")
    rows = t[(t.experiment == "rdm_agreement") & t.other.str.endswith("@qwen2")]
    assert (
        len(rows) == 3 and rows.value.between(-1, 1).all() and (rows.ci_low <= rows.ci_high).all()
    )
    assert list(rows.other_layer) == [0, 1, 2]  # same depth (3 layers each)
    assert not (out / "rdm_agreement.png").exists()  # one source: no agreement between sources
    from probe.report import load_run

    assert load_run(out).kind == "geometry"


def test_one_source_alone(tiny_dir, tiny_inputs, tmp_path):
    out = tmp_path / "one"
    scores = {"emotion": list(EMOTIONS), "pleasure": [7.5, 2.0, 1.5, 2.5, 8.0]}  # no valence
    pd.DataFrame(scores).to_csv(tmp_path / "own.csv", index=False)
    args = _args(tiny_dir, tiny_inputs, out, "--neutral-share", "0")
    args[args.index("--sources") + 1] = str(tiny_inputs / "texts.csv")
    args[args.index("--ratings") + 1] = str(tmp_path / "own.csv")
    assert main(args) == 0
    t = pd.read_csv(out / "results.csv")
    assert "rdm_agreement" not in set(t.experiment) and set(t.scale.dropna()) == {"pleasure"}
    assert (out / "emotion_map_texts.png").is_file()
    assert json.loads((out / "run.json").read_text())["neutral"]["pcs_removed"] == []
