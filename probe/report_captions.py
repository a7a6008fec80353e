"""What each figure a ``probe`` command writes shows: the captions of ``probe report``.

One entry per figure name pattern (``{x}`` is the pooling, emotion or label in the file name),
registered with the run kind that draws the figure
(:func:`probe.report_kinds.register_run_kind`, ``captions=``); a figure no entry knows is
captioned with its name in words. Every entry mirrors the docstring of the function that draws
the figure.

>>> caption("layerwise_last.png")[:44]
'Probe score against layer, pooling last: the'
"""

from __future__ import annotations

import re

from probe.report_kinds import captions


def caption(name: str) -> str:
    """What the figure file ``name`` (e.g. ``"layerwise_last.png"``) shows."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    for pattern, text in captions():
        m = re.fullmatch(pattern, stem)
        if m:
            return text.format(x=m.group(1) if m.groups() else "")
    return stem.replace("_", " ").replace("-", " ").capitalize() + "."
