"""SteeringVector values: arithmetic, views, cosines, files with checksums, model checks."""

from __future__ import annotations

import json

import pytest
import torch

from probe.sites import Site
from steering.vector import SteeringError, SteeringVector, VectorSet, cosine_matrix, layer_cosine
from tests.steering.conftest import random_vector

S0, S1, S2 = (Site("hook_resid_post", i) for i in range(3))


def _vec(values: dict, **meta) -> SteeringVector:
    return SteeringVector({s: torch.tensor(v, dtype=torch.float32) for s, v in values.items()},
                          {"weight_fingerprint": "w", "d_model": 2, **meta})


def test_arithmetic_is_sitewise_and_keeps_provenance():
    a = _vec({S0: [1.0, 0.0], S1: [0.0, 2.0]}, emotion="joy", method="mean-diff",
             rms={str(S0): 3.0, str(S1): 4.0})
    b = _vec({S1: [1.0, 1.0], S2: [2.0, 2.0]}, emotion="sadness", method="mean-diff",
             rms={str(S2): 5.0})
    d = a - b
    assert d.sites == [S0, S1, S2]
    assert torch.equal(d[S0], torch.tensor([1.0, 0.0]))
    assert torch.equal(d[S1], torch.tensor([-1.0, 1.0]))
    assert torch.equal(d[S2], torch.tensor([-2.0, -2.0]))
    assert d.emotion == "joy-sadness" and d.meta["method"] == "arithmetic"
    assert d.meta["weight_fingerprint"] == "w" and d.rms(S2) == 5.0 and d.rms(S0) == 3.0
    assert torch.equal((2 * a)[S1], torch.tensor([0.0, 4.0]))
    assert torch.equal((a * 2)[S1], (a / 0.5)[S1])
    assert torch.equal((-a)[S0], torch.tensor([-1.0, 0.0])) and (-a).emotion == "-joy"
    assert (a + b - b).emotion == "(joy+sadness)-sadness"
    with pytest.raises(SteeringError, match="different models"):
        a + _vec({S0: [1.0, 1.0]}, weight_fingerprint="other")
    with pytest.raises(SteeringError, match="divide"):
        a / 0


