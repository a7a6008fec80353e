"""Emotion judges that read text, fitted on nothing the steered model wrote.

Two independent judges label a text with one of :data:`LABELS` (six emotions + ``"neutral"``):

``ClassifierJudge``  word + character n-gram TF-IDF and logistic regression, trained by
                     :mod:`steering.judges.build` on GoEmotions (Apache-2.0) and shipped in
                     ``steering/artifacts/`` as safetensors + JSON (no pickle).
``LexiconJudge``     counts of NRC Emotion Lexicon words (research use only; never shipped: it is
                     read from the user's copy).

An emotion counts as *expressed* only when a judge says so **and** the text passes the fluency
gate (:mod:`steering.judges.gate`): a judge alone rewards gibberish. Judges disagree, so evaluations
report every judge's expression accuracy (with a bootstrap CI over prompts) and Cohen's kappa
between each pair (:func:`agreement`).

>>> judge = ClassifierJudge.load()
>>> judge.predict(["This makes me so angry!", "The meeting is at noon."])
['anger', 'neutral']
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from probe.errors import EmoprobeError

EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
NEUTRAL = "neutral"
LABELS = (*EMOTIONS, NEUTRAL)
ARTIFACT_DIR = Path(__file__).resolve().parents[1] / "artifacts"  # steering/artifacts
ARTIFACT_NAME = "emotion_judge"
NRC_FILE = "NRC-Emotion-Lexicon-Wordlevel-v0.92.txt"


class JudgeError(EmoprobeError, ValueError):
    """A judge cannot be loaded or used as asked."""


# ---------------------------------------------------------------------------- classifier judge
@dataclass(frozen=True, eq=False)
class ClassifierJudge:
    """TF-IDF + logistic regression emotion classifier loaded from a safetensors/JSON artifact.

    Attributes:
        classes: the labels, in the order of :meth:`predict_proba`'s columns.
        meta: the artifact's JSON (preprocessing, training data hashes, held-out accuracies).
        tensors: ``coef`` (classes x features), ``intercept`` and one ``idf.<block>`` per block.
    """

    classes: tuple[str, ...]
    meta: dict
    tensors: Mapping[str, np.ndarray]
    name: str = "classifier"

    @classmethod
    def load(cls, path: str | Path | None = None) -> ClassifierJudge:
        """Load ``<path>.json`` + ``<path>.safetensors`` (default: the shipped judge)."""
        from safetensors.numpy import load_file

        base = Path(path) if path is not None else ARTIFACT_DIR / ARTIFACT_NAME
        base = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
        meta_file, weights = base.with_suffix(".json"), base.with_suffix(".safetensors")
        missing = [str(p) for p in (meta_file, weights) if not p.is_file()]
        if missing:
            raise JudgeError(f"judge artifact incomplete: {', '.join(missing)} not found. Rebuild "
                             "it with: python scripts/build_judge.py --out " + str(base))
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != "emoprobe-tfidf-judge" or meta.get("version") != 1:
            raise JudgeError(f"{meta_file} is not an emoprobe judge artifact (format version 1)")
        return cls(classes=tuple(meta["classes"]), meta=meta, tensors=load_file(str(weights)))

    @cached_property
    def _blocks(self) -> list[tuple[object, dict[str, int], np.ndarray, bool]]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        blocks = []
        for block in self.meta["blocks"]:
            params = dict(block["params"], ngram_range=tuple(block["params"]["ngram_range"]))
            analyzer = TfidfVectorizer(**params).build_analyzer()
            index = {term: i for i, term in enumerate(block["vocabulary"])}
            blocks.append((analyzer, index, self.tensors[f"idf.{block['name']}"],
                           bool(params.get("sublinear_tf"))))
        return blocks

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The TF-IDF features the artifact's classifier reads (blocks side by side)."""
        return sp.hstack([_tfidf(texts, *b) for b in self._blocks], format="csr")

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        x = self.features(_check_texts(texts))
        coef = self.tensors["coef"].astype(np.float64)
        return np.asarray(x @ coef.T) + self.tensors["intercept"].astype(np.float64)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (texts, classes), columns in :attr:`classes` order."""
        z = self.decision_function(texts)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.classes[i] for i in self.decision_function(texts).argmax(axis=1)]

    @cached_property
    def words(self) -> frozenset[str]:
        """English word list from the judge's training text (used by the fluency gate)."""
        return frozenset(self.meta["words"])


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise JudgeError("pass a list of texts, not a single string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise JudgeError(f"text {bad[0]} is {type(texts[bad[0]]).__name__}, not str")
    return list(texts)


def _tfidf(texts, analyzer, index: dict[str, int], idf: np.ndarray,
           sublinear: bool) -> sp.csr_matrix:
    """Exactly sklearn's TfidfVectorizer.transform (norm l2) for a fitted vocabulary and idf."""
    indptr, cols, vals = [0], [], []
    for text in texts:
        counts = Counter(index[t] for t in analyzer(text) if t in index)
        cols.extend(counts)
        vals.extend(counts.values())
        indptr.append(len(cols))
    x = sp.csr_matrix((np.asarray(vals, dtype=np.float64), np.asarray(cols, dtype=np.int64),
                       np.asarray(indptr)), shape=(len(texts), len(index)))
    x.sort_indices()
    if sublinear:
        np.log(x.data, out=x.data)
        x.data += 1.0
    x = x @ sp.diags(idf.astype(np.float64))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ x)


