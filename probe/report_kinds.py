"""The run kinds ``probe report`` knows: each command registers its own.

A run kind is the command that wrote a run folder. :func:`register_run_kind` tells the report
what it needs to show that kind's folders: the headline metric of its results table, the
captions of its figures, and how to recognise a folder whose ``run.json`` names no ``probe``
command. A plugin calls it in its ``register(sub)``, next to adding its parser, so the core
report names no plugin.

The core's own kinds (``sweep``, and ``run`` for anything else) are registered here. A plugin
registers its own in a function of no arguments that its ``register(sub)`` calls (so the command
line knows them) and that it declares as an entry point of the group ``emoprobe.report_kinds``
in its ``pyproject.toml``; a report built from Python loads those entry points on first use
(:func:`run_kinds`). The core imports no plugin.

>>> register_run_kind("my-kind", headline_metric="auroc",
...                   captions=[(r"my_plot_(.+)", "My plot for {x}.")]).headline_metric
'auroc'
>>> _ = _KINDS.pop("my-kind")
"""

from __future__ import annotations

from importlib.metadata import entry_points
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: ``detect(names)``: whether a folder holding the files ``names`` was written by this kind.
Detector = Callable[[set], bool]


@dataclass(frozen=True)
class RunKind:
    """What the report knows of one run kind (see :func:`register_run_kind`)."""

    name: str
    headline_metric: str | None = None
    experiment_headlines: tuple[tuple[str, str], ...] = ()
    captions: tuple[tuple[str, str], ...] = ()
    detect: Detector | None = None


_KINDS: dict[str, RunKind] = {}
#: Entry-point group whose functions register a plugin's kinds (called with no arguments).
ENTRY_POINT_GROUP = "emoprobe.report_kinds"
_loaded = False


def register_run_kind(name: str, *, headline_metric: str | None = None,
                      experiment_headlines: Mapping[str, str] | None = None,
                      captions: Iterable[tuple[str, str]] = (),
                      detect: Detector | None = None) -> RunKind:
    """Tell ``probe report`` about the run kind ``name`` (the ``probe`` subcommand that writes it).

    Args:
        name: the subcommand, as ``run.json``'s ``command`` names it (``probe NAME ...``).
        headline_metric: the metric its ``results.csv`` is shown by when the table has no
            experiment column (default: the first of :data:`probe.report.HEADLINE` present).
        experiment_headlines: ``{experiment: metric}``: the headline of an experiment's rows in
            a results table with an ``experiment`` column, where the first of ``HEADLINE``
            present would pick a weaker one (experiment names are shared by all kinds).
        captions: ``(file-name pattern, caption)`` pairs for its figures; the pattern is matched
            against the whole file stem and its group fills ``{x}`` in the caption.
        detect: ``detect(names) -> bool`` on the set of file names in a folder whose
            ``run.json`` names no ``probe`` command (older or hand-made folders). Detectors run
            in registration order, the plugins' before the core's ``sweep``.

    Registering a name again replaces it (registration may run more than once).
    """
    kind = RunKind(name, headline_metric, tuple((experiment_headlines or {}).items()),
                   tuple(captions), detect)
    _KINDS[name] = kind
    return kind


def run_kinds() -> dict[str, RunKind]:
    """Every registered kind, in registration order; runs ``probe``'s registration path first
    if nothing has yet (a report built from Python)."""
    global _loaded
    if not _loaded:
        _loaded = True
        # every plugin's kinds, through the entry points it declares (group
        # ``emoprobe.report_kinds``): the core imports no plugin
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()()
    return dict(_KINDS)


def captions() -> list[tuple[str, str]]:
    """Every registered ``(pattern, caption)``, the core's first."""
    return [c for kind in run_kinds().values() for c in kind.captions]


def detect_from_files(names: set) -> str:
    """The kind whose detector claims a folder with the files ``names``: the plugins' first,
    then ``sweep``; ``"run"`` when none does."""
    kinds = list(run_kinds().values())
    core = [k for k in kinds if k.name in _CORE]
    for kind in [k for k in kinds if k.name not in _CORE] + core:
        if kind.detect is not None and kind.detect(names):
            return kind.name
    return "run"


register_run_kind("sweep", captions=(
    (r"layerwise_(.+)", "Probe score against layer, pooling {x}: the cross-validated score per "
                        "site with its cluster-bootstrap CI band (held-out data dashed), next to "
                        "chance, the lexical (TF-IDF) baseline and the control task; peaks "
                        "marked."),
    (r"panels_(.+)", "One panel per metric, pooling {x}: each probe metric against layer with its "
                     "CI band and the same baselines."),
), detect=lambda names: any(n.startswith("layerwise_") for n in names))
register_run_kind("run")
_CORE = frozenset(_KINDS)
