"""Emotion geometry: the 2026 "emotion concepts" protocol with nulls and confidence intervals.

Emotion vectors per layer from labelled corpora and model-written stories (mean-pooled residual
stream from a token offset, grand mean subtracted, neutral-text PCs projected out), their PCA
against human valence / arousal / dominance ratings (permutation p-values, bootstrap CIs over
texts), RDM agreement between sources and models, and the vectors saved as steering vectors.
``probe geometry`` runs it all; see docs/geometry.md.
"""

from importlib import import_module

# Public names, imported on first use (``probe geometry --help`` must not load torch; the
# structure test checks it): name -> module.
_HOME = {
    "Labelled": "analysis", "agreement": "analysis", "analyze": "analysis",
    "Features": "features", "GeometryError": "features", "pool_texts": "features",
    "Ratings": "ratings", "emotion_ratings": "ratings",
    "Recipe": "recipe", "emotion_vectors": "recipe", "neutral_basis": "recipe",
    "GeometryConfig": "run", "prepare": "run", "run_geometry": "run",
    "TextSource": "sources", "load_corpus": "sources",
    "write_stories": "stories", "to_vector_set": "vectors",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"steering.geometry.{_HOME[name]}"), name)
    raise AttributeError(f"module 'steering.geometry' has no attribute {name!r}")


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
