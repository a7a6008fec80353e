"""Tests that need the real datasets skip on a machine without them, and fail where CI requires them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

ONE_DATA_TEST = "tests/probe/test_data.py::test_sev_replies"


def _run(tmp_path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "EMOPROBE_REQUIRE_DATA"}
    full.update(EMOPROBE_SHARED_DATA=str(tmp_path / "no-data-here"), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           ONE_DATA_TEST], cwd=REPO_ROOT, env=full, capture_output=True, text=True,
                          timeout=300)


def test_the_data_test_exists():
    src = (REPO_ROOT / "tests/probe/test_data.py").read_text()
    assert f"def {ONE_DATA_TEST.split('::')[1]}(" in src and "shared_data" in src


def test_missing_data_skips_with_the_reason(tmp_path):
    res = _run(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 skipped" in res.stdout and "real data not found at" in res.stdout
    assert "EMOPROBE_SHARED_DATA" in res.stdout and "no-data-here" in res.stdout


def test_ci_turns_the_skip_into_a_failure(tmp_path):
    res = _run(tmp_path, EMOPROBE_REQUIRE_DATA="1")
    assert res.returncode != 0 and "skipped" not in res.stdout.splitlines()[-1]
    assert "EMOPROBE_REQUIRE_DATA is set" in res.stdout
