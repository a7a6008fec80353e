"""docs/extending.md runs as written: its python blocks, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def run(codes: list[str], monkeypatch, tmp_path) -> dict:
    monkeypatch.chdir(tmp_path)  # whatever a block writes by default lands here
    namespace: dict = {"__name__": "docs_extending"}
    for i, code in enumerate(codes):
        exec(compile(code, f"{DOC.name}[block {i}]", "exec"), namespace)
    return namespace


def test_the_page_has_its_examples():
    assert len(blocks()) == 8


@pytest.fixture(autouse=True)
def _registries(monkeypatch):
    """The examples register a pooling, a probe kind, a family and a run kind: gone after each
    test."""
    from probe.arch import FAMILIES
    from probe.modality import POOLING_MODALITY
    from probe.pooling import POOLING_FUNCTIONS
    from probe.probe_kinds import PROBE_KINDS
    from probe.report_kinds import _KINDS

    for table, key in ((POOLING_FUNCTIONS, "content-first"), (POOLING_MODALITY, "content-first"),
                       (FAMILIES, "my_llama_variant"), (_KINDS, "count"),
                       (PROBE_KINDS, "nearest-mean")):
        monkeypatch.setitem(table, key, None)
        monkeypatch.delitem(table, key)


def test_the_examples_without_a_model_run(monkeypatch, tmp_path):
    """The first five blocks need no model: a plugin command, registered and run; its run kind
    in the report; a pooling; a probe kind."""
    from probe.errors import EmoprobeError
    from probe.pooling import POOLING_FUNCTIONS
    from probe.probe_kinds import PROBE_KINDS

    ns = run(blocks()[:5], monkeypatch, tmp_path)
    assert POOLING_FUNCTIONS["content-first"] is ns["content_first"]
    assert PROBE_KINDS["nearest-mean"].cross_val is ns["nearest_mean_cv"]
    assert ns["table"]["nearest-mean"][1] > ns["table"]["nearest-mean"][0]
    assert set(ns["handlers"]) == {"count"}
    assert '<span class="kind">count</span>' in ns["page"]
    assert sorted(p.name for p in ns["out"].iterdir()) == ["counts.json", "run.json"]
    assert issubclass(ns["CountError"], EmoprobeError) and issubclass(ns["CountError"], ValueError)


@pytest.mark.slow
def test_every_example_runs_on_the_embedded_model(monkeypatch, tmp_path):
    run(blocks(), monkeypatch, tmp_path)
