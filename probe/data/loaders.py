"""Load an emotion dataset from a name, a ``name:path`` pair, a folder or a file.

``spec`` forms accepted by :func:`load_dataset` (the CLI's ``--dataset`` passes it on):

``"emotion-scenarios"``       our stimulus set, shipped with the package (the default)
``"goemotions"``              an external dataset, found in ``$EMOPROBE_DATA/goemotions``
``"goemotions:/data/goemo"``  an external dataset at a path (folder, or the file itself for
                              one-file datasets such as ``emobank:/x/emobank.csv``)
``"../shared/data/meld"``     a folder whose format is detected from the files in it
``"my_stimuli.csv"``          your own ``.csv``/``.tsv``/``.jsonl``/``.json`` file

External datasets are not redistributed (licences); the error for a missing one says
where to get it and how to pass it.

>>> ds = load_dataset()
>>> ds.name, len(ds), ds.classes()[-1]
('emotion-scenarios', 448, 'neutral')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from probe.data import readers
from probe.data.schema import DatasetError, EmotionDataset
from probe.data.userfiles import USER_SUFFIXES, read_user_file

DEFAULT_DATASET = "emotion-scenarios"
DATA_ENV = "EMOPROBE_DATA"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_SPLIT_ALIASES = {"val": "dev", "valid": "dev", "validation": "dev"}
_NAME_ALIASES = {"dair": "dair-emotion", "sev-accepted": "sev-replies"}


@dataclass(frozen=True)
class Source:
    """A registered dataset: how to recognise, find and read it."""

    name: str
    description: str
    read: Callable[[Path], EmotionDataset]
    markers: tuple[str, ...]  # any of these inside a folder marks the format
    files: tuple[str, ...] = ()  # file names the reader also accepts on their own
    home: str = ""  # public home, for the "where do I get it" message
    expects: str = ""
    bundled: bool = False


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("emotion-scenarios", "our 448 scenario x event stimuli: 7 emotions (6 + neutral) in "
           "64 scenario groups; bundled, the default", readers.read_emotion_scenarios,
           ("stimuli.jsonl",), ("stimuli.jsonl",), bundled=True),
    Source("goemotions", "GoEmotions Reddit comments: 27 emotions + neutral (multi-label) and "
           "Ekman groups; 54k rows", readers.read_goemotions,
           ("original/train.tsv", "data/train.tsv", "train.tsv"),
           home="https://github.com/google-research/google-research/tree/master/goemotions",
           expects="{train,dev,test}.tsv and emotions.txt (the repo's data/ folder)"),
    Source("dair-emotion", "dair-ai emotion (CARER) tweets: 6 emotions; 20k rows; research use "
           "only", readers.read_dair, ("train.txt", "val.txt", "test.txt"),
           home="https://github.com/dair-ai/emotion_dataset",
           expects="train.txt, val.txt, test.txt with 'text;label' lines"),
    Source("emobank", "EmoBank sentences rated for valence, arousal, dominance (1-5); 10k rows",
           readers.read_emobank, ("emobank.csv", "corpus/emobank.csv"), ("emobank.csv",),
           home="https://github.com/JULIELab/EmoBank", expects="corpus/emobank.csv"),
    Source("meld", "MELD Friends dialogue utterances: 7 emotions and sentiment; 13.7k rows",
           readers.read_meld, ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"),
           home="https://github.com/declare-lab/MELD",
           expects="data/MELD/{train,dev,test}_sent_emo.csv"),
    Source("sev", "SEV scenario + event stimuli (Wang et al. 2025): valence positive / neutral / "
           "negative; 480 rows", readers.read_sev, ("sev.jsonl",), ("sev.jsonl",),
           home="https://github.com/Aurora-cx/EmotionCircuits-LLM", expects="data/sev.jsonl"),
    Source("sev-replies", "SEV replies written by Llama-3.2-3B in one of 6 emotions, judge-"
           "accepted; 2.8k rows", readers.read_sev_replies,
           ("sev_accepted.jsonl", "accepted.jsonl"), ("sev_accepted.jsonl", "accepted.jsonl"),
           home="https://github.com/Aurora-cx/EmotionCircuits-LLM",
           expects="outputs/llama32_3b/01_emotion_elicited_generation_prompt_based/labeled/sev/"
                   "accepted.jsonl (or sev_accepted.jsonl)"),
)}
_ENV_FOLDERS = {"sev-replies": ("sev",)}


def available_datasets() -> dict[str, str]:
    """Registered dataset names, each with a one-line description (default first)."""
    return {name: src.description for name, src in SOURCES.items()}


def load_dataset(
    spec: str | Path = DEFAULT_DATASET,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    group_column: str | None = None,
    id_column: str | None = None,
    split: str | None = None,
) -> EmotionDataset:
    """Load a dataset into the common :class:`EmotionDataset` schema.

    Args:
        spec: a registered name, ``"name:path"``, a dataset folder (format detected) or a
            ``.csv``/``.tsv``/``.jsonl``/``.json`` file of your own (see module docstring).
        text_column: your file's text column (default ``"text"``).
        label_column: your file's target column (default ``"label"``); numbers make a
            continuous target, lists (JSON) a multilabel one, anything else class labels.
            For a registered dataset, picks which of its targets is the default.
        group_column: your file's grouping column (rows of a group never straddle train and
            test); default: each row is its own group.
        id_column: your file's id column; default ``"row-<n>"`` (0-based).
        split: keep only rows of this split (``"train"``, ``"dev"``, ``"test"``; ``"val"``
            means ``"dev"``); ``None`` or ``"all"`` keeps every row.

    Returns:
        The dataset, with ``source`` naming the file or folder it came from and ``card`` a
        path or URL of its documentation. Its ``name`` (used in store and run folder names)
        is the registered name, ``<format>-<file stem>`` for another file read in a
        registered format (``sev:/data/my_events.jsonl`` -> ``sev-my_events``), or the file
        stem for your own CSV/JSONL.

    Raises:
        DatasetError: the spec names nothing loadable, a file is malformed (the message gives
            file and line), a column is missing, or the split does not exist.
    """
    user_columns = any(c is not None for c in (text_column, group_column, id_column))
    source, path = _resolve(spec, user_file=user_columns)
    if source is None:
        ds = read_user_file(path, text_column=text_column, label_column=label_column,
                            group_column=group_column, id_column=id_column)
    else:
        if user_columns:
            raise DatasetError(
                f"text_column / group_column / id_column apply to your own CSV or JSON files; "
                f"{source.name!r} has fixed columns. Drop those options (label_column may "
                f"choose among its targets).")
        ds = source.read(path)
        if path.is_file() and path.name not in source.files:
            # someone's own file in this format: name it after the file, not the format
            ds = dataclasses.replace(ds, name=f"{source.name}-{path.stem}")
        if label_column is not None:
            ds.target_kind(label_column)  # raises with the list of targets
            ds = dataclasses.replace(ds, default_target=label_column)
    return select_split(ds, split)


def select_split(ds: EmotionDataset, split: str | None) -> EmotionDataset:
    """Rows of one split; ``None``/``"all"`` returns ``ds`` unchanged."""
    if split is None or split == "all":
        return ds
    want = _SPLIT_ALIASES.get(split, split)
    present = sorted(set(ds.frame["split"]))
    if want not in present:
        hint = (" It has no predefined split: leave the split unset and cross-validate "
                "with groups (the 'group' column).") if present == ["all"] else ""
        raise DatasetError(f"dataset {ds.name!r} has no split {split!r}; its splits are "
                           f"{present}.{hint}")
    return ds.select((ds.frame["split"] == want).to_numpy())


def shipped_file(folder: str, name: str) -> Path | None:
    """``datasets/<folder>/<name>`` as shipped: in the wheel (``probe/_datasets``) or in a source
    checkout / editable install; ``None`` when neither has it (callers say what to do)."""
    for root in (_PACKAGE_DIR / "_datasets", _PACKAGE_DIR.parent / "datasets"):
        if (root / folder / name).is_file():
            return root / folder / name
    return None


def bundled_scenarios_path() -> Path:
    """Folder of our stimulus set: in the wheel, or in a source checkout / editable install."""
    found = shipped_file("emotion_scenarios", "stimuli.jsonl")
    if found is not None:
        return found.parent
    raise DatasetError(
        "the bundled emotion-scenarios stimuli are missing from this installation (looked in "
        f"{_PACKAGE_DIR / '_datasets'} and {_PACKAGE_DIR.parent / 'datasets'}); reinstall "
        "emoprobe, or pass a copy as 'emotion-scenarios:/path/to/emotion_scenarios'")


# ---------------------------------------------------------------------------- resolution
def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _NAME_ALIASES.get(key, key)


def _resolve(spec: str | Path, *, user_file: bool) -> tuple[Source | None, Path]:
    """``(source, path)``; ``source`` is ``None`` for the user's own file."""
    text = str(spec)
    head, sep, rest = text.partition(":")
    key = _canonical(head)
    if not isinstance(spec, Path) and key in SOURCES:
        if not sep:
            return SOURCES[key], _locate(SOURCES[key])
        if not rest.strip():
            raise DatasetError(f"{text!r}: give a path after the colon, e.g. '{key}:/data/{key}'")
        path = Path(rest).expanduser()
        if not path.exists():
            raise DatasetError(f"{key}: no such file or folder {path}")
        return SOURCES[key], path
    path = Path(text).expanduser()
    if path.is_dir():
        return _detect(path), path
    if path.is_file():
        return _file_source(path, user_file=user_file)
    if not any(ch in text for ch in "/\\.:"):
        raise DatasetError(f"unknown dataset {text!r} (and no such file or folder); registered "
                           f"datasets: {', '.join(SOURCES)}; or pass a folder or a CSV/JSONL file")
    raise DatasetError(f"no such file or folder: {path}")


