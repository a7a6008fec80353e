"""Fixtures for the steering tests: the embedded model, the shipped judge, the NRC lexicon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def smollm():
    from probe.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def judge():
    from steering.judges import ClassifierJudge

    return ClassifierJudge.load()


@pytest.fixture(scope="session")
def lexicon(shared_data):
    from steering.judges import LexiconJudge

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
