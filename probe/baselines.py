"""Baselines a probe must beat: a control task (selectivity) and a bag-of-words model.

Control task (Hewitt & Liang, 2019, "Designing and Interpreting Probes with Control Tasks"),
adapted to sentence-level probing. In the original, every word TYPE gets a random label drawn
from the empirical label distribution; a probe can only solve that by memorising type
identity, so ``selectivity = probe accuracy - control accuracy`` separates what the
representation encodes about the task from what the probe can memorise. Here the unit is a
stimulus, and its "type" is a surface key, the word at the pooled token
(:func:`control_keys`): the target word under ``token`` pooling, else the lowercased last
word of the stimulus (:func:`last_word_keys`; ``content-last`` reads the stimulus's final
token, often a full stop shared by every row, and ``last`` with a chat template a template
token after it), or any keys the caller passes. Every stimulus with the same key
gets the same random control label. Labels are dealt to keys in random order so that the
control classes have the true classes' shares of rows: with few distinct keys, independent
draws (as in the paper, where types number thousands) would give the control task a very
different chance level, and selectivity would mix that difference in.

What this means under group k-fold: a control label can only be predicted for a test row
whose key also occurs in the fold's training rows (from OTHER groups); unseen keys are at
chance by construction. So the control score measures how much surface identity a linear
probe can memorise AND carry across groups, on the same folds and with the same probe as the
real task -- which is the comparison selectivity needs. :func:`key_coverage` reports the share
of test rows whose key was seen in training; when it is low the control task is weak (close
to chance whatever the representation) and selectivity reduces to "probe minus chance".
Regression targets get the same construction with values drawn from the empirical targets.

Each task is scored against its own chance on the same folds, :func:`prior_predictions` (the
label-blind predictor; what the probe predicts from a constant representation): the control
labels are not balanced within groups, so under group folds the control's training majority
class is rare in the test fold and its chance sits below the real task's. ``probe.evaluate``
takes selectivity as ``(probe - prior) - (control - control prior)``.

Lexical baseline: sublinear TF-IDF over word 1-2 grams + ``LogisticRegression(C=1)``
(``Ridge(alpha=1)`` for continuous targets), the vectoriser fitted on each fold's training
texts, same folds. On SEV valence with 5-fold ``GroupKFold`` by skeleton this gives 0.794, the
FACTS.md reference (plain TF-IDF: 0.785).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from probe.stats import FoldList, ProbeError, Task

_WORD = re.compile(r"\w+(?:'\w+)*")


def last_word_keys(texts: Sequence[str]) -> np.ndarray:
    """Lowercased last word of each text (``""`` when a text has no word characters).

    >>> last_word_keys(["I lost my keys.", "She WON!", "..."]).tolist()
    ['keys', 'won', '']
    """
    return np.array([(_WORD.findall(t.lower()) or [""])[-1] for t in texts], dtype=object)


def control_labels(
    keys: Sequence, y: Sequence, folds: FoldList | None = None, seed: int = 0,
    max_tries: int = 100,
) -> np.ndarray:
    """A random target per key, with the class distribution of ``y`` over rows.

    Classification: keys are visited in random order and each gets the class furthest
    below its share of ``y`` (so the control task's chance level matches the real task's even
    when there are few keys). Regression: each key gets a value drawn from ``y``.

    Args:
        keys: The surface key of each row (see :func:`last_word_keys`).
        y: True targets (labels or floats).
        folds: If given (classification), redraw until every control class has training rows
            in every fold, so the same probe can be fitted on the same folds.
        seed: Random seed; the same keys, targets and seed give the same labels.
        max_tries: Redraws before giving up.

    Returns:
        n control targets, equal for rows with equal keys.

    Raises:
        ProbeError: If no draw in ``max_tries`` is usable with these folds.
    """
    y = np.asarray(y)
    uniq, key_index, size = np.unique(np.asarray(keys, dtype=str), return_inverse=True,
                                      return_counts=True)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        if y.dtype.kind == "f":
            return y[rng.integers(0, len(y), size=len(uniq))][key_index]
        control = _balanced_draw(y, size, rng)[key_index]
        if folds is None or _usable(control, folds):
            return control
    raise ProbeError(f"no control labelling of {len(uniq)} keys keeps every class in every "
                     "training fold; the keys are too few for this many classes")


def _balanced_draw(y: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels for keys of the given row counts, matching the row share of each class."""
    classes, target = np.unique(y, return_counts=True)
    assigned = np.zeros(len(classes))
    out = np.empty(len(size), dtype=y.dtype)
    for key in rng.permutation(len(size)):
        deficit = (target - assigned) / target + 1e-9 * rng.random(len(classes))
        k = int(np.argmax(deficit))
        out[key], assigned[k] = classes[k], assigned[k] + size[key]
    return out


def _usable(control: np.ndarray, folds: FoldList) -> bool:
    classes = np.unique(control)
    return len(classes) >= 2 and all(
        len(np.unique(control[train])) == len(classes) for train, _ in folds)


