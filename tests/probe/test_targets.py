"""Task inference: only when unambiguous; whole numbers must be declared."""

from __future__ import annotations

import numpy as np
import pytest

from probe.stats import ProbeError, infer_task
from probe.targets import resolve_task


def test_text_labels_are_classification_and_missing_rows_are_left_out():
    tt = resolve_task(np.array(["joy", "", "fear", None], dtype=object), "label", target="emotion")
    assert tt.task == "classification" and tt.rows.tolist() == [0, 2]
    assert tt.y.tolist() == ["joy", "fear"] and "inferred" in tt.reason
    assert tt.describe() == ("target 'emotion': classification, 2 classes (fear, joy); "
                             "inferred: the values are text labels")


def test_non_integer_numbers_are_regression():
    tt = resolve_task(np.array([1.2, np.nan, 3.0, 4.6]), "continuous", target="A")
    assert tt.task == "regression" and tt.rows.tolist() == [0, 2, 3]
    assert tt.describe().startswith("target 'A': regression, values 1.20 to 4.60")


def test_whole_numbers_must_be_declared():
    ids = np.array([0.0, 6.0, 2.0, 2.0, 10.0])
    with pytest.raises(ProbeError, match=r"whole numbers \(0, 2, 6, 10\).*--task classification"):
        resolve_task(ids, "continuous", target="label")
    as_classes = resolve_task(ids, "continuous", target="label", task="classification")
    assert as_classes.y.tolist() == ["0", "6", "2", "2", "10"]
    assert as_classes.classes == ("0", "2", "6", "10")  # numeric order for display
    assert "--task classification" in as_classes.describe()
    as_scores = resolve_task(ids, "continuous", target="label", task="regression")
    assert as_scores.task == "regression" and as_scores.y.dtype.kind == "f"


def test_contradictory_requests_are_refused():
    with pytest.raises(ProbeError, match="needs numbers.*'joy'"):
        resolve_task(np.array(["joy", "fear"]), "label", target="emotion", task="regression")
    with pytest.raises(ProbeError, match="non-integer numbers such as 2.5"):
        resolve_task(np.array([1.0, 2.5]), "continuous", target="V", task="classification")
    with pytest.raises(ProbeError, match="multi-label"):
        resolve_task(np.array(["a|b"]), "multilabel", target="emotions")
    with pytest.raises(ProbeError, match="task must be one of"):
        resolve_task(np.array(["a"]), "label", target="x", task="ranking")
    numeric_labels = resolve_task(np.array(["1", "2.5"]), "label", target="x", task="regression")
    assert numeric_labels.y.tolist() == [1.0, 2.5]


def test_infer_task_refuses_whole_number_floats():
    assert infer_task(np.array(["a", "b"])) == "classification"
    assert infer_task(np.array([0, 1, 2])) == "classification"  # ints: labels, as in sklearn
    assert infer_task(np.array([0.5, 1.0])) == "regression"
    with pytest.raises(ProbeError, match="whole numbers"):
        infer_task(np.array([0.0, 1.0, 2.0]))
