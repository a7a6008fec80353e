"""Nothing shipped records a machine's folders: no maintainer paths in data, docs or tables."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".json", ".jsonl", ".csv", ".md", ".ipynb")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|tmp)/")


def shipped_files() -> list[Path]:
    """Tracked files (git), or the shipped folders when this is not a git checkout."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        files = [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):
        files = [p for d in ("probe", "steering", "circuits", "datasets", "docs", "notebooks")
                 for p in (ROOT / d).rglob("*")] + [ROOT / "README.md"]
    return sorted(p for p in files if p.suffix in SUFFIXES and p.is_file()
                  and "tests" not in p.relative_to(ROOT).parts[:1])


def test_there_are_shipped_files_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in shipped_files()}
    assert {"README.md", "steering/operating_points.json", "docs/errors.md"} <= names


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_machine_paths(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    hits = [(i + 1, line.strip()[:120]) for i, line in enumerate(text.splitlines())
            if MACHINE_PATH.search(line)]
    assert not hits, f"{path.name} records machine paths (use ~/, relative or <name>): {hits[:3]}"


def _safetensors() -> list[Path]:
    return sorted(p for p in (ROOT / "steering" / "artifacts").rglob("*.safetensors"))


def test_there_are_shipped_vectors_to_check():
    assert len(_safetensors()) >= 5


@pytest.mark.parametrize("path", _safetensors(), ids=lambda p: p.name)
def test_no_machine_paths_in_safetensors_headers(path):
    """A vector's meta is also written into its safetensors header: no machine folders there."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    hits = [k for k, v in meta.items() if MACHINE_PATH.search(v)]
    assert not hits, f"{path.name}: header entries {hits} record machine paths (use ~/ or <name>)"


def test_operating_points_writer_keeps_no_paths(tmp_path):
    import json

    from steering.operating_points import OperatingPoint, portable, write_operating_point

    assert portable("--strong-judge /root/.cache/x/strong_judge --out /work/wt/runs/full`.") == \
        "--strong-judge <strong_judge> --out <full>`."
    assert portable("layers 6-11, ratio 1.96 <= 2 and 0.1/2, --out runs/x") == \
        "layers 6-11, ratio 1.96 <= 2 and 0.1/2, --out runs/x"
    path = write_operating_point(OperatingPoint(
        model="m", emotion="joy", method="mean-diff", site="resid_post", layers=(1, 2), strength=1.0,
        source="probe steer-eval run r: `probe steer-eval --out /home/me/runs/se`"),
        path=tmp_path / "points.json")
    source = json.loads(path.read_text())["models"]["m"]["emotions"]["joy"]["source"]
    assert "/home/" not in source and "<se>" in source
