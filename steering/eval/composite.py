"""A selection that cannot fool itself: AxBench's composite, collapse gates, judge roles.

**Composite** (AxBench: concept x instruction relevance x fluency, harmonic mean per reply, 0 if
any part is 0), each part in [0, 1]:

* ``concept``: the *selection* judge's probability of the target emotion (its label's indicator
  for a judge without probabilities);
* ``relevance``: the reply's relevance to its prompt (mean log-likelihood gain per token from
  the prompt, :func:`steering.eval.score.judge_replies`) over the unsteered replies' median on
  the same prompts, clipped to [0, 1];
* ``fluency``: 0 if the fluency gate fails, else ``min(1, max_ratio * ref / perplexity)``: full
  credit up to ``max_ratio`` x the unsteered median perplexity, decaying after.

**Suppression** (steering *away* from an emotion): the same composite with ``concept`` = 1 -
the judge's probability of the emotion (:func:`suppression_scores`), so it is still 0 whenever
fluency or relevance is 0: gibberish and off-topic replies are not calm, they are broken. The
wrong-way share of such concept scores is then the share of prompts the steering made *more*
emotional.

**Collapse gates** over a set of replies to *different* prompts: the share of replies opening
with the most common first ``k`` words (template collapse: "I'm not sure what to say" x16),
distinct bigrams across all replies (``cross_distinct``), and the share of replies that loop
within themselves (the gate's repetition checks). :func:`collapsed` flags a setting.

**Steerability** (Tan et al.): per prompt, the steered concept score minus the unsteered one;
the share of prompts moved the wrong way.

**Judge roles**: :class:`JudgeRoles` refuses a selection judge that also reports, and a
reporting judge fitted on data the vectors were trained on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from steering.eval.score import loop_failures
from steering.judges.emotion import JudgeError

_WORDS = re.compile(r"[a-z']+")


def harmonic(*parts: np.ndarray) -> np.ndarray:
    """Element-wise harmonic mean of parts in [0, 1]; 0 where any part is 0."""
    arr = np.clip(np.stack([np.asarray(p, float) for p in parts]), 0.0, 1.0)
    out = np.zeros(arr.shape[1:])
    ok = (arr > 0).all(0)
    out[ok] = arr.shape[0] / (1.0 / arr[:, ok]).sum(0)
    return out


def concept_scores(judge, replies: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """The judge's probability of each reply's target (0/1 for a judge without probabilities)."""
    replies, targets = list(replies), list(targets)
    if hasattr(judge, "predict_proba") and hasattr(judge, "classes"):
        proba = judge.predict_proba(replies)
        col = {c: i for i, c in enumerate(judge.classes)}
        missing = sorted(set(targets) - set(col))
        if missing:
            raise JudgeError(f"the judge has no class {missing}")
        return proba[np.arange(len(replies)), [col[t] for t in targets]]
    return (np.asarray(judge.predict(replies), dtype=object) == np.asarray(targets, dtype=object)
            ).astype(float)


def suppression_scores(judge, replies: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """1 - :func:`concept_scores`: how far each reply is from its target emotion (for steering away).

    >>> suppression_scores(judge, ["I am furious!"], ["anger"])  # doctest: +SKIP
    array([0.08])
    """
    return 1.0 - concept_scores(judge, replies, targets)


def composite(frame: pd.DataFrame, concept: np.ndarray, *, ref_perplexity: float,
              ref_relevance: float, max_ratio: float = 2.0) -> pd.DataFrame:
    """Per-reply ``concept, relevance_part, fluency_part, composite`` for a judged frame.

    ``frame`` comes from :func:`steering.eval.score.judge_replies` with ``relevance=True``;
    ``ref_perplexity`` / ``ref_relevance``: the unsteered replies' medians on the same prompts.
    """
    if not ref_relevance > 0:
        raise JudgeError(f"the unsteered relevance must be positive to scale by, got {ref_relevance}")
    rel = np.clip(np.nan_to_num(frame["relevance"].to_numpy(float), nan=0.0) / ref_relevance, 0, 1)
    ppl = frame["perplexity"].to_numpy(float)
    flu = np.where(frame["passed"].to_numpy(bool) & np.isfinite(ppl),
                   np.minimum(1.0, max_ratio * ref_perplexity / np.where(ppl > 0, ppl, np.inf)), 0.0)
    return pd.DataFrame({"concept": np.asarray(concept, float), "relevance_part": rel,
                         "fluency_part": flu, "composite": harmonic(concept, rel, flu)},
                        index=frame.index)


# ------------------------------------------------------------------------- collapse gates
@dataclass(frozen=True, kw_only=True)
class CollapseConfig:
    """Thresholds of :func:`collapsed` (defaults: loose enough for unsteered SmolLM2 replies)."""

    opening_words: int = 4
    max_opening_share: float = 0.25
    min_cross_distinct: float = 0.5
    max_loop_share: float = 0.2
    #: Share of replies that contain the most common word ``opening_words``-gram *anywhere*
    #: (a template moved past the opening, e.g. by steering that starts a few tokens in);
    #: None: reported, not gated.
    max_phrase_share: float | None = None


def opening(reply: str, k: int = 4) -> str:
    """A reply's first ``k`` words, lower-cased and without punctuation (what the template gate
    compares)."""
    return " ".join(_WORDS.findall(reply.lower())[:k])


def opening_share(replies: Sequence[str], k: int = 4) -> float:
    """Share of replies that open with the most common first ``k`` words (0 if none is shared)."""
    heads = [opening(r, k) for r in replies]
    heads = [h for h in heads if h]
    if not heads:
        return 1.0
    count = Counter(heads).most_common(1)[0][1]
    return count / len(replies) if count > 1 else 0.0


def phrase_share(replies: Sequence[str], n: int = 4) -> float:
    """Share of replies containing the most common word ``n``-gram anywhere (each reply counted
    once; 0 if no ``n``-gram is shared by two replies)."""
    seen: Counter = Counter()
    for r in replies:
        w = _WORDS.findall(r.lower())
        seen.update({tuple(w[i:i + n]) for i in range(len(w) - n + 1)})
    if not seen or not replies:
        return 0.0
    count = seen.most_common(1)[0][1]
    return count / len(replies) if count > 1 else 0.0


def cross_distinct(replies: Sequence[str], n: int = 2) -> float:
    """Distinct word ``n``-grams over all replies together / all ``n``-grams (1.0: none shared)."""
    grams = [tuple(w[i:i + n]) for r in replies for w in [_WORDS.findall(r.lower())]
             for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def collapse_report(replies: Sequence[str], frame: pd.DataFrame | None = None,
                    config: CollapseConfig = CollapseConfig()) -> dict:
    """``opening_share``, ``phrase_share``, ``cross_distinct``, ``loop_share`` and ``collapsed``
    for one setting."""
    rep = {"opening_share": opening_share(replies, config.opening_words),
           "phrase_share": phrase_share(replies, config.opening_words),
           "cross_distinct": cross_distinct(replies),
           "loop_share": float(loop_failures(frame).mean()) if frame is not None and len(frame) else 0.0}
    rep["collapsed"] = collapsed(rep, config)
    return rep


def collapsed(report: Mapping[str, float], config: CollapseConfig = CollapseConfig()) -> bool:
    """True when replies share openings, repeat each other's n-grams, or loop too often."""
    return bool(report["opening_share"] > config.max_opening_share
                or report["cross_distinct"] < config.min_cross_distinct
                or report["loop_share"] > config.max_loop_share
                or (config.max_phrase_share is not None
                    and report.get("phrase_share", 0.0) > config.max_phrase_share))


