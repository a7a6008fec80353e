"""The experiments ``probe behave`` can run (``--experiments``), by name.

Kept apart from the command line (:mod:`probe.behaviour.cli`) and the runner
(:mod:`probe.behaviour.run`), which both read it.
"""

from __future__ import annotations

EXPERIMENTS = ("recognition", "personas", "emotionprompt", "persistence")


def parse_experiments(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated subset of :data:`EXPERIMENTS`."""
    from probe.behaviour.templates import TemplateError

    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return EXPERIMENTS
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise TemplateError(f"unknown experiment {bad[0] if bad else text!r}; choose from "
                            f"{', '.join(EXPERIMENTS)} or all")
    return tuple(names)
