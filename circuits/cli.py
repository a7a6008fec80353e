"""``probe`` subcommands contributed by :mod:`circuits` (entry-point group ``emoprobe.commands``)."""

from __future__ import annotations


def register(sub) -> dict:
    """Add circuits' subcommands to the ``probe`` parser; returns ``{command: handler}``."""
    return {}
