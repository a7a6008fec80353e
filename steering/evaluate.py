"""The evaluation protocol of steering (``probe steer-eval``): tune, select, test, baselines.

AxBench's protocol on emoprobe's shipped neutral prompts (:mod:`steering.prompts`, a fixed
``tune`` / ``test`` split):

1. **Tune** (``tune`` prompts only): a coarse grid over direction method x layer band x
   position mode x strength on a few tune prompts, then a strength ladder around the best
   configurations on more tune prompts (:mod:`steering.eval_grid`, :mod:`steering.eval_select`).
2. **Select** per emotion the ladder point with the highest *gated, echo-free* expression
   (mean over the judges) whose perplexity ratio is at most ``max_ppl_ratio`` and whose
   capability drop (:mod:`steering.capability`) is at most ``max_capability_drop``.
3. **Test** (``test`` prompts, never seen by 1-2): the selected point and the baselines
   (unsteered; the system prompt "Always reply in {emotion}."; the designed prompt of
   docs/judges.md; designed prompt + the selected steering; a random direction of the same
   norm and settings), each judge separately with a bootstrap CI over prompts.

:func:`score_intervention` scores any other intervention (a hook dict, a callable that opens
hooks, a :class:`~steering.inject.Setting`) on the held-out prompts with the same judges, gate
and table rows: what circuit modulation is compared with.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from steering.eval_grid import Arm, Decoding, GridConfig, GridPoint, generate_arms, open_hooks
from steering.judges import EMOTIONS, JudgeError

ADJECTIVES = {"anger": "angry", "sadness": "sad", "happiness": "happy", "fear": "scared",
              "surprise": "surprised", "disgust": "disgusted"}
#: The plain prompting baseline (system prompt), as Wang et al.
SYSTEM_PROMPT = "Always reply in {emotion}."
#: The better prompt (docs/judges.md section 7, chosen there on tune-half replies).
DESIGNED_SYSTEM = "You are an assistant who is always {adjective}. You express {emotion} in every reply."
DESIGNED_SUFFIX = " (Please answer, and sound {adjective}.)"
#: Paired differences reported (first minus second), mean over emotions, CI over prompts.
COMPARISONS = (("steered", "prompt-system"), ("steered", "prompt-designed"),
               ("prompt-designed+steered", "prompt-designed"), ("steered", "random"),
               ("steered", "unsteered"))
CONDITIONS = ("unsteered", "steered", "random", "prompt-system", "prompt-designed",
              "prompt-designed+steered")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What ``steer-eval`` searches and how it scores.

    Attributes:
        emotions: Target emotions.
        grid: The coarse grid and the ladder (:class:`~steering.eval_grid.GridConfig`).
        decoding: Generation settings of every reply.
        ladder_prompts: Tune prompts of the ladder and the selection (None: all).
        test_prompts: Test prompts scored (None: all).
        max_ppl_ratio: Fluency constraint: median perplexity / the unsteered replies' median.
        max_capability_drop: Capability constraint: unsteered minus steered accuracy.
        capability_checks: Candidates per emotion whose capability is measured, best first,
            until one meets the constraint.
        capability_items: N items spread over the capability set (None: all 120).
        pareto_capability: Also measure capability at every ladder strength of the chosen
            configuration (the Pareto figure's colours).
        batch_size: Rows per ``generate`` call.
        n_boot: Bootstrap resamples (CIs over prompts).
        seed: Bootstrap and random-direction seed.
    """

    emotions: tuple[str, ...] = EMOTIONS
    grid: GridConfig = field(default_factory=GridConfig)
    decoding: Decoding = field(default_factory=Decoding)
    ladder_prompts: int | None = None
    test_prompts: int | None = None
    max_ppl_ratio: float = 2.0
    max_capability_drop: float = 0.10
    capability_checks: int = 3
    capability_items: int | None = None
    pareto_capability: bool = False
    batch_size: int = 64
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        bad = sorted(set(self.emotions) - set(EMOTIONS))
        if bad or not self.emotions:
            raise JudgeError(f"unknown or no emotions {bad or list(self.emotions)}; choose from "
                             f"{', '.join(EMOTIONS)}")
        if self.max_ppl_ratio <= 0 or self.capability_checks < 1:
            raise JudgeError("max_ppl_ratio must be > 0 and capability_checks >= 1")

    @classmethod
    def quick(cls, emotions: Sequence[str] = ("happiness", "fear")) -> EvalConfig:
        """A slice for notebooks and tests: 1 configuration, 2 strengths, 3 + 4 prompts."""
        return cls(emotions=tuple(emotions),
                   grid=GridConfig(methods=("context-agnostic",), bands=((10, 19),),
                                   positions=("last-prompt+generated",), totals=(10.0, 20.0),
                                   coarse_prompts=2, ladder_configs=1, ladder_steps=0),
                   decoding=Decoding(max_new_tokens=24), ladder_prompts=3, test_prompts=4,
                   capability_checks=1, capability_items=12, pareto_capability=False, n_boot=200)

    def record(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def spread(items: Sequence, n: int | None) -> list:
    """``n`` items evenly spread over ``items`` (the prompts are grouped by kind)."""
    if n is None or n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, max(1, n)).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def load_judges(*, strong: str | None = None, lexicon: str | None = None) -> dict:
    """``{"classifier": shipped, "lexicon": NRC, "strong-local": ...}`` (the last if ``strong``).

    ``strong`` is an artifact built at run time with ``scripts/build_judge.py --sources
    goemotions,dair,sev-replies --out PATH`` (never shipped: research-only data).
    """
    from steering.judges import ClassifierJudge, LexiconJudge

    judges = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(lexicon)}
    if strong:
        judges["strong-local"] = ClassifierJudge.load(strong)
    return judges