def _locate(source: Source) -> Path:
    if source.bundled:
        return bundled_scenarios_path()
    root = os.environ.get(DATA_ENV)
    extra = _ENV_FOLDERS.get(source.name, ())
    folders = (source.name, source.name.replace("-", "_"), *extra)
    shown = extra[0] if extra else source.name
    if root:
        for folder in folders:
            if (Path(root) / folder).exists():
                return Path(root) / folder
    looked = f"${DATA_ENV}/{source.name} ({DATA_ENV}={root})" if root else f"${DATA_ENV} is unset"
    raise DatasetError(
        f"dataset {source.name!r} is not shipped with emoprobe (licences differ); download it from "
        f"{source.home} ({source.expects}) and pass its folder: "
        f"load_dataset('{source.name}:/path/to/{shown}'), on the command line "
        f"--dataset {source.name}:/path/to/{shown}, or set {DATA_ENV} to the folder that "
        f"holds {shown}/. Looked in: {looked}.")


def _detect(folder: Path) -> Source:
    for source in SOURCES.values():
        if any((folder / m).exists() for m in source.markers):
            return source
    known = "; ".join(f"{s.name}: {' or '.join(s.markers)}" for s in SOURCES.values())
    raise DatasetError(f"cannot tell which dataset {folder} holds. Expected one of: {known}. "
                       f"Pass 'name:{folder}' to choose a format, or a CSV/JSONL file.")


def _file_source(path: Path, *, user_file: bool) -> tuple[Source | None, Path]:
    if not user_file:
        for source in SOURCES.values():
            if path.name in source.files:
                return source, path
    if path.suffix.lower() not in USER_SUFFIXES:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use one of "
                           f"{sorted(USER_SUFFIXES)} or pass a dataset folder")
    return None, path
