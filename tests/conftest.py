"""Shared fixtures. Tests never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


#: Set (to 1) by ``.ci/run``: tests that need the real datasets fail instead of skipping.
REQUIRE_DATA_ENV = "EMOPROBE_REQUIRE_DATA"


def shared_data_path() -> Path:
    """Where the real datasets are looked for: ``$EMOPROBE_SHARED_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("EMOPROBE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def missing_data_reason(path: Path) -> str | None:
    """Why the real data at ``path`` cannot be used (None when it can)."""
    if not path.is_dir():
        return (f"real data not found at {path} (GoEmotions, dair-ai, EmoBank, MELD, SEV, NRC "
                "lexicons; README 'Real data'): put the folder there or point "
                "EMOPROBE_SHARED_DATA at it")
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (``../shared/data``; CI has shared/ beside the clone).

    A user's machine has no such folder: tests that need it skip with the reason. ``.ci/run``
    sets ``EMOPROBE_REQUIRE_DATA=1``, which turns that skip into a failure so CI always runs them.
    """
    path = shared_data_path()
    reason = missing_data_reason(path)
    if reason is not None:
        if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
            pytest.fail(f"{reason} ({REQUIRE_DATA_ENV} is set: the data is required here)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Every tiny family saved under one directory (built once per session)."""
    from tests.tiny import FAMILIES, save_tiny

    root = tmp_path_factory.mktemp("tiny")
    for family in FAMILIES:
        save_tiny(family, root)
    return root


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir):
    from probe.models import load_model

    return load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")


#: The real-model slice every integration test shares: 12 scenarios x 7 emotions.
REAL_LIMIT = 84


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """A cache root holding ONE store: SmolLM2 on ``--limit 84`` of the default dataset.

    Built once per session through the CLI (``probe cache --limit 84``), with the CLI's
    defaults (sites, poolings, batch size), so the end-to-end CLI test and the notebook find it
    complete under the same key and cache nothing themselves.
    """
    from probe.cli import main

    root = tmp_path_factory.mktemp("real-cache")
    assert main(["cache", "--limit", str(REAL_LIMIT), "--cache-dir", str(root), "--quiet"]) == 0
    return root


def stores_in(root: Path) -> dict[Path, int]:
    """Every store under a cache root, with the newest modification time of its files."""
    return {p: max(f.stat().st_mtime_ns for f in p.rglob("*")) for p in root.glob("*/*.zarr")}


@pytest.fixture()
def toy_dataset():
    from probe.data.schema import EmotionDataset
    from tests.tiny import CORPUS

    labels = ["sadness", "joy", "neutral", "anger", "fear", "joy"]
    rows = [{"id": f"r{i}", "text": t, "label": labels[i % 6], "group": f"g{i % 12}"}
            for i, t in enumerate(CORPUS)]
    return EmotionDataset.from_records("toy", rows)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """Tiny vision- and audio-language models with their processors (tests/tiny_vlm.py)."""
    from tests.tiny_vlm import VLM_FAMILIES, save_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlm")
    for family in VLM_FAMILIES:
        save_tiny_vlm(family, root)
    return root


@pytest.fixture(scope="session")
def tiny_vlm(tiny_vlm_dir):
    """``tiny_vlm(family)``: that family's model loaded through probe.models (cached)."""
    from probe.models import load_model

    loaded: dict = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = load_model(str(tiny_vlm_dir / family), device="cpu", dtype="float32")
        return loaded[family]
    return get


def execute_notebook(name: str, timeout: int = 600) -> list[dict]:
    """Run ``notebooks/<name>`` top to bottom; its code cells' outputs (none an error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else ""
    return outputs
