"""The behaviour notebook runs top to bottom on the embedded model (a small slice)."""

from __future__ import annotations

import pytest

from tests.conftest import REAL_LIMIT, execute_notebook, stores_in


@pytest.mark.slow
def test_behaviour_notebook_executes(monkeypatch, real_cache):
    """On the session's real-model store (reused, not recomputed), the small slice."""
    before = stores_in(real_cache)
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_LIMIT", str(REAL_LIMIT))
    monkeypatch.setenv("EMOPROBE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("EMOPROBE_CACHE", str(real_cache))
    outputs = execute_notebook("04_behaviour.ipynb")
    text = "".join(o.get("text", "") for o in outputs)
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "probe peak (last pooling)" in text and "held-out stimuli" in text
    assert "flip_to" in html and "calibrated" in html
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2, "the persistence and flips figures were not displayed"
    assert stores_in(real_cache) == before  # same store, nothing recomputed
