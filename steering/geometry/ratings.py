"""Human ratings of emotion words: the NRC VAD lexicon, or a ratings file of your own.

The NRC VAD Lexicon v1 (Mohammad 2018) rates 20,007 English words for valence, arousal and
dominance in [0, 1]. It is research / non-commercial only, so it is not shipped: it is read from
``--lexicon`` (a file or a folder holding ``NRC-VAD-Lexicon.txt``), else from
``$EMOPROBE_SHARED_DATA/lexicons``, else ``$EMOPROBE_DATA/lexicons``.

An emotion label is looked up as itself, then through :data:`WORDS` (labels that are not words).
A ratings file of your own is a CSV with a ``word`` (or ``emotion``) column and one numeric
column per scale, e.g. ``emotion,valence,arousal``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from steering.geometry.features import GeometryError

NRC_VAD_FILE = "NRC-VAD-Lexicon.txt"
SCALES = ("valence", "arousal", "dominance")
#: Labels whose lexicon entry is another word.
WORDS = {
    "nervous": "nervousness",
    "happy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "afraid": "fear",
    "surprised": "surprise",
    "disgusted": "disgust",
}


@dataclass(frozen=True)
class Ratings:
    """Ratings of emotions: ``values[emotion, scale]``, the words looked up, and the source."""

    emotions: list[str]
    scales: list[str]
    values: torch.Tensor
    words: dict[str, str]
    source: str

    def subset(self, emotions: Sequence[str]) -> Ratings:
        missing = [e for e in emotions if e not in self.emotions]
        if missing:
            raise GeometryError(f"no ratings for {missing}; add them to the ratings file")
        idx = [self.emotions.index(e) for e in emotions]
        return Ratings(
            list(emotions),
            self.scales,
            self.values[idx],
            {e: self.words[e] for e in emotions},
            self.source,
        )


def find_lexicon(path: str | os.PathLike | None = None) -> Path:
    """The NRC VAD file: ``path`` (file or folder), else the environment's ``lexicons`` folder."""
    candidates = (
        [Path(path)]
        if path
        else [
            Path(os.environ[v]) / "lexicons"
            for v in ("EMOPROBE_SHARED_DATA", "EMOPROBE_DATA")
            if os.environ.get(v)
        ]
    )
    for c in candidates:
        c = c.expanduser()
        if c.is_file():
            return c
        if (c / NRC_VAD_FILE).is_file():
            return c / NRC_VAD_FILE
    where = (
        ", ".join(map(str, candidates))
        or "nowhere ($EMOPROBE_SHARED_DATA and $EMOPROBE_DATA unset)"
    )
    raise GeometryError(
        f"no NRC VAD lexicon ({NRC_VAD_FILE}) found ({where}); pass --lexicon "
        "PATH (from saifmohammad.com/WebPages/nrc-vad.html) or --ratings FILE.csv"
    )


def read_lexicon(path: str | os.PathLike) -> pd.DataFrame:
    """``word -> valence, arousal, dominance`` from the NRC VAD text file (header, tabs)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", keep_default_na=False, dtype={"Word": str})
    except (OSError, ValueError) as exc:
        raise GeometryError(f"cannot read the lexicon {path}: {exc}") from None
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in ("word", *SCALES) if c not in df.columns]
    if missing:
        raise GeometryError(
            f"{path}: expected columns Word, Valence, Arousal, Dominance; missing {missing}"
        )
    return df.set_index("word")[list(SCALES)].astype(float)


def read_ratings_file(path: str | os.PathLike) -> pd.DataFrame:
    """A user CSV: ``word``/``emotion`` column plus numeric scale columns."""
    path = Path(path)
    if not path.is_file():
        raise GeometryError(f"ratings file {path} does not exist")
    df = pd.read_csv(path)
    key = next((c for c in ("word", "emotion", "label") if c in df.columns), None)
    if key is None:
        raise GeometryError(
            f"{path}: needs a 'word' or 'emotion' column; it has {list(df.columns)}"
        )
    scales = [c for c in df.columns if c != key and pd.api.types.is_numeric_dtype(df[c])]
    if not scales:
        raise GeometryError(f"{path}: no numeric rating column besides {key!r}")
    return df.set_index(df[key].astype(str).str.strip().str.lower())[scales].astype(float)


def emotion_ratings(
    emotions: Sequence[str],
    *,
    lexicon: str | os.PathLike | None = None,
    ratings_file: str | os.PathLike | None = None,
) -> Ratings:
    """Ratings of each emotion label (a label missing from the table is an error naming it)."""
    table = read_ratings_file(ratings_file) if ratings_file else read_lexicon(find_lexicon(lexicon))
    source = str(ratings_file or find_lexicon(lexicon))
    words, rows, missing = {}, [], []
    for e in emotions:
        word = next((w for w in (e.lower(), WORDS.get(e.lower())) if w and w in table.index), None)
        if word is None:
            missing.append(e)
            continue
        words[e] = word
        rows.append(table.loc[word].to_numpy(dtype=float).reshape(-1, len(table.columns))[0])
    if missing:
        raise GeometryError(
            f"no rating for emotion(s) {missing} in {source}; pass --ratings "
            "FILE.csv with a row for each, or drop them with --emotions"
        )
    return Ratings(
        list(emotions),
        list(table.columns),
        torch.from_numpy(np.array(rows, dtype=np.float64)),
        words,
        source,
    )