def prompt_arms(emotion: str, setting=None, point=None) -> list[Arm]:
    """The prompting baselines for ``emotion`` (and designed prompt + ``setting``, if given)."""
    adj = ADJECTIVES[emotion]
    designed = dict(system_prompt=DESIGNED_SYSTEM.format(adjective=adj, emotion=emotion),
                    user_suffix=DESIGNED_SUFFIX.format(adjective=adj))
    arms = [Arm(condition="prompt-system", emotion=emotion,
                system_prompt=SYSTEM_PROMPT.format(emotion=emotion)),
            Arm(condition="prompt-designed", emotion=emotion, **designed)]
    if setting is not None:
        arms.append(Arm(condition="prompt-designed+steered", emotion=emotion, setting=setting,
                        point=point, **designed))
    return arms


def random_like(vector, seed: int):
    """A random direction per site with the norm (and typical RMS) of ``vector``'s."""
    import torch

    from steering.vector import SteeringVector

    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for site, v in vector.directions.items():
        r = torch.randn(v.numel(), generator=g)
        dirs[site] = r / r.norm() * v.norm()
    return SteeringVector(dirs, {**vector.meta, "method": "random"})


# ---------------------------------------------------------------------------- scoring
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
        from steering.judges import ClassifierJudge

        self.lm, self.judges, self.decoding, self.batch_size = lm, dict(judges), decoding, batch_size
        self.words = ClassifierJudge.load().words
        self.log = log
        self._reference: dict[tuple, float] = {}

    def frame(self, prompts, arms: Sequence[Arm], *, relevance: bool = False,
              texts: Sequence[Sequence[str]] | None = None, targets: Sequence[str] | None = None
              ) -> pd.DataFrame:
        """Replies of every arm on every prompt, judged: one row per (arm, prompt[, target]).

        ``prompts`` are :class:`~steering.prompts.NeutralPrompt` s. An arm without an emotion
        (unsteered) is judged against each of ``targets``.
        """
        from steering.eval_score import judge_replies

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
    """:func:`steering.eval_score.summarize` per (condition, target): the results table rows."""
    from steering.eval_score import kappas, summarize

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
            ``lambda: vec.apply(lm, scale=2)``), a :class:`~steering.inject.Setting`, or None
            (unsteered).
        emotion: The target emotion.
        judges: ``{name: judge}`` (default: :func:`load_judges` without the strong judge).
        prompts: :class:`~steering.prompts.NeutralPrompt` s (default: the 40 ``test`` prompts).
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
    from steering.inject import Setting
    from steering.prompts import load_prompts

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


# ---------------------------------------------------------------------------- the protocol
@dataclass(kw_only=True)
class EvalResult:
    """Everything ``steer-eval`` measured (written out by :mod:`steering.eval_report`).

    Attributes:
        config: The configuration.
        tune: One record per tune grid point (``stage`` coarse / ladder).
        selections: ``{emotion: Selection}`` (:class:`steering.eval_select.Selection`).
        test: One row per test reply and target (judges' labels, gate, perplexity, echo).
        table: The results: one row per emotion x condition x judge (``emotion == "mean"``:
            mean over the emotions, CI over prompts).
        comparison: Steered minus each prompting baseline, mean over emotions, paired CI.
        capability: ``{"unsteered": {...}, "<emotion>/<condition>": {...}}``.
        references: Unsteered median perplexity per prompt set (the ratios' denominators).
        seconds: Time per stage.
    """

    config: EvalConfig
    tune: pd.DataFrame
    selections: dict
    test: pd.DataFrame
    table: pd.DataFrame
    comparison: list
    capability: dict
    references: dict
    seconds: dict


