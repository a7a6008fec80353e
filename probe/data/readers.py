"""Readers for the public emotion datasets, each from its files exactly as published.

Every reader takes the dataset's folder (or, for one-file datasets, the file itself) and
returns an :class:`~probe.data.schema.EmotionDataset`. Quirks of the published files are
handled here, next to the format they belong to; :mod:`probe.data.loaders` decides which
reader to call.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from probe.data.schema import DatasetError, EmotionDataset, TargetKind

SPLITS = ("train", "dev", "test")
SEV_EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
VALENCES = ("positive", "negative", "neutral")
EKMAN = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
# goemotions/data/ekman_mapping.json in github.com/google-research/google-research.
GOEMOTIONS_TO_EKMAN = {
    **dict.fromkeys(["anger", "annoyance", "disapproval"], "anger"),
    "disgust": "disgust",
    **dict.fromkeys(["fear", "nervousness"], "fear"),
    **dict.fromkeys(
        ["joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism",
         "relief", "pride", "admiration", "desire", "caring"], "joy"),
    **dict.fromkeys(
        ["sadness", "disappointment", "embarrassment", "grief", "remorse"], "sadness"),
    **dict.fromkeys(["surprise", "realization", "confusion", "curiosity"], "surprise"),
    "neutral": "neutral",
}
DAIR_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")  # the release's id order
MELD_EMOTIONS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


# ---------------------------------------------------------------------------- helpers
def build(name: str, rows: Sequence[Mapping], *, targets: Mapping[str, TargetKind],
          default_target: str, class_order: Mapping[str, tuple[str, ...]], source: Path | str,
          card: str | None = None) -> EmotionDataset:
    """Assemble a dataset; ``label``/``multilabel`` columns keep ``None`` (object dtype)."""
    if not rows:
        raise DatasetError(f"dataset {name!r} at {source} has no rows; check the files")
    rows = list(rows)
    frame = pd.DataFrame(rows)
    for col, kind in targets.items():  # pandas would turn None into NaN in a str column
        if kind != "continuous" and col in frame:
            frame[col] = pd.Series([r.get(col) for r in rows], dtype=object, index=frame.index)
    return EmotionDataset(name=name, frame=frame, targets=dict(targets),
                          default_target=default_target, source=str(source), card=card,
                          class_order=dict(class_order))


def find_file(path: Path, candidates: Sequence[str], what: str) -> Path:
    """``path`` itself if it is a file, else the first of ``candidates`` inside it."""
    if path.is_file():
        return path
    for rel in candidates:
        if (path / rel).is_file():
            return path / rel
    raise DatasetError(f"{what}: {path} contains none of {list(candidates)}")


def split_files(root: Path, pattern: str, what: str, splits=SPLITS) -> dict[str, Path]:
    """The per-split files present under ``root`` (``pattern`` has a ``{split}`` field)."""
    if not root.is_dir():
        raise DatasetError(f"{what}: expected a folder with {pattern.format(split='train')} "
                           f"etc., got {root}")
    found = {s: root / pattern.format(split=s) for s in splits}
    present = {s: p for s, p in found.items() if p.is_file()}
    if not present:
        raise DatasetError(f"{what}: none of {[p.name for p in found.values()]} in {root}")
    missing = sorted(set(found) - set(present))
    if missing:
        warnings.warn(f"{what}: {root} lacks split(s) {missing}; loading the rest", stacklevel=3)
    return present


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for the non-blank lines of a UTF-8 text file."""
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each line of a JSON Lines file."""
    for lineno, line in read_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {obj!r:.60}")
        yield lineno, obj


def require(obj: Mapping, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}")


# Characters cp1252 gives to bytes 0x80-0xBF (latin-1 for the five it leaves undefined):
# a UTF-8 sequence wrongly decoded as cp1252 is one of these leads followed by them.
_CONT = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(0x80, 0xC0))
_CONT_CLASS = "[" + re.escape(_CONT) + "]"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT_CLASS}|[\u00e0-\u00ef]{_CONT_CLASS}{{2}}"
                       f"|[\u00f0-\u00f4]{_CONT_CLASS}{{3}}")
_C1 = re.compile("[\u0080-\u009f]")


def _cp1252_bytes(text: str) -> bytes:
    return b"".join(c.encode("cp1252") if c.encode("cp1252", "ignore") else c.encode("latin-1")
                    for c in text)


def _undo(match: re.Match) -> str:
    try:
        return _cp1252_bytes(match.group()).decode("utf-8")
    except UnicodeError:
        return match.group()


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 read as cp1252 (``"donâ€™t"``) and stray cp1252 bytes (``"don\\x92t"``).

    Only byte sequences that decode as valid UTF-8 are changed, so clean text (including
    real ``é`` or ``’``) comes back unchanged.

    >>> repair_mojibake("Itâ€™s fine"), repair_mojibake("don\\x92t"), repair_mojibake("café")
    ('It’s fine', 'don’t', 'café')
    """
    for _ in range(3):  # text re-encoded twice is fixed in two passes
        fixed = _MOJIBAKE.sub(_undo, text)
        if fixed == text:
            break
        text = fixed
    return _C1.sub(_c1_to_cp1252, text)


