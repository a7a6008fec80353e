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
    assert len(blocks()) == 5


def test_the_command_example_runs(monkeypatch, tmp_path):
    """The first two blocks need no model: a plugin command, registered and run."""
    from probe.errors import EmoprobeError

    ns = run(blocks()[:2], monkeypatch, tmp_path)
    assert set(ns["handlers"]) == {"count"}
    assert sorted(p.name for p in ns["out"].iterdir()) == ["counts.json", "run.json"]
    assert issubclass(ns["CountError"], EmoprobeError) and issubclass(ns["CountError"], ValueError)


@pytest.mark.slow
def test_every_example_runs_on_the_embedded_model(monkeypatch, tmp_path):
    from probe.arch import FAMILIES

    try:
        run(blocks(), monkeypatch, tmp_path)
    finally:
        FAMILIES.pop("my_llama_variant", None)  # the example registers a family
