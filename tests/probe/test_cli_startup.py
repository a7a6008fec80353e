"""``probe --help`` and ``probe COMMAND --help`` answer before torch, transformers or pandas load.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds
torch). Plugins registered through entry points are built too, so a registration function that
imports something heavy at import time fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "pandas", "xarray", "zarr", "matplotlib", "sklearn", "scipy")

PROGRAM = """
import contextlib, io, json, sys
from probe.cli import build_parser, main
parser = build_parser()
commands = sorted(parser.handlers)
for argv in [["--help"]] + [[c, "--help"] for c in commands]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps({"commands": commands,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}))
"""


def _run(program: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{program}"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)  # torch import under heavy load
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def startup() -> dict:
    return _run(PROGRAM)


def test_every_help_page_is_built_without_heavy_imports(startup):
    assert startup["heavy"] == []


def test_the_help_check_sees_every_command_and_would_see_torch(startup):
    """The check is not vacuous: it builds probe's own and the plugins' commands, and it
    reports torch when something imports it."""
    assert {"cache", "sweep", "behave", "conflict", "report"} <= set(startup["commands"])
    assert {"steer", "circuits"} <= set(startup["commands"])  # entry points
    assert _run("import torch, json, sys\nprint(json.dumps({'heavy': sorted(m for m in "
                "sys.modules if m.split('.')[0] in HEAVY and '.' not in m)}))")["heavy"] == ["torch"]
