"""Replies generated and judged as ``steer-eval`` judges them, for steering or any intervention.

:class:`Scorer` generates the replies of arms (:class:`~steering.eval.grid.Arm`) to neutral
prompts and judges them (:func:`steering.eval.score.judge_replies`), keeping the unsteered
replies' median perplexity per prompt set (the denominator of every perplexity ratio).
:func:`table_rows` turns judged replies into the rows of ``results.csv``.
:func:`score_intervention` scores any other intervention (a hook dict, a callable that opens
hooks, a :class:`~steering.inject.Setting`) on the held-out prompts with the same judges, gate
and table rows: what circuit modulation is compared with. :func:`load_judges` loads the judges
``steer-eval`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from steering.eval.grid import Arm, Decoding, generate_arms, open_hooks
from steering.judges.emotion import EMOTIONS, JudgeError


def load_judges(*, strong: str | None = None, lexicon: str | None = None) -> dict:
    """``{"classifier": shipped, "lexicon": NRC, "strong-local": ...}`` (the last if ``strong``).

    ``strong`` is an artifact built at run time with ``scripts/build_judge.py --sources
    goemotions,dair,sev-replies --out PATH`` (never shipped: research-only data).
    """
    from steering.judges.emotion import ClassifierJudge, LexiconJudge

    judges = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(lexicon)}
    if strong:
        judges["strong-local"] = ClassifierJudge.load(strong)
    return judges


class Scorer:
    """Generates and judges arms on a prompt set; keeps the unsteered reference perplexity.

    Args:
        lm: The model (no hooks open).
        judges: ``{name: judge}`` (:func:`load_judges`).
        decoding: Generation settings.
        batch_size: Rows per ``generate`` call.
        log: Progress lines (or None).
    """

    def __init__(self, lm, judges: Mapping[str, object], *, decoding: Decoding = Decoding(),
                 batch_size: int = 64, log: Callable[[str], None] | None = None) -> None:
        from steering.judges.emotion import ClassifierJudge

        self.lm, self.judges, self.decoding, self.batch_size = lm, dict(judges), decoding, batch_size
        self.words = ClassifierJudge.load().words
        self.log = log
        self._reference: dict[tuple, float] = {}

    def frame(self, prompts, arms: Sequence[Arm], *, relevance: bool = False,
              texts: Sequence[Sequence[str]] | None = None, targets: Sequence[str] | None = None
              ) -> pd.DataFrame:
        """Replies of every arm on every prompt, judged: one row per (arm, prompt[, target]).

        ``prompts`` are :class:`~steering.eval.prompts.NeutralPrompt` s. An arm without an emotion
        (unsteered) is judged against each of ``targets``.
        """
        from steering.eval.score import judge_replies

        texts = texts if texts is not None else generate_arms(
            self.lm, [p.text for p in prompts], arms, decoding=self.decoding,
            batch_size=self.batch_size, log=self.log)
        rows = []
        for a, arm in enumerate(arms):
            for target in ([arm.emotion] if arm.emotion else list(targets or EMOTIONS)):
                for p, reply in zip(prompts, texts[a]):
                    rows.append((a, target, p, reply, arm.instruction))
        frame = judge_replies(self.lm, [r[2].text for r in rows], [r[3] for r in rows],
                              [r[1] for r in rows], judges=self.judges, words=self.words,
                              instructions=[r[4] for r in rows], relevance=relevance)
        frame.insert(0, "arm", [r[0] for r in rows])
        frame.insert(1, "condition", [arms[r[0]].condition for r in rows])
        frame.insert(2, "prompt_id", [r[2].id for r in rows])
        return frame

    def reference(self, prompts) -> float:
        """Median perplexity of the unsteered replies to ``prompts`` (computed once)."""
        from steering.inject import Setting

        key = tuple(p.id for p in prompts)
        if key not in self._reference:
            unsteered = Arm(condition="unsteered", emotion=None, setting=Setting())
            frame = self.frame(prompts, [unsteered], targets=[EMOTIONS[0]])
            self._reference[key] = float(np.nanmedian(frame["perplexity"]))
        return self._reference[key]


def table_rows(frame: pd.DataFrame, *, reference: float, n_boot: int, seed: int,
               extra: Mapping | None = None) -> list[dict]:
    """:func:`steering.eval.score.summarize` per (condition, target): the results table rows."""
    from steering.eval.score import kappas, summarize

    out = []
    for (cond, target), part in frame.groupby(["condition", "target"], sort=False):
        kap = kappas(part) if len(part) > 1 else {}
        for row in summarize(part, reference=reference, n_boot=n_boot, seed=seed):
            out.append({"emotion": target, "condition": cond, **row,
                        **{f"kappa:{k}": v for k, v in kap.items()}, **(extra or {})})
    return out


def score_intervention(lm, intervention, *, emotion: str, judges: Mapping[str, object] | None = None,
                       prompts=None, condition: str = "intervention",
                       decoding: Decoding = Decoding(), n_boot: int = 2000, seed: int = 0,
                       scorer: Scorer | None = None, relevance: bool = True,
                       return_frame: bool = False):
    """Score any intervention towards ``emotion`` like ``steer-eval`` scores steering.

    Args:
        lm: The model, with no hooks open.
        intervention: A hook dict ``{site: fn}`` (opened with ``lm.hooks``), a zero-argument
            callable returning a context manager that opens hooks (e.g.
            ``lambda: vec.apply(lm, strength=2)``), a :class:`~steering.inject.Setting`, or None
            (unsteered).
        emotion: The target emotion.
        judges: ``{name: judge}`` (default: :func:`load_judges` without the strong judge).
        prompts: :class:`~steering.eval.prompts.NeutralPrompt` s (default: the 40 ``test`` prompts).
        condition: The ``condition`` column of the rows.
        decoding: Generation settings (default: ``steer-eval``'s).
        n_boot, seed: Bootstrap over prompts.
        scorer: Reuse a :class:`Scorer` (its judges, reference perplexity cache).
        relevance: Also score relevance.
        return_frame: Also return the per-reply frame.

    Returns:
        One row per judge (the columns of ``results.csv``: ``emotion, condition, judge, value,
        ci_low, ci_high, with_echoes, judge_only, n, gate_pass, echo_share, ppl_ratio,
        relevance, regime, loop_share, kappa:...``); with ``return_frame``, ``(rows, frame)``.
    """
    from steering.eval.prompts import load_prompts
    from steering.inject import Setting

    if emotion not in EMOTIONS:
        raise JudgeError(f"unknown emotion {emotion!r}; choose from {', '.join(EMOTIONS)}")
    prompts = list(prompts) if prompts is not None else load_prompts("test")
    scorer = scorer or Scorer(lm, judges if judges is not None else load_judges(), decoding=decoding)
    ref = scorer.reference(prompts)
    setting = intervention if isinstance(intervention, Setting) else Setting()
    arm = Arm(condition=condition, emotion=emotion, setting=setting)
    with _opened(lm, intervention):
        texts = generate_arms(lm, [p.text for p in prompts], [arm], decoding=scorer.decoding,
                              batch_size=scorer.batch_size)
    frame = scorer.frame(prompts, [arm], texts=texts, relevance=relevance)
    rows = table_rows(frame, reference=ref, n_boot=n_boot, seed=seed)
    return (rows, frame) if return_frame else rows


def _opened(lm, intervention):
    from steering.inject import Setting

    return open_hooks(lm, None if isinstance(intervention, Setting) else intervention)


__all__ = ["Scorer", "load_judges", "score_intervention", "table_rows"]
