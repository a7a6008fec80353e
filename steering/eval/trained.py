"""Select and report steering with roles kept apart: a selection judge picks, others report.

:func:`score_arms` generates and judges arms (:class:`~steering.eval.grid.Arm`) on prompts and
adds the AxBench composite per reply (:mod:`steering.eval.composite`) for each judge given
(:func:`add_composites` adds it to a frame judged earlier).
:func:`select_scale` picks, per candidate vector, the scale with the best mean composite of the
**selection** judge on the **tune** prompts among the scales whose replies do not collapse
(:func:`steering.eval.composite.collapse_report`) and whose median perplexity ratio is at most
``max_ppl_ratio``. :func:`report_rows` summarises the **test** replies per condition and
reporting judge (gated expression and composite, each with a 95% bootstrap CI over prompts,
perplexity and relevance ratios to unsteered, collapse, wrong-way share), and
:func:`paired` the per-prompt differences between two conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from probe.stats import group_bootstrap_weights, percentile_ci
from steering.eval.baselines import ADJECTIVES, prompt_arms
from steering.eval.composite import (
    CollapseConfig,
    collapse_report,
    composite,
    concept_scores,
    suppression_scores,
    wrong_way_share,
)
from steering.eval.grid import Arm, generate_arms
from steering.eval.score import hits
from steering.eval.scorer import Scorer
from steering.inject import Setting

#: The user-turn prompt baseline of issue 17 ("Respond in a very angry way.").
USER_TURN = " Respond in a very {adjective} way."


def baseline_arms(emotion: str, steer: Setting | None = None) -> list[Arm]:
    """``prompt-user``, ``prompt-designed`` and (with ``steer``) ``prompt-designed+steered``."""
    designed = [a for a in prompt_arms(emotion, setting=steer) if a.condition != "prompt-system"]
    user = Arm(condition="prompt-user", emotion=emotion,
               user_suffix=USER_TURN.format(adjective=ADJECTIVES[emotion]))
    return [user, *designed]


def score_arms(scorer: Scorer, prompts, arms: Sequence[Arm], *, concept_judges: Mapping[str, object],
               ref_perplexity: float, ref_relevance: float, targets: Sequence[str] | None = None,
               away: bool = False, reuse: str | Path | None = None) -> pd.DataFrame:
    """Judged replies of ``arms`` (relevance on) with ``composite:<judge>`` per judge.

    ``away``: the arms steer *away* from the target (suppression): ``concept:<judge>`` is 1 - the
    judge's probability of the target (:func:`steering.eval.composite.suppression_scores`), so the
    composite, selection and wrong-way share reward less of the emotion; ``label:<judge>`` and
    the expression rates (:func:`steering.eval.score.hits`) still count the target expressed.
    ``reuse``: a replies CSV an earlier call wrote (``frame.drop(columns=["signals"])``); an arm
    whose condition it holds for every prompt keeps those replies and only the other arms
    generate. The caller vouches that a condition names the same intervention in both (every
    reply is judged again).
    """
    texts = None
    if reuse is not None:
        known = cached_replies(reuse, prompts, [a.condition for a in arms])
        new = [a for a in arms if a.condition not in known]
        made = {}
        if new:
            made = dict(zip([a.condition for a in new], generate_arms(
                scorer.lm, [p.text for p in prompts], new, decoding=scorer.decoding,
                batch_size=scorer.batch_size, log=scorer.log)))
        if scorer.log and known:
            scorer.log(f"  reused the replies of {len(known)} arms from {reuse}")
        texts = [known[a.condition] if a.condition in known else made[a.condition] for a in arms]
    frame = scorer.frame(prompts, arms, relevance=True, targets=targets, texts=texts)
    return add_composites(frame, concept_judges=concept_judges, ref_perplexity=ref_perplexity,
                          ref_relevance=ref_relevance, away=away)


def cached_replies(path: str | Path, prompts, conditions: Sequence[str]) -> dict[str, list[str]]:
    """``{condition: replies in prompts' order}`` from a replies CSV (``arm, condition, prompt_id,
    reply, ...``) for each of ``conditions`` it holds for every prompt, once each (the first
    target's rows); ``{}`` if there is no file."""
    path = Path(path)
    if not path.is_file():
        return {}
    old = pd.read_csv(path, keep_default_na=False, dtype={"prompt_id": str, "reply": str})
    ids, out = [str(p.id) for p in prompts], {}
    for cond, part in old[old["condition"].isin(list(conditions))].groupby("condition", sort=False):
        by = dict(zip(part["prompt_id"][::-1], part["reply"][::-1]))   # the first row per prompt
        if all(i in by for i in ids):
            out[str(cond)] = [by[i] for i in ids]
    return out


def add_composites(frame: pd.DataFrame, *, concept_judges: Mapping[str, object],
                   ref_perplexity: float, ref_relevance: float, away: bool = False) -> pd.DataFrame:
    """``concept:<judge>`` and ``composite:<judge>`` columns on a judged frame (relevance on),
    e.g. one judged before the unsteered reference values were known (``away``: as
    :func:`score_arms`)."""
    score = suppression_scores if away else concept_scores
    for name, judge in concept_judges.items():
        c = score(judge, list(frame["reply"]), list(frame["target"]))
        part = composite(frame, c, ref_perplexity=ref_perplexity, ref_relevance=ref_relevance)
        frame[f"concept:{name}"] = part["concept"]
        frame[f"composite:{name}"] = part["composite"]
        frame["relevance_part"], frame["fluency_part"] = part["relevance_part"], part["fluency_part"]
    return frame


def select_scale(frame: pd.DataFrame, *, judge: str, ref_perplexity: float,
                 max_ppl_ratio: float = 2.0, rank: str = "composite",
                 collapse: CollapseConfig | None = None) -> tuple[str | None, pd.DataFrame]:
    """The arm label (condition) that passes the gates with the best mean selection composite
    (``rank="composite"``, AxBench's rule) or the highest gated expression rate, ties broken by
    the composite (``rank="expression"``: a hard concept term, see :func:`rank_table`)."""
    rows = []
    for cond, part in frame.groupby("condition", sort=False):
        rep = collapse_report(list(part["reply"]), part, collapse or CollapseConfig())
        ratio = float(np.nanmedian(part["perplexity"]) / ref_perplexity)
        rows.append({"condition": cond, "composite": float(part[f"composite:{judge}"].mean()),
                     "concept": float(part[f"concept:{judge}"].mean()),
                     "expression": float(hits(part, judge).mean()) if f"label:{judge}" in part else np.nan,
                     "ppl_ratio": ratio, **rep,
                     "eligible": (not rep["collapsed"]) and ratio <= max_ppl_ratio})
    table = pd.DataFrame(rows)
    ok = rank_table(table[table["eligible"]], rank)
    best = None if ok.empty else str(ok.iloc[0]["condition"])
    return best, table


RULES = ("composite", "expression")


def rank_table(table: pd.DataFrame, rank: str = "composite") -> pd.DataFrame:
    """``table``'s rows best first: by the mean selection composite (``"composite"``) or by the
    gated expression rate with the composite breaking ties (``"expression"``).

    AxBench's composite is a harmonic mean of a *soft* concept score with relevance and fluency,
    so a point that answers well and moves the judge's probability a little can outrank one that
    expresses the emotion in most replies; the expression rule asks first how many replies the
    selection judge calls the target (within the same gates), which is what is reported."""
    if rank not in RULES:
        raise ValueError(f"unknown selection rule {rank!r}; choose from {', '.join(RULES)}")
    keys = ["composite"] if rank == "composite" else ["expression", "composite"]
    return table.sort_values(keys, ascending=False, kind="stable")


def _ci(frame: pd.DataFrame, values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    w = group_bootstrap_weights(frame["prompt_id"].to_numpy(), n_boot, seed)
    lo, hi = percentile_ci((w @ values) / w.sum(axis=1))
    return float(values.mean()), float(lo), float(hi)


def report_rows(frame: pd.DataFrame, *, judges: Sequence[str], unsteered: pd.DataFrame,
                ref_perplexity: float, ref_relevance: float, n_boot: int = 2000, seed: int = 0
                ) -> list[dict]:
    """One row per (condition, target, judge): expression and composite with CIs, and gates.

    ``unsteered``: the unsteered replies judged against the same target (for wrong-way shares).
    """
    out = []
    for (cond, target), part in frame.groupby(["condition", "target"], sort=False):
        rep = collapse_report(list(part["reply"]), part)
        base = unsteered[unsteered["target"] == target].set_index("prompt_id")
        shared = {"condition": cond, "emotion": target, "n": len(part),
                  "gate_pass": float(part["passed"].mean()),
                  "ppl_ratio": float(np.nanmedian(part["perplexity"]) / ref_perplexity),
                  "relevance_ratio": float(np.nanmedian(part["relevance"]) / ref_relevance), **rep}
        for j in judges:
            e = _ci(part, hits(part, j).astype(float), n_boot, seed)
            c = _ci(part, part[f"composite:{j}"].to_numpy(float), n_boot, seed)
            paired_base = base.loc[part["prompt_id"], f"concept:{j}"].to_numpy(float)
            out.append({**shared, "judge": j, "expression": e[0], "ci_low": e[1], "ci_high": e[2],
                        "composite": c[0], "composite_low": c[1], "composite_high": c[2],
                        "wrong_way": wrong_way_share(part[f"concept:{j}"].to_numpy(float), paired_base)
                        if cond != "unsteered" else np.nan})
    return out


def paired(frame: pd.DataFrame, a: str, b: str, *, judge: str, metric: str = "expression",
           n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over targets, per prompt, of ``a`` minus ``b``; 95% bootstrap CI over prompts."""
    def per_prompt(cond):
        part = frame[frame["condition"] == cond].copy()
        part["v"] = hits(part, judge).astype(float) if metric == "expression" else part[f"composite:{judge}"]
        return part.groupby("prompt_id")["v"].mean()

    d = (per_prompt(a) - per_prompt(b)).dropna()
    mean, lo, hi = _ci(pd.DataFrame({"prompt_id": d.index}), d.to_numpy(float), n_boot, seed)
    return {"a": a, "b": b, "judge": judge, "metric": metric, "diff": mean, "ci_low": lo, "ci_high": hi,
            "n_prompts": len(d)}