def _c1_to_cp1252(match: re.Match) -> str:
    try:
        return match.group().encode("latin-1").decode("cp1252")
    except UnicodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D mean nothing in cp1252: keep them
        return match.group()


# ---------------------------------------------------------------------------- GoEmotions
def read_goemotions(path: Path) -> EmotionDataset:
    """GoEmotions: ``{train,dev,test}.tsv`` (text, label ids, comment id; no header).

    Accepts the Google release layout (``data/``) and monologg's (``original/``). A text
    containing ``"`` is CSV-quoted in the TSV (wrapped in quotes, inner quotes doubled: 1,383
    rows); each line is unquoted on its own, so a stray quote cannot swallow later lines.
    """
    root = next((d for d in (path / "original", path / "data") if d.is_dir()), path)
    files = split_files(root, "{split}.tsv", "goemotions")
    names_file = find_file(root, ["emotions.txt", "../emotions.txt", "labels.txt"], "goemotions")
    names = [n for _, n in read_lines(names_file)]
    rows = []
    for split, file in files.items():
        for lineno, line in read_lines(file):
            parts = next(csv.reader([line], delimiter="\t"))
            if len(parts) != 3:
                raise DatasetError(f"{file}:{lineno}: expected 3 tab-separated fields (text, "
                                   f"label ids, comment id), found {len(parts)}")
            text, label_ids, cid = parts
            emotions = tuple(_goemotions_label(names, i, file, lineno)
                             for i in label_ids.split(","))
            ekman = {GOEMOTIONS_TO_EKMAN[e] for e in emotions}
            rows.append({"id": cid, "text": text, "split": split, "group": cid,
                         "emotions": emotions, "label": emotions[0] if len(emotions) == 1 else None,
                         "ekman": ekman.pop() if len(ekman) == 1 else None})
    return build("goemotions", rows, targets={"emotions": "multilabel", "label": "label",
                 "ekman": "label"}, default_target="ekman", source=path,
                 class_order={"emotions": tuple(names), "label": tuple(names), "ekman": EKMAN},
                 card="https://github.com/google-research/google-research/tree/master/goemotions")


def _goemotions_label(names: list[str], raw: str, file: Path, lineno: int) -> str:
    if not raw.strip().isdigit() or int(raw) >= len(names):
        raise DatasetError(f"{file}:{lineno}: label id {raw!r} is not one of 0..{len(names) - 1}"
                           f" (emotions.txt)")
    name = names[int(raw)]
    if name not in GOEMOTIONS_TO_EKMAN:
        raise DatasetError(f"{file}:{lineno}: emotion {name!r} is not a GoEmotions label")
    return name


# ---------------------------------------------------------------------------- dair-ai emotion
def read_dair(path: Path) -> EmotionDataset:
    """dair-ai "emotion" (CARER): ``{train,val,test}.txt`` with ``text;label`` lines.

    ``val`` becomes split ``"dev"``; ids are ``<split>-<line number>``. The release repeats
    52 texts (19 of them across splits, some with different labels); they are kept as is.
    """
    rows = []
    files = split_files(path, "{split}.txt", "dair-emotion", splits=("train", "val", "test"))
    for split, file in files.items():
        split = "dev" if split == "val" else split
        for lineno, line in read_lines(file):
            text, sep, label = line.rpartition(";")
            if not sep or label not in DAIR_LABELS:
                raise DatasetError(f"{file}:{lineno}: expected 'text;label' with label one of "
                                   f"{list(DAIR_LABELS)}, got {line[-40:]!r}")
            rid = f"{split}-{lineno:05d}"
            rows.append({"id": rid, "text": text, "split": split, "group": rid, "label": label})
    return build("dair-emotion", rows, targets={"label": "label"}, default_target="label",
                 class_order={"label": DAIR_LABELS}, source=path,
                 card="https://github.com/dair-ai/emotion_dataset")


