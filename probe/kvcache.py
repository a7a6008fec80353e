"""The KV cache across transformers 5.x releases: one home for the keyword's two names.

Newer releases call the forward's cache argument (and the output's field) ``cache``; earlier
5.x releases call both ``past_key_values``. Code that reuses a prompt's cache asks here:

>>> class Out:
...     past_key_values = "kv"
>>> returned_cache(Out())
'kv'
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_keyword", "returned_cache"]


def cache_keyword(model) -> str:
    """The forward's name for the KV cache: ``"cache"`` or ``"past_key_values"``."""
    forward = getattr(type(model), "forward", None) or model.forward  # the class's: unwrapped
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def returned_cache(output) -> Any:
    """The KV cache a forward returned (``output.cache`` or ``output.past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
