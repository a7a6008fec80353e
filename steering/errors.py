"""The error every part of :mod:`steering` raises for input it cannot use."""

from __future__ import annotations

from probe.errors import EmoprobeError

__all__ = ["SteeringError", "nonfinite_message"]


class SteeringError(EmoprobeError, ValueError):
    """A steering vector or setting cannot be used as asked; the message says what to fix."""


def nonfinite_message(site, dtype, settings: list[str]) -> str:
    """What to do when steering at ``site`` made values NaN/inf (``settings``: those in use)."""
    return (f"steering at {site} produced NaN/inf values, or values so large that the next "
            f"layer norm overflows ({dtype}; settings: {', '.join(settings) or 'none'}); lower the "
            "strength, or use unit='rms' so the strength is relative to the site's typical norm")
