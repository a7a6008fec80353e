"""Emotion geometry: the 2026 "emotion concepts" protocol with nulls and confidence intervals.

Emotion vectors per layer from labelled corpora and model-written stories (mean-pooled residual
stream from a token offset, grand mean subtracted, neutral-text PCs projected out), their PCA
against human valence / arousal / dominance ratings (permutation p-values, bootstrap CIs over
texts), RDM agreement between sources and models, and the vectors saved as steering vectors.
``probe geometry`` runs it all; see docs/geometry.md.
"""

from steering.geometry.analysis import Labelled, agreement, analyze
from steering.geometry.features import Features, GeometryError, pool_texts
from steering.geometry.ratings import Ratings, emotion_ratings
from steering.geometry.recipe import Recipe, emotion_vectors, neutral_basis
from steering.geometry.run import GeometryConfig, prepare, run_geometry
from steering.geometry.sources import TextSource, load_corpus
from steering.geometry.stories import write_stories
from steering.geometry.vectors import to_vector_set

__all__ = [
    "Features",
    "GeometryConfig",
    "GeometryError",
    "Labelled",
    "Ratings",
    "Recipe",
    "TextSource",
    "agreement",
    "analyze",
    "emotion_ratings",
    "emotion_vectors",
    "load_corpus",
    "neutral_basis",
    "pool_texts",
    "prepare",
    "run_geometry",
    "to_vector_set",
    "write_stories",
]
