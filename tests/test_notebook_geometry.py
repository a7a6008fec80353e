"""The geometry notebook runs top to bottom on the embedded model (the CI slice)."""

from __future__ import annotations

import pytest

from tests.conftest import execute_notebook


@pytest.mark.slow
def test_geometry_notebook_executes(monkeypatch, shared_data):
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SLICE", "1")
    monkeypatch.setenv("EMOPROBE_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outputs = execute_notebook("05_geometry.ipynb", timeout=600)
    text = "".join(o.get("text", "") for o in outputs)
    assert "neutral PCs removed per layer" in text and "withhold the word" in text
    assert "SteeringVector('joy'" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "figures not displayed"
