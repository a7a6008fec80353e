"""Emotion datasets: one schema, loaders, and the embedded stimulus set.

>>> from probe.data import load_dataset, available_datasets
>>> "emotion-scenarios" in available_datasets()
True
"""

from probe.data.loaders import available_datasets, load_dataset
from probe.data.schema import DatasetError, EmotionDataset

__all__ = ["DatasetError", "EmotionDataset", "available_datasets", "load_dataset"]
