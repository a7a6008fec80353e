"""The one base of every user-facing error: :class:`EmoprobeError`.

Every error that means "the input or the setup is wrong, here is what to fix" derives from it,
in ``probe`` and in every plugin (``steering``, ``circuits``, a package of your own). The command
line prints any of them as one ``error: ...`` line and exits with status 2, without a stack
trace; anything else is a bug and keeps its traceback.

An error class keeps its standard base too, so callers that catch ``ValueError`` still do:

>>> from probe.errors import EmoprobeError
>>> class RecipeError(EmoprobeError, ValueError):
...     '''A recipe cannot run as written.'''
>>> issubclass(RecipeError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["AttributionError", "EmoprobeError"]


class EmoprobeError(Exception):
    """Bad input or setup, with a message that says what to fix (CLI: ``error:``, exit 2)."""


# Errors that more than one package raises live here, once (a test fails on two classes of one
# name): ``except AttributionError`` then means the same thing wherever it is written.


class AttributionError(EmoprobeError, ValueError):
    """Gradient attribution (``probe circuits``' attribution patching, ``probe conflict``'s
    modality attribution) cannot run as asked; the message says what to fix."""
