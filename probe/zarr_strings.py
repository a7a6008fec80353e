"""String coordinates in Zarr that open as plain Python strings.

Zarr v3's ``string`` type opens (zarr-python 3.1, xarray 2026.9) as NumPy's ``StringDType``,
on which scikit-learn's ``LogisticRegression().fit(X, y)``, ``cross_val_score(..., groups=g)``
and ``y.astype(str)`` raise ``TypeError``. Stores therefore hold string coordinates as UTF-8
bytes tagged ``_Encoding: utf-8``, which ``xarray.open_zarr`` decodes (its CF convention) into
object arrays of ``str``: what NumPy, pandas and scikit-learn take as they are.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import zarr
from zarr.core.dtype import VariableLengthBytes
from zarr.errors import UnstableSpecificationWarning


@contextlib.contextmanager
def quiet_zarr():
    """Silence Zarr's "no V3 specification" warning for the string coordinates' bytes type,
    raised whenever metadata that lists them is written (readers never see it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        yield


def write_strings(group: zarr.Group, name: str, values, dim: str) -> None:
    """A 1-d string coordinate as UTF-8 bytes tagged ``_Encoding`` (xarray's convention).

    ``xarray.open_zarr`` decodes it to an object array of Python ``str``, which NumPy, pandas
    and scikit-learn take as they are. Zarr's own ``string`` type would open as NumPy's
    ``StringDType``, on which ``LogisticRegression().fit``, ``cross_val_score(groups=...)`` and
    ``.astype(str)`` raise ``TypeError`` (numpy 2.4, xarray 2026.9).
    """
    data = np.array([str(v).encode("utf-8") for v in values], dtype=object)
    with quiet_zarr():
        group.create_array(name, shape=data.shape, dtype=VariableLengthBytes(),
                           dimension_names=[dim], attributes={"_Encoding": "utf-8"})[:] = data