# ---------------------------------------------------------------------------- lexicon judge
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SUFFIXES = ("ies", "ied", "ing", "ed", "es", "s", "ly", "ness")


@dataclass(frozen=True, eq=False)
class LexiconJudge:
    """Counts words of the NRC Emotion Lexicon per emotion; no emotion word means ``neutral``.

    A word associated with k of the six emotions adds 1/k to each; an unknown word is retried
    without a common suffix (``-ing``, ``-ed``, ``-s``, ...). NRC's ``joy`` is our happiness.
    Ties go to the emotion listed first in :data:`EMOTIONS`. No negation handling.
    """

    lexicon: Mapping[str, frozenset[str]]
    name: str = "lexicon"

    @classmethod
    def load(cls, path: str | Path | None = None) -> LexiconJudge:
        """Read the NRC word-level lexicon from ``path`` (file or folder; default see below).

        Without ``path``: ``$EMOPROBE_SHARED_DATA/lexicons``, then ``$EMOPROBE_DATA/lexicons``.
        """
        file = _find_lexicon(path)
        lexicon: dict[str, set[str]] = {}
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 3 or parts[2] not in ("0", "1"):
                    raise JudgeError(f"{file}:{lineno}: expected 'word<TAB>emotion<TAB>0/1', got "
                                     f"{line[:60]!r}")
                word, emotion, flag = parts
                emotion = "happiness" if emotion == "joy" else emotion
                if flag == "1" and emotion in EMOTIONS:
                    lexicon.setdefault(word, set()).add(emotion)
        if not lexicon:
            raise JudgeError(f"{file}: no word is associated with any of {EMOTIONS}")
        return cls(lexicon={w: frozenset(e) for w, e in lexicon.items()})

    def _lookup(self, word: str) -> frozenset[str]:
        if word in self.lexicon:
            return self.lexicon[word]
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                stem = word[:-len(suffix)]
                for cand in (stem, stem + "e", stem + "y"):
                    if cand in self.lexicon:
                        return self.lexicon[cand]
        return frozenset()

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Emotion-word mass per text and emotion, shape (texts, 6) in :data:`EMOTIONS` order."""
        out = np.zeros((len(texts), len(EMOTIONS)))
        col = {e: j for j, e in enumerate(EMOTIONS)}
        for i, text in enumerate(_check_texts(texts)):
            for word in _WORD.findall(text.lower()):
                found = self._lookup(word)
                for e in found:
                    out[i, col[e]] += 1.0 / len(found)
        return out

    def predict(self, texts: Sequence[str]) -> list[str]:
        s = self.scores(texts)
        return [EMOTIONS[int(r.argmax())] if r.max() > 0 else NEUTRAL for r in s]


def _find_lexicon(path: str | Path | None) -> Path:
    if path is None:
        roots = [Path(os.environ[v]) / "lexicons" for v in ("EMOPROBE_SHARED_DATA", "EMOPROBE_DATA")
                 if os.environ.get(v)]
    else:
        roots = [Path(path).expanduser()]
    for root in roots:
        if root.is_file():
            return root
        if root.is_dir():
            hits = sorted(root.glob("NRC-Emotion-Lexicon*Wordlevel*.txt"))
            if hits:
                return hits[0]
    looked = (", ".join(map(str, roots))
              or "nowhere ($EMOPROBE_SHARED_DATA and $EMOPROBE_DATA unset)")
    raise JudgeError(
        f"NRC Emotion Lexicon not found (looked in {looked}). It is not shipped (research / "
        "non-commercial licence): get NRC-Emotion-Lexicon-Wordlevel-v0.92.txt from "
        "https://saifmohammad.com/WebPages/NRC-Emotion-Lexicon.htm and pass its path "
        "(LexiconJudge.load(path) or --lexicon PATH)")


# ---------------------------------------------------------------------------- agreement
def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa between two judges' labels of the same texts (``nan`` if undefined).

    Undefined when chance agreement is 1 (both judges give one and the same label throughout).
    """
    if len(a) != len(b):
        raise JudgeError(f"kappa needs labels of the same texts: got {len(a)} and {len(b)}")
    if not len(a):
        return float("nan")
    labels = sorted(set(a) | set(b))
    idx = {lab: i for i, lab in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)))
    np.add.at(m, ([idx[x] for x in a], [idx[y] for y in b]), 1.0)
    m /= m.sum()
    po, pe = np.trace(m), float(m.sum(1) @ m.sum(0))
    return float("nan") if np.isclose(pe, 1.0) else float((po - pe) / (1.0 - pe))