def control_keys(texts: Sequence[str], pooling: str | None = None,
                 target_words: Sequence[str | None] | None = None) -> tuple[np.ndarray, str]:
    """The control task's surface key of each row for one pooling, and what the key is.

    The key is the word at the pooled token. ``token`` pooling reads the row's target word,
    so that word is the key. Every other pooling reads (or ends at) the end of the
    stimulus: ``content-last`` and ``last`` without a chat template read its final token
    (often a full stop, one "word" for every row), ``last`` with a chat template reads a
    template token after it, ``mean`` and ``content-mean`` average over it. For these the key
    is the content's last word (:func:`last_word_keys`): the last token that differs between
    rows.

    Args:
        texts: The stimulus texts (the content, without any chat template).
        pooling: The pooling the features come from (None: the content's last word).
        target_words: Each row's target word (needed for ``token`` pooling).

    Returns:
        ``(keys, description)``, e.g. ``(array([...]), "the target word")``.

    Raises:
        ProbeError: ``token`` pooling without target words.

    >>> control_keys(["I lost my keys.", "We won."])[0].tolist()
    ['keys', 'won']
    """
    if pooling != "token":
        return last_word_keys(texts), "the content's last word"
    if target_words is None or any(w is None or w != w or not str(w).strip()
                                   for w in target_words):
        raise ProbeError("the control task under 'token' pooling is keyed on each row's "
                         "target word; pass target_words (the dataset's target_word column)")
    if len(target_words) != len(texts):
        raise ProbeError(f"{len(target_words)} target words for {len(texts)} texts")
    return np.array([str(w).strip().lower() for w in target_words], dtype=object), \
        "the target word"


def same_labelling(a: Sequence, b: Sequence) -> bool:
    """Whether two labellings split the rows identically (up to renaming the classes).

    >>> same_labelling(["x", "x", "y"], ["b", "b", "a"]), same_labelling([1, 2, 2], [1, 1, 2])
    (True, False)
    """
    _, ia = np.unique(np.asarray(a), return_inverse=True)
    _, ib = np.unique(np.asarray(b), return_inverse=True)
    pairs = np.unique(np.stack([ia, ib]), axis=1)
    return len(pairs.T) == len(np.unique(ia)) == len(np.unique(ib))


def prior_predictions(y: Sequence, folds: FoldList, task: Task) -> np.ndarray:
    """Out-of-fold predictions of a label-blind model: each test row gets its fold's training
    class shares (``[n, K]``, classes sorted) or training mean (``[n]``); NaN for rows in no
    test fold.

    This is what the probe itself predicts from a constant representation, so it is each
    task's chance level on exactly these folds. Under group folds it can sit well below the
    majority share: the training folds' majority class is the test fold's minority.

    >>> prior_predictions(["a", "a", "b", "b"], [([0, 1, 2], [3]), ([1, 2, 3], [0])],
    ...                   "classification").round(2).tolist()
    [[0.33, 0.67], [nan, nan], [nan, nan], [0.67, 0.33]]
    """
    y = np.asarray(y)
    if task == "regression":
        out = np.full(len(y), np.nan)
        for train, test in folds:
            out[test] = y[train].astype(float).mean()
        return out
    classes, codes = np.unique(y, return_inverse=True)
    out = np.full((len(y), len(classes)), np.nan)
    for train, test in folds:
        out[test] = np.bincount(codes[train], minlength=len(classes)) / len(train)
    return out


def key_coverage(keys: Sequence, folds: FoldList) -> float:
    """Share of test rows whose key occurs in the training rows of their fold."""
    keys = np.asarray(keys, dtype=str)
    seen = sum(np.isin(keys[test], keys[train]).sum() for train, test in folds)
    return float(seen) / sum(len(test) for _, test in folds)


def lexical_predictions(
    texts: Sequence[str], y: Sequence, folds: FoldList, task: Task, *,
    C: float = 1.0, alpha: float = 1.0,
) -> np.ndarray:
    """Out-of-fold predictions of sublinear TF-IDF (1-2 grams) + a linear model.

    Args:
        texts: n stimulus texts.
        y: n targets (labels, or floats for regression).
        folds: ``(train_idx, test_idx)`` pairs; the vectoriser sees training texts only.
        task: ``"classification"`` (LogisticRegression(C)) or ``"regression"`` (Ridge(alpha)).
        C: Inverse L2 strength of the classifier (scikit-learn's default 1.0).
        alpha: L2 strength of the ridge regression.

    Returns:
        ``[n, K]`` class probabilities with classes in sorted order, or ``[n]`` predictions.
    """
    texts = np.asarray(texts, dtype=object)
    if len(texts) != len(y):
        raise ProbeError(f"{len(texts)} texts for {len(y)} targets")
    y = np.asarray(y)
    classes = np.unique(y) if task == "classification" else None
    out = np.zeros((len(y), len(classes))) if classes is not None else np.full(len(y), np.nan)
    for train, test in folds:
        model = LogisticRegression(C=C, max_iter=2000) if classes is not None else Ridge(alpha)
        pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), model)
        pipe.fit(texts[train], y[train])
        if classes is None:
            out[test] = pipe.predict(texts[test])
        else:
            out[np.ix_(test, np.searchsorted(classes, pipe.classes_))] = \
                pipe.predict_proba(texts[test])
    return out
