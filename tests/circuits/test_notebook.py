"""The circuits notebook runs top to bottom on the embedded model (a small slice)."""

from __future__ import annotations

import pytest

from tests.conftest import execute_notebook


@pytest.mark.slow
def test_circuits_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SLICE", "1")
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outputs = execute_notebook("03_circuits.ipynb")
    text = "".join(o.get("text", "") for o in outputs)
    assert "validation of atp against activation patching" in text
    assert "faithfulness" in text and "metric after" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "figures were not displayed"