def agreement(judgments: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], float]:
    """Cohen's kappa for every pair of judges: ``{(judge_a, judge_b): kappa}``."""
    names = list(judgments)
    return {(x, y): cohen_kappa(judgments[x], judgments[y])
            for i, x in enumerate(names) for y in names[i + 1:]}


# ---------------------------------------------------------------------------- expression
@dataclass(frozen=True, kw_only=True)
class ExpressionScore:
    """One judge's expression accuracy over a set of replies, with a bootstrap CI over prompts.

    ``accuracy`` counts a reply as expressing its target emotion only if the judge gives that
    emotion and the reply passed the fluency gate; ``judge_only`` ignores the gate (shown next to
    it so that a judge rewarding degenerate text is visible); ``gate_pass`` is the gate's pass rate.
    """

    judge: str
    accuracy: float
    ci_low: float
    ci_high: float
    judge_only: float
    gate_pass: float
    n: int

    def as_row(self) -> dict:
        return dict(self.__dict__)


def expressed(labels: Sequence[str], targets: Sequence[str], passed: Sequence[bool]) -> np.ndarray:
    """Per reply: the judge says the target emotion **and** the reply passed the gate."""
    if not len(labels) == len(targets) == len(passed):
        raise JudgeError(f"labels ({len(labels)}), targets ({len(targets)}) and gate results "
                         f"({len(passed)}) must describe the same replies")
    unknown = sorted(set(targets) - set(EMOTIONS))
    if unknown:
        raise JudgeError(f"unknown target emotion(s) {unknown}; choose from {EMOTIONS}")
    return (np.asarray(labels, dtype=object) == np.asarray(targets, dtype=object)) & np.asarray(
        passed, dtype=bool)


def expression_scores(judgments: Mapping[str, Sequence[str]], targets: Sequence[str],
                      passed: Sequence[bool], prompts: Sequence, *, n_boot: int = 2000,
                      seed: int = 0, ci: float = 0.95) -> list[ExpressionScore]:
    """Each judge's gated expression accuracy, with a cluster-bootstrap CI over prompts.

    Args:
        judgments: ``{judge name: label per reply}``.
        targets: the emotion each reply was steered (or prompted) towards.
        passed: the fluency gate's verdict per reply (:func:`steering.judges.gate.gate`).
        prompts: the prompt id of each reply: replies to one prompt are resampled together.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        ci: interval coverage.
    """
    from probe.stats import group_bootstrap_weights, percentile_ci

    if len(prompts) != len(targets):
        raise JudgeError(f"{len(prompts)} prompt ids for {len(targets)} replies")
    if not len(targets):
        raise JudgeError("no replies to score")
    w = group_bootstrap_weights(prompts, n_boot, seed)
    gate_pass = float(np.mean(np.asarray(passed, dtype=bool)))
    out = []
    for name, labels in judgments.items():
        hit = expressed(labels, targets, passed).astype(np.float64)
        lo, hi = percentile_ci((w @ hit) / w.sum(axis=1), ci)
        judge_only = expressed(labels, targets, [True] * len(targets)).mean()
        out.append(ExpressionScore(judge=name, accuracy=float(hit.mean()), ci_low=float(lo),
                                   ci_high=float(hi), judge_only=float(judge_only),
                                   gate_pass=gate_pass, n=len(targets)))
    return out
