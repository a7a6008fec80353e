"""Judges of replies: which emotion a text expresses, and whether it is fluent enough to count.

Modules: :mod:`steering.judges.emotion` (the text-classifier and lexicon judges, ``LABELS``,
agreement and expression scores), :mod:`steering.judges.build` (training the shipped
classifier judge), :mod:`steering.judges.llm` (an optional local chat model as a third judge),
:mod:`steering.judges.gate` (the fluency gate: degenerate text expresses nothing) and
:mod:`steering.judges.fluency` (perplexity and relevance under the unsteered model, regimes).
docs/judges.md.
"""
