"""The error every part of :mod:`steering` raises for input it cannot use."""

from __future__ import annotations

from probe.errors import EmoprobeError

__all__ = ["SteeringError"]


class SteeringError(EmoprobeError, ValueError):
    """A steering vector or setting cannot be used as asked; the message says what to fix."""