def run_evaluation(lm, config: EvalConfig, *, vectors: Mapping, judges: Mapping[str, object],
                   log: Callable[[str], None] | None = None) -> EvalResult:
    """Tune, select and test (see the module docstring); ``vectors[method][emotion]``."""
    from steering.capability import load_items
    from steering.eval_grid import ladder_points
    from steering.eval_select import best_configs, score_points
    from steering.prompts import load_prompts

    g = config.grid
    ladder_p = spread(load_prompts("tune"), config.ladder_prompts)
    coarse_p = spread(ladder_p, g.coarse_prompts)
    test_p = spread(load_prompts("test"), config.test_prompts)
    items = spread(load_items(), config.capability_items)
    scorer = Scorer(lm, judges, decoding=config.decoding, batch_size=config.batch_size, log=log)
    sec, refs = {}, {}
    with timed(log, f"unsteered tune replies ({len(ladder_p)} prompts)") as t:
        refs["coarse"], refs["ladder"] = scorer.reference(coarse_p), scorer.reference(ladder_p)
    sec["reference"] = t
    coarse_pts = g.coarse_points(config.emotions)
    with timed(log, f"coarse grid: {len(coarse_pts)} points x {len(coarse_p)} tune prompts") as t:
        coarse, _ = score_points(scorer, coarse_p, coarse_pts, vectors, stage="coarse",
                                 reference=refs["coarse"], seed=config.seed)
    sec["coarse"] = t
    configs = best_configs(coarse, k=g.ladder_configs, max_ppl=config.max_ppl_ratio)
    ladder_pts = list(dict.fromkeys(lp for e in config.emotions for best in configs[e]
                                    for lp in ladder_points(best, g.totals, g.ladder_steps)))
    with timed(log, f"ladder: {len(ladder_pts)} points x {len(ladder_p)} tune prompts") as t:
        ladder, _ = score_points(scorer, ladder_p, ladder_pts, vectors, stage="ladder",
                                 reference=refs["ladder"], seed=config.seed)
    sec["ladder"] = t
    with timed(log, f"selection (capability on {len(items)} items)") as t:
        cap, selections = _select_with_capability(lm, config, ladder, vectors, items)
    sec["selection"] = t
    tune = pd.concat([coarse, ladder], ignore_index=True)
    with timed(log, f"test: {len(test_p)} held-out prompts, selected points and baselines") as t:
        test, table, comparison, refs["test"] = _test_phase(lm, config, scorer, test_p, selections,
                                                            vectors, items, cap)
    sec["test"] = t
    return EvalResult(config=config, tune=tune, selections=selections, test=test, table=table,
                      comparison=comparison, capability=cap, references=refs,
                      seconds={k: round(v["seconds"], 1) for k, v in sec.items()})


def _cap_record(res, base=None) -> dict:
    out = {"accuracy": res.accuracy, "ci_low": res.ci_low, "ci_high": res.ci_high,
           "n": res.n, "chance": res.chance, "by_kind": res.by_kind}
    if base is not None:
        out["drop"] = base.accuracy - res.accuracy
    return out


def _select_with_capability(lm, config, ladder: pd.DataFrame, vectors, items):
    from steering.eval_select import capability_of, select

    base = capability_of(lm, None, items)
    cap = {"unsteered": _cap_record(base)}
    measured: dict = {}

    def drop(point) -> float:
        if point not in measured:
            measured[point] = capability_of(lm, point.setting(vectors), items)
        return base.accuracy - measured[point].accuracy

    selections = select(ladder, max_ppl=config.max_ppl_ratio, max_drop=config.max_capability_drop,
                        checks=config.capability_checks, capability_drop=drop)
    for sel in selections.values():  # also when no candidate met the constraints
        drop(sel.point)
    if config.pareto_capability:
        for sel in selections.values():
            for pt in ladder["point"]:
                if pt.config == sel.point.config:
                    drop(pt)
    for i, pt in enumerate(ladder["point"]):
        if pt in measured:
            ladder.loc[i, "capability"] = measured[pt].accuracy
            ladder.loc[i, "capability_drop"] = base.accuracy - measured[pt].accuracy
    for e, sel in selections.items():
        cap[f"{e}/steered"] = _cap_record(measured[sel.point], base)
    cap["_base"] = base
    return cap, selections