def test_normalized_cosine_and_at():
    a = _vec({S0: [3.0, 4.0], S1: [0.0, 2.0]})
    b = _vec({S0: [4.0, -3.0], S1: [0.0, -5.0]})
    n = a.normalized()
    assert all(abs(x - 1) < 1e-6 for x in n.norms().values())
    cos = a.cosine(b)
    assert cos[S0] == pytest.approx(0.0, abs=1e-7) and cos[S1] == pytest.approx(-1.0)
    assert a.at(1).sites == [S1] and a.at([0, 1]).sites == [S0, S1]
    with pytest.raises(SteeringError, match="not in this vector"):
        a.at(5)
    with pytest.raises(SteeringError, match="zero"):
        _vec({S0: [0.0, 0.0]}).normalized()
    names, m = cosine_matrix({"a": a, "b": b}, S1)
    assert names == ["a", "b"] and torch.allclose(m, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    sites, lm_ = layer_cosine(a)
    assert sites == [S0, S1] and lm_[0, 1] == pytest.approx(0.8)


def test_construction_checks():
    with pytest.raises(SteeringError, match="at least one"):
        SteeringVector({}, {})
    with pytest.raises(SteeringError, match="1-D"):
        SteeringVector({S0: torch.ones(2, 2)}, {})
    with pytest.raises(SteeringError, match="NaN"):
        SteeringVector({S0: torch.tensor([1.0, float("nan")])}, {})
    v = SteeringVector({"blocks.3.hook_resid_post": torch.ones(4, dtype=torch.float64)}, {})
    assert v.sites == [Site("hook_resid_post", 3)] and v[v.sites[0]].dtype == torch.float32


def test_save_load_round_trip_and_checksum(tmp_path, tiny_llama):
    lm = tiny_llama
    vec = random_vector(lm, layers=(0, 2), emotion="joy")
    path = vec.save(tmp_path / "joy")
    assert path.name == "joy.safetensors" and (tmp_path / "joy.json").is_file()
    side = json.loads((tmp_path / "joy.json").read_text())
    assert side["weight_fingerprint"] == lm.fingerprint and side["sha256"] == vec.checksum()
    back = SteeringVector.load(tmp_path / "joy", lm)
    assert back.sites == vec.sites and all(torch.equal(back[s], vec[s]) for s in vec.sites)
    assert back.meta["emotion"] == "joy" and back.rms(vec.sites[0]) == 1.0
    assert not list(tmp_path.glob(".*tmp"))
    # a corrupted tensor is caught by the checksum
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors[str(vec.sites[0])][0] += 1
    header = json.dumps({**side})
    save_file(tensors, str(path), metadata={"emoprobe": header})
    with pytest.raises(SteeringError, match="corrupt"):
        SteeringVector.load(path)
    with pytest.raises(SteeringError, match="no steering vector"):
        SteeringVector.load(tmp_path / "missing")


def test_load_checks_the_model(tmp_path, tiny_llama, tiny_dir):
    from probe.models import load_model

    vec = random_vector(tiny_llama, layers=(1,))
    other = SteeringVector(vec.directions, {**vec.meta, "weight_fingerprint": "0123456789abcdef"})
    other.save(tmp_path / "other")  # same architecture, other weights (e.g. a fine-tune)
    with pytest.raises(SteeringError, match="weights 0123456789abcdef"):
        SteeringVector.load(tmp_path / "other", tiny_llama)
    assert SteeringVector.load(tmp_path / "other", tiny_llama, match="architecture").sites == vec.sites
    vec.save(tmp_path / "v")
    gpt2 = load_model(str(tiny_dir / "gpt2"), device="cpu", dtype="float32")
    with pytest.raises(SteeringError, match="architecture='llama'"):
        SteeringVector.load(tmp_path / "v", gpt2, match="architecture")
    assert SteeringVector.load(tmp_path / "v", gpt2, match="none").sites == vec.sites
    qwen3 = load_model(str(tiny_dir / "qwen3"), device="cpu", dtype="float32")
    deep = random_vector(qwen3, layers=(1,), emotion="x")
    bad = SteeringVector({Site("hook_resid_post", 1): torch.ones(48)}, {**deep.meta, "d_model": 48})
    with pytest.raises(SteeringError, match="d_model=48"):
        bad.check(qwen3)


def test_vector_set_save_load_and_unknown_emotion(tmp_path, tiny_llama):
    vs = VectorSet(joy=random_vector(tiny_llama, emotion="joy"),
                   fear=random_vector(tiny_llama, seed=1, emotion="fear"))
    vs.save(tmp_path)
    back = VectorSet.load(tmp_path, tiny_llama)
    assert sorted(back) == ["fear", "joy"]
    with pytest.raises(SteeringError, match="no direction for emotion 'anger'.*fear"):
        back["anger"]
    with pytest.raises(SteeringError, match="no steering vectors"):
        VectorSet.load(tmp_path / "empty")


def test_gguf_export_reads_back_the_same_tensors(tmp_path, tiny_llama):
    import gguf

    from steering.gguf_export import export_gguf, gguf_layer

    vec = random_vector(tiny_llama, layers=(1, 2), rms=2.5)
    path = export_gguf(vec, tmp_path / "joy")
    assert path.name == "joy.gguf"
    reader = gguf.GGUFReader(str(path))
    assert bytes(reader.get_field("general.architecture").parts[-1]).decode() == "controlvector"
    assert bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode() == "llama"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 2
    got = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert sorted(got) == ["direction.1", "direction.2"]
    for site in vec.sites:  # float32 rms * v, written and read back unchanged
        want = (2.5 * vec[site].double()).float()
        assert torch.equal(got[f"direction.{site.layer}"], want)
    raw = export_gguf(vec, tmp_path / "raw.gguf", unit="absolute")
    back = {t.name: t.data for t in gguf.GGUFReader(str(raw)).tensors}
    assert torch.equal(torch.from_numpy(back["direction.1"].copy()), vec[vec.sites[0]])
    # what llama.cpp cannot express is refused, with the reason
    assert gguf_layer(Site("hook_resid_pre", 3)) == 2 and gguf_layer(Site("hook_mlp_out", 3)) == 3
    for bad in (Site("hook_resid_post", 0), Site("hook_attn_out", 2), Site("attn.hook_z", 2, head=1)):
        with pytest.raises(SteeringError):
            gguf_layer(bad)
    with pytest.raises(SteeringError, match="block 0"):
        export_gguf(random_vector(tiny_llama, layers=(0, 1)), tmp_path / "l0")
    assert not (tmp_path / "l0.gguf").exists()
