"""The circuits notebook runs top to bottom on the embedded model (a small slice)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_circuits_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SLICE", "1")
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(REPO_ROOT / "notebooks" / "03_circuits.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "validation of atp against activation patching" in text
    assert "faithfulness" in text and "metric after" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "figures were not displayed"
