"""Steering: emotion directions applied at inference (builds on `probe`).

>>> from steering import SteeringVector, VectorSet, Setting, generate_settings, export_gguf
>>> from steering.directions import directions
>>> from steering.monitor import monitor

Modules: :mod:`steering.directions` (directions from stores, probes, prompted replies),
:mod:`steering.vector` (:class:`SteeringVector` values and files), :mod:`steering.inject`
(add / ablate / clamp / scale as write hooks, per-row settings), :mod:`steering.monitor`
(per-token readings while generating), :mod:`steering.gguf_export` (llama.cpp control
vectors), :mod:`steering.figures`, :mod:`steering.operating_points`.
Sub-packages: :mod:`steering.eval` (``probe steer-eval``: the evaluation protocol, and
:func:`~steering.eval.scorer.score_intervention` for any hook dict), :mod:`steering.judges`
(emotion judges, the fluency gate), :mod:`steering.flips` (``probe steer-flips``),
:mod:`steering.train` (trained vectors), :mod:`steering.geometry` (``probe geometry``: emotion
vectors vs human valence / arousal ratings, with nulls and CIs; docs/geometry.md); docs/steering.md.
"""

# (not ``directions`` / ``monitor``: those names are also modules of this package)
_LAZY = {"SteeringVector": "steering.vector",
         "VectorSet": "steering.vector", "SteeringError": "steering.vector",
         "Setting": "steering.inject", "steering_hooks": "steering.inject",
         "generate_settings": "steering.inject", "export_gguf": "steering.gguf_export"}


def __getattr__(name: str):
    """Import the entry points on first use (``import steering`` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steering' has no attribute {name!r}")
