"""Operating points as user state: tuned points go to the user's table, the shipped defaults are
only read, user points win over shipped ones, and a point tuned on other weights is said aloud."""

from __future__ import annotations

import json
import stat

import pytest

from probe.cli import main
from steering.operating_points import (
    OperatingPoint,
    fingerprint_warning,
    operating_point,
    shipped_path,
    user_path,
    write_operating_point,
)
from steering.vector import SteeringError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOPROBE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _point(emotion="fear", strength=3.5, model="smollm2-135m", **kw):
    return OperatingPoint(model=model, emotion=emotion, method="mean-diff", site="resid_post",
                          layers=(1, 2), strength=strength, provisional=False, source="steer-eval run x",
                          **kw)


def test_writing_goes_to_the_user_table_and_never_touches_the_shipped_one(home):
    shipped = shipped_path().read_bytes()
    path = write_operating_point(_point("fear", 3.5), weight_fingerprint="aaaa")
    assert path == user_path() == home / "operating_points.json"
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # readable like any file, not 0600
    write_operating_point(_point("sadness", 1.25), weight_fingerprint="aaaa")
    write_operating_point(_point("fear", 0.75), weight_fingerprint="bbbb")  # replaces fear only
    emotions = json.loads(path.read_text())["models"]["smollm2-135m"]["emotions"]
    assert {e: r["strength"] for e, r in emotions.items()} == {"fear": 0.75, "sadness": 1.25}
    assert json.loads(path.read_text())["format"] == 2
    assert {e: r["weight_fingerprint"] for e, r in emotions.items()} == {"fear": "bbbb",
                                                                        "sadness": "aaaa"}
    assert shipped_path().read_bytes() == shipped
    with pytest.raises(SteeringError, match="read-only"):
        write_operating_point(_point(), path=shipped_path())
    assert shipped_path().read_bytes() == shipped


def test_user_points_win_over_shipped_ones(home):
    shipped = operating_point("smollm2-135m", "fear")
    assert shipped.origin == "shipped" and shipped.weight_fingerprint
    write_operating_point(_point("fear", shipped.strength + 1), weight_fingerprint="aaaa")
    mine = operating_point("smollm2-135m", "fear")
    assert mine.origin == "user" and mine.strength == shipped.strength + 1 and mine.layers == (1, 2)
    assert mine.weight_fingerprint == "aaaa"
    other = operating_point("smollm2-135m", "anger")  # not in the user's table: the shipped one
    assert other.origin == "shipped" and other.weight_fingerprint == shipped.weight_fingerprint
    write_operating_point(_point("joy", 1.0, model="mine"))
    assert operating_point("mine", "joy").origin == "user"
    with pytest.raises(SteeringError, match="known: \\['joy'\\]"):
        operating_point("mine", "fear")
    with pytest.raises(SteeringError, match="no operating point for model 'nope'"):
        operating_point("nope", "fear")


def test_fingerprint_mismatch_is_said():
    point = _point(weight_fingerprint="aaaa", origin="user")
    assert fingerprint_warning(point, "aaaa") is None
    for unknown in (None, "", "unknown"):
        assert fingerprint_warning(point, unknown) is None  # nothing to compare
    assert fingerprint_warning(_point(), "bbbb") is None  # the point records none
    msg = fingerprint_warning(point, "bbbb")
    assert "tuned on other weights" in msg and "aaaa" in msg and "bbbb" in msg
    assert "--strength and --layers" in msg


def _steer(capsys, tiny_dir, store, out):
    code = main(["steer", "--model", str(tiny_dir / "llama"), "--store", str(store), "--emotion",
                 "joy", "--max-new-tokens", "3", "--out", str(out), "Hi there"])
    res = capsys.readouterr()
    assert code == 0, res.err
    return json.loads(out.read_text()), res.err


