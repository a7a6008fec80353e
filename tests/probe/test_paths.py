"""Stores land in the project's cache/ wherever inside the checkout a command or notebook runs."""

from __future__ import annotations

from pathlib import Path

from probe.paths import cache_root, project_root
from probe.store import _env_cache_root

REPO = Path(__file__).resolve().parents[2]


def test_a_notebook_in_notebooks_finds_the_projects_cache(monkeypatch):
    monkeypatch.delenv("EMOPROBE_CACHE", raising=False)
    monkeypatch.chdir(REPO / "notebooks")  # where Jupyter runs a notebook
    assert project_root() == REPO
    assert cache_root() == REPO / "cache" and _env_cache_root() == REPO / "cache"
    monkeypatch.chdir(REPO)  # at the root: the relative ./cache, as before
    assert cache_root() == Path("cache")


def test_outside_a_checkout_and_with_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("EMOPROBE_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() is None and cache_root() == Path("cache")
    # another project's pyproject.toml (or a broken one) is not ours
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    (tmp_path / "sub").mkdir()
    assert project_root(tmp_path / "sub") is None
    (tmp_path / "pyproject.toml").write_text("[project\n")
    assert project_root(tmp_path / "sub") is None
    monkeypatch.setenv("EMOPROBE_CACHE", str(tmp_path / "stores"))
    assert cache_root() == tmp_path / "stores"
