"""Fixtures for the circuits tests: tiny models in float64 (exactness tests) and float32."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from tests.tiny import CORPUS

TEXTS = CORPUS[:6]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny solves on a shared machine: 2 busy-waiting threads can be 5x slower than 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


def _load(tiny_dir, family, dtype="float32"):
    from probe.models import load_model

    return load_model(str(tiny_dir / family), device="cpu", dtype=dtype)


@pytest.fixture(scope="session")
def llama(tiny_dir):
    return _load(tiny_dir, "llama")


def load64(tiny_dir, family: str = "llama"):
    """float64: linear identities hold to ~1e-12, so AtP and patching can be compared exactly."""
    lm = _load(tiny_dir, family)
    lm.model.double()
    with torch.no_grad():  # random init writes little into the residual: make sublayers matter
        for block in lm.arch.layers(lm.model):
            block.self_attn.o_proj.weight.mul_(20)
            block.mlp.down_proj.weight.mul_(20)
    lm.dtype = torch.float64
    return lm


@pytest.fixture(scope="session")
def llama64(tiny_dir):
    return load64(tiny_dir)


@pytest.fixture(scope="session")
def family_lm(tiny_dir):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = _load(tiny_dir, family)
        return cache[family]
    return get


def direction_for(lm, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lm.arch.d_model(lm.model), generator=g, dtype=torch.float64)