def test_probe_steer_uses_the_user_point_and_warns_on_other_weights(capsys, home, tiny_dir,
                                                                     tiny_llama, tmp_path):
    from tests.tiny import CORPUS

    labels = ["anger", "joy", "neutral"]
    lines = ["text,label,group"] + [f"{t.replace(',', '')},{labels[i % 3]},g{i // 3}"
                                    for i, t in enumerate(CORPUS[:18])]
    (tmp_path / "toy.csv").write_text("\n".join(lines) + "\n")
    store = tmp_path / "toy.zarr"
    assert main(["cache", "--model", str(tiny_dir / "llama"), "--dataset", str(tmp_path / "toy.csv"),
                 "--group-column", "group", "--sites", "blocks.*.hook_resid_post", "--out",
                 str(store), "--quiet"]) == 0
    capsys.readouterr()
    write_operating_point(_point("joy", 2.0, model="llama"), weight_fingerprint=tiny_llama.fingerprint)
    rec, err = _steer(capsys, tiny_dir, store, tmp_path / "same.json")
    assert "operating point (user): joy" in err and "other weights" not in err, err
    assert rec["operating_point"]["origin"] == "user" and rec["setting"]["strength"] == 2.0
    assert rec["setting"]["unit"] == "rms" and rec["operating_point"]["strength"] == 2.0
    write_operating_point(_point("joy", 2.0, model="llama"), weight_fingerprint="0123456789abcdef")
    rec, err = _steer(capsys, tiny_dir, store, tmp_path / "other.json")
    assert "warning:" in err and "tuned on other weights (fingerprint 0123456789abcdef" in err, err
    assert rec["operating_point"]["weight_fingerprint"] == "0123456789abcdef"
    assert rec["model"]["weight_fingerprint"] == tiny_llama.fingerprint


def _format1(path, *, mode="add", prompt=True):
    """A user table as versions before the one vocabulary wrote it (format 1: the strength was
    called "scale", its unit "strength")."""
    point = {"method": "mean-diff", "site": "resid_post", "layers": [1, 2], "scale": 2.5,
             "strength": "token-rms", "mode": mode, "positions": "all", "pooling": "last",
             "provisional": False, "source": "steer-eval run old"}
    if prompt:
        point["prompt"] = {"system_prompt": "Be afraid.", "user_suffix": "!", "scale": 0.75}
    table = {"format": 1, "models": {"smollm2-135m": {"weight_fingerprint": "aaaa",
                                                        "emotions": {"fear": point}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table))


def test_format_1_user_tables_still_read_with_the_new_names(home):
    from steering.operating_points import load_operating_points, prompt_mode

    _format1(user_path())
    point = operating_point("smollm2-135m", "fear")
    assert point.origin == "user" and point.strength == 2.5 and point.unit == "token-rms"
    assert point.factor is None and point.mode == "add"
    assert prompt_mode(point, "fear", ["Hi"]) == (["Hi!"], "Be afraid.", 0.75)
    assert "add x2.5 token-rms" in point.describe()
    table = load_operating_points(user_path())
    assert table["format"] == 2 and "scale" not in table["models"]["smollm2-135m"]["emotions"]["fear"]
    # writing another point moves the whole user table to format 2, the old point kept
    write_operating_point(_point("sadness", 1.25), weight_fingerprint="aaaa")
    written = json.loads(user_path().read_text())
    assert written["format"] == 2
    fear = written["models"]["smollm2-135m"]["emotions"]["fear"]
    assert (fear["strength"], fear["unit"], fear["prompt"]["strength"]) == (2.5, "token-rms", 0.75)
    assert "scale" not in fear and "scale" not in fear["prompt"]
    assert operating_point("smollm2-135m", "sadness").strength == 1.25


def test_format_1_scale_mode_reads_its_scale_as_the_factor(home):
    _format1(user_path(), mode="scale", prompt=False)
    point = operating_point("smollm2-135m", "fear")
    assert point.mode == "scale" and point.factor == 2.5 and point.strength == 0.0
    assert "scale x2.5" in point.describe()


def test_the_shipped_table_is_format_2():
    table = json.loads(shipped_path().read_text())
    assert table["format"] == 2
    for entry in table["models"].values():
        for point in entry["emotions"].values():
            assert {"strength", "unit"} <= set(point) and "scale" not in point
            assert point["unit"] in ("rms", "absolute", "token-rms")
