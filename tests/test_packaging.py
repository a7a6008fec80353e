"""A wheel (not only an editable install) carries the code and the stimulus data, from any cwd."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(REPO_ROOT)], check=True, capture_output=True)
    (path,) = out.glob("emoprobe-*.whl")
    return path


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("probe/cli.py", "probe/_datasets/emotion_scenarios/stimuli.jsonl",
                   "probe/_datasets/emotion_scenarios/CARD.md", "circuits/__init__.py",
                   "steering/__init__.py"):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "probe = probe.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert not [n for n in names if n.startswith(("tests/", "cache/", "datasets/"))]


def test_installed_wheel_works_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = ("import probe, probe.data as d; ds = d.load_dataset('emotion-scenarios'); "
            "print(probe.__file__); print(len(ds), ds.card)")
    env = dict(os.environ, PYTHONPATH=str(site))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True)
    first, second = res.stdout.splitlines()
    assert first.startswith(str(site))
    assert second.startswith("448") and str(site) in second


def test_notebook_tools_are_an_extra_setup_installs():
    """`jupyter nbconvert --execute` and widget progress bars need nbconvert and ipywidgets."""
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in extras["notebooks"]}
    assert {"nbconvert", "ipywidgets", "ipykernel"} <= names
    script = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "--notebooks) " in script and "notebooks" in script
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup.sh"), "--bogus"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr
