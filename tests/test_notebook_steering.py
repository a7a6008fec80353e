"""The steering notebook runs top to bottom on the embedded model (the CI slice)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_steering_notebook_executes(monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SLICE", "1")
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMOPROBE_SHARED_DATA", str(shared_data))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(REPO_ROOT / "notebooks" / "02_steering.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "unsteered" in text and "happiness ->" in text and "steered - prompt-designed" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "prompt-designed+steered" in html and "ablate happiness" in "".join(
        o.get("data", {}).get("text/plain", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, "figures not displayed"
