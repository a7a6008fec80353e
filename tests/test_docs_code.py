"""Every python code block in README.md and docs/*.md runs as written.

Blocks of one page run in order in one namespace (a page's recipes build on its first block),
in a temporary working directory. A block that cannot run here says why, on the line before
its fence, as an HTML comment (invisible on the rendered page):

    <!-- docs-test: skip (needs a GPU and the LLaVA-1.5-7B weights) -->

and is reported as skipped with that reason. Pages whose blocks load the embedded model are
marked slow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BLOCK = re.compile(r"(?:<!-- docs-test: skip \((?P<reason>[^\n]*?)\) -->\n)?```python\n"
                   r"(?P<code>.*?)^```", re.S | re.M)
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def blocks(page: Path) -> list[tuple[str | None, str, int]]:
    """``(skip reason or None, code, line)`` of each python block of a page."""
    text = page.read_text(encoding="utf-8")
    return [(m["reason"], m["code"], text.count("\n", 0, m.start("code")))
            for m in BLOCK.finditer(text)]


CASES = [pytest.param(page, i, marks=[pytest.mark.slow] if any(
             "load_model(" in code for reason, code, _ in blocks(page) if reason is None) else [],
             id=f"{page.relative_to(REPO_ROOT).as_posix()}:{line}")
         for page in PAGES for i, (_, _, line) in enumerate(blocks(page))]
_NAMESPACES: dict[Path, dict] = {}


def test_the_parser_sees_every_block():
    """As many blocks as ```python fences, on every page (a typo in a marker hides none)."""
    for page in PAGES:
        assert len(blocks(page)) == page.read_text().count("```python\n"), page.name
    assert any(p.name == "interventions.md" for p in PAGES)
    assert sum(reason is None for p in PAGES for reason, _, _ in blocks(p)) >= 5


@pytest.mark.parametrize("page, index", CASES)
def test_docs_block_runs(page, index, tmp_path_factory, monkeypatch):
    reason, code, line = blocks(page)[index]
    if reason is not None:
        pytest.skip(reason)
    namespace = _NAMESPACES.setdefault(page, {"__name__": f"docs_{page.stem}"})
    if index and namespace.get("__failed__"):
        pytest.skip(f"an earlier block of {page.name} failed")
    monkeypatch.chdir(tmp_path_factory.mktemp(f"docs_{page.stem}"))
    try:
        exec(compile(code, f"{page.name}:{line + 1}", "exec"), namespace)
    except BaseException:
        namespace["__failed__"] = True
        raise
