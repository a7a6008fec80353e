"""Deterministic subsets for ``--limit``: whole groups, classes in proportion.

The code lives in :mod:`probe.data.schema`, beside :meth:`EmotionDataset.limit` that uses it;
this module keeps the names importable from here.

>>> from probe.data import load_dataset
>>> small = stratified_limit(load_dataset("emotion-scenarios"), 84)
>>> len(small), small.frame["group"].nunique(), set(small.frame["emotion"].value_counts())
(84, 12, {12})
"""

from probe.data.schema import N_BINS, smallest_working_limit, strata, stratified_limit

__all__ = ["N_BINS", "smallest_working_limit", "strata", "stratified_limit"]
