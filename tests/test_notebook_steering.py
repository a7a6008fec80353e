"""The steering notebook runs top to bottom on the embedded model (the CI slice)."""

from __future__ import annotations

import pytest

from tests.conftest import execute_notebook


@pytest.mark.slow
def test_steering_notebook_executes(monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SLICE", "1")
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMOPROBE_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outputs = execute_notebook("02_steering.ipynb", timeout=300)
    text = "".join(o.get("text", "") for o in outputs)
    assert "unsteered" in text and "happiness ->" in text and "steered - prompt-designed" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "prompt-designed+steered" in html and "ablate happiness" in "".join(
        o.get("data", {}).get("text/plain", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, "figures not displayed"