def _test_arms(config, selections, vectors) -> list[Arm]:
    from steering.inject import Setting

    arms = [Arm(condition="unsteered", emotion=None, setting=Setting())]
    for i, e in enumerate(config.emotions):
        pt = selections[e].point
        st = pt.setting(vectors)
        rnd = Setting(vector=random_like(st.vector, config.seed + 1 + i), scale=st.scale,
                      positions=st.positions, label=f"random like {pt.describe()}")
        arms += [Arm(condition="steered", emotion=e, setting=st, point=pt),
                 Arm(condition="random", emotion=e, setting=rnd, point=pt),
                 *prompt_arms(e, st, pt)]
    return arms


def _test_phase(lm, config, scorer, prompts, selections, vectors, items, cap):
    from steering.eval_select import capability_of

    arms = _test_arms(config, selections, vectors)
    frame = scorer.frame(prompts, arms, relevance=True, targets=config.emotions)
    plain = frame[frame["condition"] == "unsteered"].drop_duplicates("prompt_id")
    ref = float(np.nanmedian(plain["perplexity"]))
    base = cap.pop("_base")
    for arm in arms:
        if arm.condition == "random":
            cap[f"{arm.emotion}/random"] = _cap_record(capability_of(lm, arm.setting, items), base)
    rows = table_rows(frame, reference=ref, n_boot=config.n_boot, seed=config.seed)
    for row in rows:
        sel = selections.get(row["emotion"])
        if row["condition"] in ("steered", "random", "prompt-designed+steered") and sel:
            row.update(sel.point.record())
        c = cap.get(f"{row['emotion']}/{row['condition']}") if row["condition"] != "unsteered" \
            else cap["unsteered"]
        row["capability"] = c["accuracy"] if c else math.nan
        row["capability_drop"] = c.get("drop", 0.0) if c else math.nan
    means, comparison = mean_rows(frame, reference=ref, n_boot=config.n_boot, seed=config.seed)
    return frame, pd.DataFrame(rows + means), comparison, ref


def mean_rows(frame: pd.DataFrame, *, reference: float, n_boot: int, seed: int):
    """Per condition and judge: mean over target emotions (CI over prompts), and the paired
    differences steered minus each prompting condition."""
    from probe.stats import group_bootstrap_weights, percentile_ci
    from steering.eval_score import hits, judge_names

    rows, per_prompt = [], {}
    for cond, part in frame.groupby("condition", sort=False):
        for judge in judge_names(part):
            h = pd.Series(hits(part, judge).astype(float), index=part.index)
            table = h.groupby([part["prompt_id"], part["target"]]).mean().unstack()
            pp = table.mean(axis=1)  # per prompt: mean over the emotions
            per_prompt[(cond, judge)] = pp
            w = group_bootstrap_weights(pp.index.to_numpy(), n_boot, seed)
            lo, hi = percentile_ci((w @ pp.to_numpy()) / w.sum(axis=1))
            rows.append({"emotion": "mean", "condition": cond, "judge": judge,
                         "value": float(pp.mean()), "ci_low": float(lo), "ci_high": float(hi),
                         "with_echoes": float(hits(part, judge, echoes_count=True).mean()),
                         "judge_only": float(hits(part, judge, gated=False, echoes_count=True).mean()),
                         "n": len(part), "gate_pass": float(part["passed"].mean()),
                         "echo_share": float(part["echo"].mean()),
                         "ppl_ratio": float(np.nanmedian(part["perplexity"]) / reference),
                         "relevance": float(np.nanmedian(part["relevance"]))})
    comparison = []
    for a, b in COMPARISONS:
        for judge in judge_names(frame):
            if (a, judge) not in per_prompt or (b, judge) not in per_prompt:
                continue
            d = (per_prompt[(a, judge)] - per_prompt[(b, judge)]).dropna()
            w = group_bootstrap_weights(d.index.to_numpy(), n_boot, seed)
            lo, hi = percentile_ci((w @ d.to_numpy()) / w.sum(axis=1))
            comparison.append({"judge": judge, "condition": a, "versus": b,
                               "difference": float(d.mean()), "ci_low": float(lo),
                               "ci_high": float(hi), "outside_ci": bool(lo > 0 or hi < 0)})
    return rows, comparison


def timed(log, what: str):
    """Context manager that logs how long ``what`` took; returns a dict holding ``seconds``."""
    @contextlib.contextmanager
    def _cm():
        box = {"seconds": 0.0}
        t0 = time.perf_counter()
        if log:
            log(f"{what} ...")
        try:
            yield box
        finally:
            box["seconds"] = time.perf_counter() - t0
            if log:
                log(f"{what}: {box['seconds']:.0f} s")
    return _cm()


__all__ = ["ADJECTIVES", "CONDITIONS", "EvalConfig", "GridPoint", "Scorer", "load_judges",
           "prompt_arms", "random_like", "score_intervention", "spread", "table_rows"]
