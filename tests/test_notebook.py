"""The tutorial notebook runs top to bottom on the embedded model (a small slice)."""

from __future__ import annotations

import pytest

from tests.conftest import REAL_LIMIT, execute_notebook, stores_in


@pytest.mark.slow
def test_probing_notebook_executes(monkeypatch, real_cache):
    """On the session's real-model store: the notebook's cache cell finds it and reuses it."""
    before = stores_in(real_cache)
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_LIMIT", str(REAL_LIMIT))
    monkeypatch.setenv("EMOPROBE_CACHE", str(real_cache))
    outputs = execute_notebook("01_probing.ipynb")
    text = "".join(o.get("text", "") for o in outputs)
    assert "layer 15 accuracy per fold" in text and "resid_post" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure was not displayed"
    assert stores_in(real_cache) == before  # same store, nothing recomputed
