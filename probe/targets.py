"""Which task a target is: classification or regression, chosen only when unambiguous.

A target column reaches a sweep as class names (``label`` targets: strings) or as numbers
(``continuous`` targets: a CSV column of numbers, EmoBank ratings). Strings are class labels
and non-integer numbers are scores; whole numbers (emotion ids 0-6, a 1-5 rating) could be
either, so the user must say which (``--task`` / ``task=``) instead of the toolkit guessing.

>>> resolve_task(np.array(["joy", "", "fear"]), "label", target="emotion").describe()
"target 'emotion': classification, 2 classes (fear, joy); inferred: the values are text labels"
>>> resolve_task(np.array([0.0, 6.0, 2.0]), "continuous", target="label",
...              task="classification").classes
('0', '2', '6')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe.stats import ProbeError, Task

TASKS = ("classification", "regression")


@dataclass(frozen=True, kw_only=True)
class TargetTask:
    """A target resolved to a task: the usable rows and their targets.

    Attributes:
        target: The target column.
        task: ``"classification"`` or ``"regression"``.
        y: Targets of the usable rows: class names (str) or floats.
        rows: Indices of the usable rows (rows without a value are left out).
        reason: Why this task: ``"--task classification"`` or what was inferred from.
    """

    target: str
    task: Task
    y: np.ndarray
    rows: np.ndarray
    reason: str

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names, numeric ones in numeric order (None for regression)."""
        if self.task == "regression":
            return None
        names = np.unique(self.y).tolist()
        numeric = all(_is_number(c) for c in names)
        return tuple(sorted(names, key=float) if numeric else names)

    def describe(self) -> str:
        """One line for the user, e.g. ``target 'A': regression, values 1.20 to 4.60; ...``."""
        if self.task == "regression":
            what = f"values {self.y.min():.2f} to {self.y.max():.2f}"
        else:
            shown = self.classes[:12]
            what = f"{len(self.classes)} classes ({', '.join(shown)}" + (
                ", ...)" if len(self.classes) > len(shown) else ")")
        return f"target {self.target!r}: {self.task}, {what}; {self.reason}"


def resolve_task(values: np.ndarray, kind: str, *, target: str,
                 task: Task | None = None) -> TargetTask:
    """Decide the task of a target column and return its usable rows.

    Args:
        values: The column: strings (``""`` or None where missing) or floats (NaN missing).
        kind: The dataset's kind for the column: ``"label"``, ``"continuous"`` or
            ``"multilabel"``.
        target: The column name (for messages).
        task: What the user asked for, or None to infer: text labels are classification,
            non-integer numbers regression; whole numbers are refused as ambiguous.

    Raises:
        ProbeError: A multi-label target, whole numbers without ``task``, text labels with
            ``task="regression"``, non-integer numbers with ``task="classification"``, or an
            unknown task.
    """
    if task is not None and task not in TASKS:
        raise ProbeError(f"task must be one of {list(TASKS)}, got {task!r}")
    if kind == "multilabel":
        raise ProbeError(
            f"target {target!r} is multi-label. Probe a single-label view instead: for GoEmotions "
            "--target ekman (Ekman groups; rows whose labels disagree are left out) or --target "
            "label (rows with exactly one label)")
    if kind == "continuous":
        return _numbers(np.asarray(values, dtype=float), target, task)
    labels = np.array(["" if v is None or v != v else str(v).strip() for v in values], dtype=object)
    rows = np.flatnonzero(labels != "")
    if task != "regression":
        reason = "--task classification" if task else "inferred: the values are text labels"
        return TargetTask(target=target, task="classification", y=labels[rows].astype(str),
                          rows=rows, reason=reason)
    bad = [v for v in labels[rows] if not _is_number(v)]
    if bad:
        raise ProbeError(f"--task regression needs numbers, but target {target!r} holds class "
                         f"labels such as {sorted(set(bad))[:3]}; use --task classification")
    return TargetTask(target=target, task="regression", y=labels[rows].astype(float), rows=rows,
                      reason="--task regression")


def _numbers(values: np.ndarray, target: str, task: Task | None) -> TargetTask:
    rows = np.flatnonzero(np.isfinite(values))
    y = values[rows]
    whole = bool(len(y)) and bool(np.all(y == np.round(y)))
    if task == "regression" or (task is None and not whole):
        reason = "--task regression" if task else "inferred: the values are not whole numbers"
        return TargetTask(target=target, task="regression", y=y, rows=rows, reason=reason)
    if task is None:
        values = np.unique(y)
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise ProbeError(
            f"target {target!r} holds whole numbers ({shown}): "
            "class ids or a score? Pass --task classification (each value is a class) or --task "
            "regression (the values are a quantity); in Python, task='classification' or "
            "'regression'")
    if not whole:
        example = y[y != np.round(y)][0]
        raise ProbeError(f"--task classification needs class labels, but target {target!r} holds "
                         f"non-integer numbers such as {example:g}; use --task regression")
    labels = np.array([str(int(v)) for v in y])
    return TargetTask(target=target, task="classification", y=labels, rows=rows,
                      reason="--task classification")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
