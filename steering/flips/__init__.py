"""Steering flips (``probe steer-flips``): does steering change the model's zero-shot answers?

Modules: :mod:`steering.flips.measure` (the measurement: held-out answers unsteered and
steered, flip rates with cluster-bootstrap CIs), :mod:`steering.flips.cli` (the command) and
:mod:`steering.flips.figure` (its figure). docs/behaviour.md, "Steering flips".
"""