# ---------------------------------------------------------------------------- EmoBank
def emobank_document(sentence_id: str) -> str:
    """The source document of an EmoBank sentence id, used as its group.

    MASC ids are ``<document>_<start>_<end>`` (character offsets) and the document name
    may itself contain underscores (``The_Black_Willow_102_159``, ``wsj_0169_4_303``), so
    cutting at the *first* underscore would merge different documents (all of ``wsj_*``,
    ``The_Black_Willow`` with nothing else named ``The``). We strip the two offsets instead,
    giving 135 documents. ``SemEval_<n>`` rows are single news headlines from the SemEval-2007
    Affective Text task, independent of each other, so each is its own group.

    >>> emobank_document("The_Black_Willow_102_159"), emobank_document("SemEval_17")
    ('The_Black_Willow', 'SemEval_17')
    """
    return re.sub(r"_\d+_\d+$", "", sentence_id)


def read_emobank(path: Path) -> EmotionDataset:
    """EmoBank ``emobank.csv`` (id, split, V, A, D, text); V/A/D are 1-5 ratings.

    Note that the release's own split is stratified by genre, not by document: most
    documents have sentences in train and test. Use group-aware cross-validation on
    ``group`` when document leakage matters.
    """
    file = find_file(path, ["emobank.csv", "corpus/emobank.csv"], "emobank")
    frame = _read_csv(file, ["id", "split", "V", "A", "D", "text"])
    for col in ("V", "A", "D"):
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.isna().any():
            i = int(values.isna().to_numpy().argmax())
            raise DatasetError(f"{file}:{i + 2}: column {col!r} holds {frame[col].iloc[i]!r}, "
                               f"not a number")
        frame[col] = values.astype(float)
    frame["group"] = frame["id"].map(emobank_document)
    frame["split"] = frame["split"].replace({"val": "dev", "validation": "dev"})
    return build("emobank", frame.to_dict("records"), targets={c: "continuous" for c in "VAD"},
                 default_target="V", class_order={}, source=path,
                 card="https://github.com/JULIELab/EmoBank")


def _read_csv(file: Path, columns: Sequence[str], *, latin1_fallback: bool = False
              ) -> pd.DataFrame:
    """All cells as strings; a non-UTF-8 file is read as latin-1 if ``latin1_fallback``
    (its cp1252 punctuation then comes back as C1 characters for :func:`repair_mojibake`)."""
    encodings = ("utf-8", "latin-1") if latin1_fallback else ("utf-8",)
    for encoding in encodings:
        try:
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, encoding=encoding)
            break
        except UnicodeDecodeError as err:
            if encoding == encodings[-1]:
                raise DatasetError(f"{file}: not UTF-8 text ({err})") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            raise DatasetError(f"{file}: cannot be read as CSV: {err}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{file}: missing column(s) {missing}; it has {list(frame.columns)}")
    return frame


