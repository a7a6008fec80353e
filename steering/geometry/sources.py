"""Text sources of the geometry protocol: labelled corpora, any CSV, and model-written stories.

A source spec (``--sources``) is one of:

``goemotions``            GoEmotions' single-label comments, 27 emotions (``label`` target)
``dair-emotion``          dair-ai emotion tweets, 6 emotions
``meld``                  MELD utterances, 6 emotions + neutral
``emotion-scenarios``     the bundled scenario stimuli, 6 emotions + neutral
``stories``               stories the model writes, one set per emotion of the primary source
``name:/path``            a registered format at a path; ``my.csv`` your own file (``text``,
                          ``label`` columns, see ``probe datasets``)

External datasets are looked up in ``--data-root`` (default ``$EMOPROBE_SHARED_DATA``, then
``$EMOPROBE_DATA``) as ``<root>/<name>`` or ``<root>/<name with _ for ->``. Each emotion gets
``per_emotion`` texts of at least ``min_words`` words from the train split where there is one,
drawn with a fixed seed; the neutral texts that define the projected-out PCs come the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probe.data import load_dataset
from probe.data.schema import DatasetError
from steering.geometry import defaults
from steering.geometry.features import GeometryError

DEFAULT_SOURCES = defaults.SOURCES
#: The finest single-label target of a registered dataset (default: its default target).
LABEL_TARGET = {"goemotions": "label"}
#: Labels that mean the same emotion across sources (for cross-source comparisons).
SYNONYMS = {"happiness": "joy"}


@dataclass(frozen=True)
class TextSource:
    """Labelled texts of one source (``labels[i]`` is ``texts[i]``'s emotion)."""

    name: str
    texts: list[str]
    labels: list[str]
    kind: str = "corpus"  # or "stories"
    info: dict = field(default_factory=dict)

    @property
    def emotions(self) -> list[str]:
        return list(dict.fromkeys(self.labels))


def canonical(label: str) -> str:
    return SYNONYMS.get(label, label)


def data_roots(data_root: str | None = None) -> list[Path]:
    if data_root:
        return [Path(data_root).expanduser()]
    return [
        Path(os.environ[v]) for v in ("EMOPROBE_SHARED_DATA", "EMOPROBE_DATA") if os.environ.get(v)
    ]


def resolve_spec(spec: str, data_root: str | None = None) -> str:
    """A ``load_dataset`` spec: registered names are looked up under the data roots first."""
    if ":" in spec or "/" in spec or spec.endswith((".csv", ".tsv", ".jsonl", ".json")):
        return spec
    if spec in ("emotion-scenarios",):
        return spec
    for root in data_roots(data_root):
        for folder in (spec, spec.replace("-", "_"), spec.split("-")[0]):
            if (root / folder).is_dir():
                return f"{spec}:{root / folder}"
    return spec  # load_dataset's own lookup ($EMOPROBE_DATA/<name>) and its error message


def load_corpus(
    spec: str,
    *,
    per_emotion: int,
    min_words: int = 4,
    seed: int = 0,
    emotions: Sequence[str] | None = None,
    data_root: str | None = None,
    neutral: str = "neutral",
) -> tuple[TextSource, list[str]]:
    """``(source without neutral, its neutral texts)``; ``per_emotion`` texts per emotion."""
    try:
        ds = load_dataset(resolve_spec(spec, data_root))
    except DatasetError as exc:
        raise GeometryError(f"source {spec!r}: {exc}") from None
    target = LABEL_TARGET.get(ds.name, ds.default_target)
    if ds.target_kind(target) != "label":
        raise GeometryError(f"source {spec!r}: target {target!r} is not a class label")
    frame = ds.frame
    if "train" in set(frame["split"]):
        frame = frame[frame["split"] == "train"]
    frame = frame[frame[target].notna()]
    frame = frame[frame["text"].str.split().str.len() >= min_words]
    frame = frame.drop_duplicates("text")
    order = [c for c in ds.classes(target) if c in set(frame[target])]
    if emotions is not None:
        order = [c for c in order if c in emotions or canonical(c) in emotions or c == neutral]
    rng = np.random.default_rng(seed)
    texts, labels, neutral_texts, counts = [], [], [], {}
    for label in order:
        rows = frame[frame[target] == label]["text"].tolist()
        take = [rows[i] for i in sorted(rng.permutation(len(rows))[:per_emotion])]
        if label == neutral:
            neutral_texts = take
            continue
        if len(take) < 2:
            continue
        texts += take
        labels += [label] * len(take)
        counts[label] = len(take)
    if len(counts) < 3:
        raise GeometryError(
            f"source {spec!r} has fewer than 3 emotions with >= 2 texts of "
            f">= {min_words} words ({sorted(counts)})"
        )
    info = {
        "dataset": ds.name,
        "spec": spec,
        "target": target,
        "dataset_hash": ds.content_hash(),
        "n_per_emotion": counts,
        "min_words": min_words,
        "seed": seed,
    }
    return TextSource(ds.name, texts, labels, "corpus", info), neutral_texts


def load_neutral(
    spec: str, *, n: int, min_words: int = 4, seed: int = 0, data_root: str | None = None
) -> list[str]:
    """``n`` neutral texts of a source (its ``neutral`` label)."""
    _, neutral = load_corpus(
        spec, per_emotion=n, min_words=min_words, seed=seed, data_root=data_root
    )
    if len(neutral) < 10:
        raise GeometryError(
            f"neutral source {spec!r} has {len(neutral)} neutral texts; the "
            "projection needs >= 10 (choose another --neutral, or --neutral-share 0)"
        )
    return neutral
