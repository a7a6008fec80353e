"""The tutorial notebook runs top to bottom on the embedded model (a small slice)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REAL_LIMIT, REPO_ROOT, stores_in


@pytest.mark.slow
def test_probing_notebook_executes(monkeypatch, real_cache):
    """On the session's real-model store: the notebook's cache cell finds it and reuses it."""
    before = stores_in(real_cache)
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_LIMIT", str(REAL_LIMIT))
    monkeypatch.setenv("EMOPROBE_CACHE", str(real_cache))
    nb = nbformat.read(REPO_ROOT / "notebooks" / "01_probing.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "layer 15 accuracy per fold" in text and "resid_post" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not displayed"
    assert stores_in(real_cache) == before  # same store, nothing recomputed
