"""The behaviour notebook runs top to bottom on the embedded model (a small slice)."""

from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REAL_LIMIT, REPO_ROOT, stores_in


@pytest.mark.slow
def test_behaviour_notebook_executes(monkeypatch, real_cache):
    """On the session's real-model store (reused, not recomputed), the small slice."""
    before = stores_in(real_cache)
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_LIMIT", str(REAL_LIMIT))
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("EMOPROBE_CACHE", str(real_cache))
    nb = nbformat.read(REPO_ROOT / "notebooks" / "04_behaviour.ipynb", as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()
    seconds = time.time() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "probe peak (last pooling)" in text and "held-out stimuli" in text
    assert "flip_to" in html and "calibrated" in html
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2, "the persistence and flips figures were not displayed"
    assert stores_in(real_cache) == before  # same store, nothing recomputed
    assert seconds < 180, f"the small slice took {seconds:.0f} s"