def wrong_way_share(steered: np.ndarray, unsteered: np.ndarray) -> float:
    """Share of prompts whose concept score the steering *lowered* (paired by prompt)."""
    steered, unsteered = np.asarray(steered, float), np.asarray(unsteered, float)
    if steered.shape != unsteered.shape or not steered.size:
        raise JudgeError("steered and unsteered scores must be paired per prompt")
    return float((steered < unsteered).mean())


# ------------------------------------------------------------------------- judge roles
@dataclass(frozen=True, kw_only=True)
class JudgeRoles:
    """Which judge selects and which report, and what each was fitted on.

    Attributes:
        selection: ``(name, judge)`` used to choose operating points (tune prompts only).
        report: ``{name: judge}`` that score the held-out prompts.
        fitted_on: ``{name: {data source, ...}}`` for every judge (e.g. ``{"goemotions"}``).
        trained_on: Data sources the steering vectors were trained on.
    """

    selection: tuple[str, object]
    report: Mapping[str, object]
    fitted_on: Mapping[str, frozenset[str] | set[str]]
    trained_on: frozenset[str] | set[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        name, judge = self.selection
        if not self.report:
            raise JudgeError("no reporting judge")
        if name in self.report or any(j is judge for j in self.report.values()):
            raise JudgeError(f"the selection judge {name!r} is also a reporting judge: a point "
                             "chosen by a judge must be reported by others")
        fp = _fingerprint(judge)
        same = [n for n, j in self.report.items() if fp is not None and _fingerprint(j) == fp]
        if same:
            raise JudgeError(f"reporting judge(s) {same} are the selection judge {name!r} under "
                             "another name (same weights)")
        unknown = sorted(set(self.report) - set(self.fitted_on))
        if unknown:
            raise JudgeError(f"say what reporting judge(s) {unknown} were fitted on (fitted_on)")
        for n in self.report:
            overlap = set(self.fitted_on[n]) & set(self.trained_on)
            if overlap:
                raise JudgeError(f"reporting judge {n!r} was fitted on {sorted(overlap)}, which "
                                 "the steering vectors were trained on; report with another judge")


def _fingerprint(judge) -> str | None:
    meta = getattr(judge, "meta", None)
    if isinstance(meta, Mapping) and isinstance(meta.get("training"), Mapping):
        return meta["training"].get("data_sha256")
    return None


def judge_sources(judge) -> frozenset[str]:
    """The data sources a judge artifact records (``training.sources``), or the NRC lexicon."""
    meta = getattr(judge, "meta", None)
    if isinstance(meta, Mapping) and isinstance(meta.get("training"), Mapping):
        return frozenset(meta["training"].get("sources", ()))
    return frozenset({"nrc-lexicon"}) if type(judge).__name__ == "LexiconJudge" else frozenset()
