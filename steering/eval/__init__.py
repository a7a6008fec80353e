"""Steering evaluation (``probe steer-eval``): the protocol, its search space, scores and reports.

Modules: :mod:`steering.eval.protocol` (tune, select, test, baselines:
:func:`~steering.eval.protocol.run_evaluation`, and
:func:`~steering.eval.protocol.score_intervention` for any hook dict),
:mod:`steering.eval.grid` (grid points, arms, batched generation), :mod:`steering.eval.selection`
(the tune half: scoring grid points, choosing one), :mod:`steering.eval.score` (one judged row
per reply, summaries), :mod:`steering.eval.report` (the run folder), :mod:`steering.eval.cli`
(the command), :mod:`steering.eval.prompts` (the shipped neutral prompts, ``tune`` / ``test``),
:mod:`steering.eval.capability` (multiple-choice capability damage),
:mod:`steering.eval.composite` and :mod:`steering.eval.trained` (AxBench's composite, collapse
gates, a selection judge kept apart from the reporting ones). The judges themselves are in
:mod:`steering.judges`. docs/steering.md.
"""
