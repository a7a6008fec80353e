"""Fixtures for the steering tests: tiny models and random vectors that fit them."""

from __future__ import annotations

import pytest
import torch

from probe.models import load_model
from probe.sites import Site
from steering.vector import SteeringVector


def random_vector(lm, layers=(1,), *, seed: int = 0, kind: str = "hook_resid_post",
                  emotion: str = "joy", rms: float | None = 1.0) -> SteeringVector:
    """A random unit vector per layer, with provenance of ``lm`` (and a typical RMS)."""
    g = torch.Generator().manual_seed(seed)
    d = lm.arch.d_model(lm.model)
    dirs = {}
    for layer in layers:
        v = torch.randn(d, generator=g)
        dirs[Site(kind, layer)] = v / v.norm()
    meta = {**lm.provenance(), "emotion": emotion, "method": "random", "layers": list(layers)}
    if rms is not None:
        meta["rms"] = {str(s): rms for s in dirs}
    return SteeringVector(dirs, meta)


@pytest.fixture(scope="session")
def tiny_qwen(tiny_dir):
    return load_model(str(tiny_dir / "qwen2"), device="cpu", dtype="float32")


@pytest.fixture()
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
