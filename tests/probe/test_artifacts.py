"""Every .safetensors artifact is readable like the results beside it (0644 under umask 022),
not safetensors' private 0600, and written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from probe.artifacts import make_readable, save_safetensors


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_plain_safetensors_is_private_and_ours_is_not(tmp_path, umask022):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(3, dtype=np.float32)}, str(tmp_path / "raw.safetensors"))
    assert _mode(tmp_path / "raw.safetensors") == 0o600  # the fault this module exists for
    for name, tensors in (("np", {"a": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2]}),
                          ("pt", {"a": torch.arange(4.0)})):
        path = save_safetensors(tensors, tmp_path / f"{name}.safetensors", metadata={"k": "v"})
        assert _mode(path) == umask022
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    from safetensors import safe_open

    with safe_open(str(tmp_path / "np.safetensors"), "np") as f:
        assert f.metadata() == {"k": "v"}
        np.testing.assert_array_equal(f.get_tensor("a"), [[0, 2], [3, 5]])


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import probe.io

    def torn(src, dst):  # the temporary file is written, then the rename fails
        assert Path(src).stat().st_size > 0
        raise OSError("disk full")

    monkeypatch.setattr(probe.io.os, "replace", torn)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"a": np.zeros(2)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_every_artifact_writer_gives_0644(tmp_path, umask022):
    from circuits.baselines import MeanBaseline
    from probe.saved import save_probes
    from probe.sites import Site
    from steering.judges.build import save_artifact
    from steering.vector import SteeringVector

    vec = SteeringVector({Site("hook_resid_post", 1): torch.ones(4)}, meta={"model": "x"})
    files = [vec.save(tmp_path / "vec" / "joy")]
    files.append(save_probes(tmp_path / "run", "hook_resid_post", [0], {"last": {
        "coef": np.zeros((1, 2, 4)), "intercept": np.zeros((1, 2)), "mean": np.zeros((1, 4)),
        "scale": np.ones((1, 4))}}, {"classes": ["a", "b"]}))
    files.append(save_artifact({"x": 1}, {"w": np.ones((2, 2))}, tmp_path / "judge"
                               ).with_suffix(".safetensors"))
    files.append(MeanBaseline(content={Site("hook_resid_post", 0): torch.ones(4)}, n=1)
                 .save(tmp_path / "means.safetensors"))
    for f in files:
        assert f.suffix == ".safetensors" and _mode(f) == umask022, f


def test_a_saved_pretrained_model_folder_is_made_readable(tiny_llama, tmp_path, umask022):
    """What the one-time conversion of the embedded model does (probe.models)."""
    tiny_llama.model.save_pretrained(tmp_path / "m")
    weights = next((tmp_path / "m").glob("*.safetensors"))
    assert _mode(weights) == 0o600
    make_readable(tmp_path / "m")
    assert {_mode(p) for p in (tmp_path / "m").iterdir()} == {umask022}
