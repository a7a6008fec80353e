"""Direction methods for steering: the core's store methods plus ``probe`` and ``prompted``.

The arithmetic lives in the core (:mod:`probe.direction_methods`: :class:`Rows`,
:func:`compute`; :mod:`probe.directions`: reading rows from a store, the direction values and
their files), so ``circuits`` computes the same directions without importing steering. Here
those names raise :class:`~steering.errors.SteeringError` as every part of steering does, and
:func:`to_vectors` makes steering vectors of them. :func:`steering.directions.directions`
reads the rows from an activation store and :func:`steering.prompted.prompted_directions`
makes them from the model's replies. A new store method is one function in
:mod:`probe.direction_methods`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, TypeVar, get_args

import numpy as np

from probe import direction_methods as core
from probe.direction_methods import STORE_METHODS, DirectionError, Rows
from steering.errors import SteeringError

__all__ = ["METHODS", "STORE_METHODS", "Method", "Rows", "compute", "site_kind", "to_vectors"]

Method = Literal["mean-diff", "mean-diff-neutral", "context-agnostic", "pca-diff", "pca-center",
                 "lda", "probe", "prompted"]
METHODS: tuple[str, ...] = get_args(Method)

F = TypeVar("F", bound=Callable)


def steering_errors(fn: F) -> F:
    """``fn`` raising :class:`SteeringError` where the core raises :class:`DirectionError`."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except DirectionError as exc:
            raise SteeringError(str(exc)) from None
    return wrapper  # type: ignore[return-value]


compute = steering_errors(core.compute)
site_kind = steering_errors(core.site_kind)
_emotion_list = steering_errors(core.emotion_list)


@steering_errors
def to_vectors(raw: dict[str, np.ndarray], rows: Rows, method: str, *, normalize: bool = True,
               extra: dict | None = None, rms: np.ndarray | None = None):
    """Wrap ``{emotion: [layers, d]}`` as steering vectors with provenance and typical RMS
    (``rms`` per layer; default: the RMS of ``rows``); see :func:`probe.directions.unit_directions`."""
    from probe.directions import unit_directions

    return as_vectors(unit_directions(raw, rows, method, normalize=normalize, extra=extra, rms=rms))


def as_vectors(directions):
    """``{emotion: Direction}`` as a :class:`~steering.vector.VectorSet` of steering vectors
    (the same tensors and meta)."""
    from steering.vector import SteeringVector, VectorSet

    return VectorSet({e: SteeringVector(d.directions, d.meta) for e, d in directions.items()})