# ---------------------------------------------------------------------------- MELD
def read_meld(path: Path) -> EmotionDataset:
    """MELD ``{train,dev,test}_sent_emo.csv``: one row per utterance of a Friends dialogue.

    Dialogue ids restart in every split, so the group is ``<split>-d<dialogue>``. Copies of
    MELD in circulation carry mojibake (``â€™``, ``\\x92``, or raw cp1252 bytes); utterances
    and speakers are repaired with :func:`repair_mojibake` (a no-op on clean text).
    """
    rows = []
    need = ["Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]
    for split, file in split_files(path, "{split}_sent_emo.csv", "meld").items():
        frame = _read_csv(file, need, latin1_fallback=True)
        for i, r in enumerate(frame.itertuples(index=False)):
            d, u = r.Dialogue_ID.strip(), r.Utterance_ID.strip()
            emotion, sentiment = r.Emotion.strip().lower(), r.Sentiment.strip().lower()
            if not (d.isdigit() and u.isdigit()) or emotion not in MELD_EMOTIONS \
                    or sentiment not in VALENCES:
                raise DatasetError(f"{file}: data row {i + 1}: bad ids ({d!r}, {u!r}) or labels "
                                   f"({emotion!r}, {sentiment!r})")
            rows.append({"id": f"{split}-d{d}-u{u}", "text": repair_mojibake(r.Utterance),
                         "split": split, "group": f"{split}-d{d}", "emotion": emotion,
                         "sentiment": sentiment, "speaker": repair_mojibake(r.Speaker),
                         "dialogue": int(d), "utterance": int(u)})
    return build("meld", rows, targets={"emotion": "label", "sentiment": "label"},
                 default_target="emotion", source=path,
                 class_order={"emotion": MELD_EMOTIONS, "sentiment": VALENCES},
                 card="https://github.com/declare-lab/MELD")


# ---------------------------------------------------------------------------- SEV
def sev_text(scenario: str, event: str) -> str:
    """SEV's stimulus: ``scenario + ". " + event`` (scenarios carry no final period)."""
    return f"{scenario.strip().rstrip('.')}. {event.strip()}"


def read_sev(path: Path) -> EmotionDataset:
    """SEV ``sev.jsonl``: each skeleton gives three rows, one per event valence."""
    file = find_file(path, ["sev.jsonl", "data/sev.jsonl"], "sev")
    rows = []
    for lineno, obj in read_jsonl(file):
        where = f"{file}:{lineno}"
        require(obj, ["skeleton_id", "scenario", "event"], where)
        if not isinstance(obj["event"], dict) or set(obj["event"]) != set(VALENCES):
            raise DatasetError(f"{where}: 'event' must map {list(VALENCES)} to sentences")
        for valence in ("positive", "neutral", "negative"):
            event = obj["event"][valence]
            rows.append({"id": f"{obj['skeleton_id']}-{valence}", "split": "all",
                         "text": sev_text(obj["scenario"], event), "group": obj["skeleton_id"],
                         "valence": valence, "theme": obj.get("theme"),
                         "scenario": obj["scenario"], "event": event})
    return build("sev", rows, targets={"valence": "label"}, default_target="valence",
                 class_order={"valence": VALENCES}, source=file,
                 card="https://github.com/Aurora-cx/EmotionCircuits-LLM")


def read_sev_replies(path: Path) -> EmotionDataset:
    """SEV replies (``sev_accepted.jsonl``): model replies written in one of six emotions.

    Rows whose ``judge.match`` is false (rejected by the GPT-4o-mini judge) are left out;
    the published ``accepted`` file holds only accepted rows, so normally none are.
    """
    file = find_file(path, ["sev_accepted.jsonl", "accepted.jsonl"], "sev-replies")
    rows = []
    for lineno, obj in read_jsonl(file):
        where = f"{file}:{lineno}"
        require(obj, ["key", "gen_text", "emotion"], where)
        judge = obj.get("judge")
        if isinstance(judge, dict) and "match" in judge and not judge["match"]:
            continue
        if obj["emotion"] not in SEV_EMOTIONS:
            raise DatasetError(f"{where}: emotion {obj['emotion']!r} not in {list(SEV_EMOTIONS)}")
        rows.append({"id": obj["key"], "text": obj["gen_text"], "split": "all",
                     "group": obj.get("skeleton_id") or obj["key"], "emotion": obj["emotion"],
                     "valence": obj.get("valence"), "theme": obj.get("theme"),
                     "scenario": obj.get("scenario"), "event": obj.get("event")})
    return build("sev-replies", rows, targets={"emotion": "label", "valence": "label"},
                 default_target="emotion", source=file,
                 class_order={"emotion": SEV_EMOTIONS, "valence": VALENCES},
                 card="https://github.com/Aurora-cx/EmotionCircuits-LLM")


# ---------------------------------------------------------------------------- ours
SCENARIO_EMOTIONS = (*SEV_EMOTIONS, "neutral")
_SCENARIO_FIELDS = ("id", "scenario_id", "theme", "scenario", "event", "text", "emotion",
                    "valence", "names_emotion", "target_word")


def read_emotion_scenarios(path: Path) -> EmotionDataset:
    """Our stimulus set ``stimuli.jsonl`` (see its ``CARD.md``); group = ``scenario_id``."""
    file = find_file(path, ["stimuli.jsonl"], "emotion-scenarios")
    rows = []
    for lineno, obj in read_jsonl(file):
        where = f"{file}:{lineno}"
        require(obj, _SCENARIO_FIELDS, where)
        if obj["emotion"] not in SCENARIO_EMOTIONS or obj["valence"] not in VALENCES:
            raise DatasetError(f"{where}: emotion {obj['emotion']!r} / valence "
                               f"{obj['valence']!r} not in {SCENARIO_EMOTIONS} / {VALENCES}")
        if not re.search(rf"\b{re.escape(str(obj['target_word']))}\b", str(obj["text"])):
            raise DatasetError(f"{where}: target_word {obj['target_word']!r} is not in text")
        row = {k: obj[k] for k in _SCENARIO_FIELDS}
        rows.append({**row, "split": "all", "group": obj["scenario_id"],
                     "names_emotion": bool(obj["names_emotion"])})
    card = file.parent / "CARD.md"
    return build("emotion-scenarios", rows, targets={"emotion": "label", "valence": "label"},
                 default_target="emotion", source=file,
                 class_order={"emotion": SCENARIO_EMOTIONS, "valence": VALENCES},
                 card=str(card) if card.is_file() else None)
