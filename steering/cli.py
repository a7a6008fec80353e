"""``probe`` subcommands contributed by :mod:`steering` (entry-point group ``emoprobe.commands``)."""

from __future__ import annotations


def register(sub) -> dict:
    """Add steering's subcommands to the ``probe`` parser; returns ``{command: handler}``."""
    return {}
