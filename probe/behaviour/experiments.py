"""The experiments ``probe behave`` can run (``--experiments``), by name.

Kept apart from the command line (:mod:`probe.behaviour.cli`) and the runner
(:mod:`probe.behaviour.run`), which both read it.
"""

from __future__ import annotations

from collections.abc import Sequence

EXPERIMENTS = ("recognition", "personas", "emotionprompt", "persistence")


def parse_experiments(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated subset of :data:`EXPERIMENTS`."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return EXPERIMENTS
    return check_experiments(names, text)


def check_experiments(names: Sequence[str], text: str | None = None) -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`EXPERIMENTS` (``text``: what was typed)."""
    from probe.behaviour.templates import TemplateError

    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise TemplateError(f"unknown experiment {bad[0] if bad else (names if text is None else text)!r}; choose "
                            f"from {', '.join(EXPERIMENTS)} or all")
    return tuple(names)
