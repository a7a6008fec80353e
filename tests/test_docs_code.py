"""Every python code block in README.md and docs/*.md runs as written.

Blocks of one page run in order in one namespace (a page's recipes build on its first block),
in a temporary working directory. A block that cannot run here says why, on the line before
its fence, as an HTML comment (invisible on the rendered page):

    <!-- docs-test: skip (needs a GPU and the LLaVA-1.5-7B weights) -->

and is reported as skipped with that reason. A block that reads what ``probe sweep`` leaves
behind (``cache/`` and ``runs/`` in the working directory) is marked

    <!-- docs-test: after-sweep -->

and runs in a folder where a small real sweep was made first (SmolLM2 on the session's
``--limit 84`` store, probes saved). Pages that load the embedded model or need the sweep
are marked slow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BLOCK = re.compile(r"(?:<!-- docs-test: (?:skip \((?P<reason>[^\n]*?)\)|(?P<sweep>after-sweep))"
                   r" -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
AFTER_SWEEP = "after-sweep"


def blocks(page: Path) -> list[tuple[str | None, str, int]]:
    """``(skip reason, "after-sweep" or None; code; line)`` of each python block of a page."""
    text = page.read_text(encoding="utf-8")
    return [(m["reason"] or m["sweep"], m["code"], text.count("\n", 0, m.start("code")))
            for m in BLOCK.finditer(text)]


def _slow(page: Path) -> bool:
    return any(mark == AFTER_SWEEP or (mark is None and "load_model(" in code)
               for mark, code, _ in blocks(page))


CASES = [pytest.param(page, i, marks=[pytest.mark.slow] if _slow(page) else [],
                      id=f"{page.relative_to(REPO_ROOT).as_posix()}:{line}")
         for page in PAGES for i, (_, _, line) in enumerate(blocks(page))]
_NAMESPACES: dict[Path, dict] = {}


@pytest.fixture(scope="session")
def swept(real_cache, tmp_path_factory) -> Path:
    """A working directory after ``probe sweep --limit 84`` (probes saved): ``cache/`` (the
    session's real store, reused) and ``runs/smollm2-135m/emotion-scenarios-emotion-*``."""
    from probe.cli import main

    work = tmp_path_factory.mktemp("docs-swept")
    (work / "cache").symlink_to(real_cache, target_is_directory=True)
    assert main(["sweep", "--limit", "84", "--cache-dir", str(work / "cache"),
                 "--bootstrap", "50", "--quiet",
                 "--out", str(work / "runs" / "smollm2-135m" / "emotion-scenarios-emotion-x")]) == 0
    return work


def test_the_parser_sees_every_block():
    """As many blocks as ```python fences, on every page (a typo in a marker hides none)."""
    for page in PAGES:
        assert len(blocks(page)) == page.read_text().count("```python\n"), page.name
    assert any(p.name == "interventions.md" for p in PAGES)
    assert sum(mark in (None, AFTER_SWEEP) for p in PAGES for mark, _, _ in blocks(p)) >= 10


@pytest.mark.parametrize("page, index", CASES)
def test_docs_block_runs(page, index, tmp_path_factory, monkeypatch, request):
    mark, code, line = blocks(page)[index]
    if mark not in (None, AFTER_SWEEP):
        pytest.skip(mark)
    namespace = _NAMESPACES.setdefault(page, {"__name__": f"docs_{page.stem}"})
    if namespace.get("__failed__"):
        pytest.skip(f"an earlier block of {page.name} failed")
    if any(m == AFTER_SWEEP for m, _, _ in blocks(page)):
        monkeypatch.chdir(request.getfixturevalue("swept"))
    else:
        monkeypatch.chdir(tmp_path_factory.mktemp(f"docs_{page.stem}"))
    try:
        exec(compile(code, f"{page.name}:{line + 1}", "exec"), namespace)
    except BaseException:
        namespace["__failed__"] = True
        raise
