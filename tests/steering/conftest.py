"""Fixtures for the steering tests: tiny models and random vectors that fit them; the embedded
model, the shipped judge, the NRC lexicon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from probe.models import load_model
from probe.sites import Site
from steering.vector import SteeringVector

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


@pytest.fixture(scope="session")
def smollm():
    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def judge():
    from steering.judges.emotion import ClassifierJudge

    return ClassifierJudge.load()


@pytest.fixture(scope="session")
def lexicon(shared_data):
    from steering.judges.emotion import LexiconJudge

    return LexiconJudge.load(shared_data / "lexicons")


@pytest.fixture(scope="session")
def steered_fixtures() -> list[dict]:
    """Real replies of SmolLM2 steered crudely at alpha 4-12 (scripts/judges_report.py)."""
    path = FIXTURES / "degenerate_steered.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture()
def one_thread():
    """Small torch / BLAS work on a shared machine: one thread is faster and steadier."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)
