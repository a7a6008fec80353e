"""Steering flips: does steering along an emotion direction change the model's zero-shot answers?

The model is asked which emotion a stimulus expresses (label scoring of
:mod:`probe.scoring` over a template of :mod:`probe.behaviour.templates`; the answer
is the most likely class name, raw ``sum`` and contextually ``calibrated``), first unsteered,
then with each emotion's direction added over a band of layers at several strengths. The
directions are computed from the store's rows of the **training** scenarios only
(:func:`steering.directions.directions` with ``rows=``); the answers are read on the other,
**held-out** scenarios, so a flip is never a direction recognising its own training text.
The judge is the model's own answer to a fixed question: nothing is fitted to its outputs.

Per (emotion, band, strength), cluster-bootstrap CIs over scenarios:

``flip_to``       share of items whose unsteered answer was not the steered emotion (and whose
                  gold label is not it) that now answer the steered emotion
``flip_away``     share of items answered correctly unsteered that are now answered wrongly
``share``         share of answers naming the steered emotion (``share_unsteered``: without
                  steering; ``share_shift``: the paired change)
``accuracy``      accuracy under steering (``accuracy_shift``: minus unsteered, paired)

A **random** direction per band (unit norm per layer, the same RMS strength) is the control:
its ``flip_to`` (averaged over the emotions as targets) and ``flip_away`` say how much any push
of that size moves the answers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from probe.behaviour.paired import Bootstrap
from steering.vector import SteeringError, SteeringVector

RANDOM = "random"


@dataclass(frozen=True, kw_only=True)
class FlipsConfig:
    """The grid and the question.

    Attributes:
        strengths: Added strengths in units of each layer's typical RMS.
        bands: Layer bands ``(first, last)`` (inclusive) the direction is added to.
        emotions: Emotions steered (None: every direction the method gives); the directions
            are always computed from all emotions.
        method: Direction method (:data:`steering.directions.METHODS`).
        template: Zero-shot template (label scoring; not ``generate``).
        positions: Where the vector is added (``all``: every prompt and answer token;
            ``last-prompt+generated``: the answer position and the answer's tokens).
        heldout_share: Share of the scenarios whose items are asked (the rest make the
            directions).
        batch_size: Prompts per forward.
        n_boot, seed: Bootstrap resamples and the seed of the split and the random control.
    """

    strengths: tuple[float, ...] = (2.0, 4.0, 8.0)
    bands: tuple[tuple[int, int], ...] = ((10, 19),)
    emotions: tuple[str, ...] | None = None
    method: str = "context-agnostic"
    template: str = "completion"
    positions: str = "all"
    heldout_share: float = 0.5
    batch_size: int = 16
    n_boot: int = 1000
    seed: int = 0


def split_groups(groups: Sequence[str], share: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the held-out rows: ``share`` of the distinct groups, seeded."""
    if not 0 < share < 1:
        raise SteeringError(f"heldout_share must be between 0 and 1, got {share}")
    names = np.unique(np.asarray(groups, dtype=str))
    if len(names) < 2:
        raise SteeringError("steering flips need at least 2 scenarios (groups): one to make "
                            "the directions, one to ask about")
    rng = np.random.default_rng(seed)
    k = min(len(names) - 1, max(1, round(share * len(names))))
    held = set(rng.choice(names, size=k, replace=False).tolist())
    return np.array([g in held for g in np.asarray(groups, dtype=str)])


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A random unit direction at each of ``vector``'s sites, with its RMS units."""
    gen = torch.Generator().manual_seed(seed)
    dirs = {}
    for site, v in vector.directions.items():
        r = torch.randn(v.numel(), generator=gen)
        dirs[site] = r / r.norm()
    return SteeringVector(dirs, dict(vector.meta, emotion=RANDOM, method=RANDOM))


class Asker:
    """The zero-shot question, encoded once: ``answers()`` under whatever hooks are open."""

    def __init__(self, lm, texts: Sequence[str], classes: Sequence[str], template: str,
                 batch_size: int = 16) -> None:
        from probe.behaviour.recognition import CONTENT_FREE, encode_prompts
        from probe.scoring import tokenize_candidates
        from probe.behaviour.templates import select_templates

        (tpl,) = [t for t in select_templates("emotion", (template,))]
        if tpl.mode != "score":
            raise SteeringError(f"template {template!r} generates; steering flips need a label-"
                                "scoring template (one-word, options, completion, letters)")
        self.lm, self.classes, self.batch_size = lm, list(classes), batch_size
        self.prompts = encode_prompts(lm, tpl, list(texts) + [CONTENT_FREE], self.classes)
        self.cands = tokenize_candidates(lm.tokenizer, tpl.candidates(
            self.classes, after_text=tpl.answers_follow_text(lm.chat_template)))

    def answers(self) -> dict[str, np.ndarray]:
        """``{"sum": [n] class index, "calibrated": [n] class index}``."""
        from probe.scoring import score_candidates

        with torch.no_grad():
            lp = score_candidates(self.lm, self.prompts, self.cands,
                                  batch_size=self.batch_size).logprob
        return {"sum": lp[:-1].argmax(1), "calibrated": (lp[:-1] - lp[-1:]).argmax(1)}


def measure(asker: Asker, vectors: dict[str, SteeringVector], config: FlipsConfig, *,
            progress: bool = False) -> pd.DataFrame:
    """Answers of every item under every (direction, band, strength), unsteered first.

    Returns:
        Long table ``direction, band, strength, variant, item, answer`` (answer: class index;
        direction ``none`` for the unsteered answers).
    """
    rows = []
    base = asker.answers()
    for variant, a in base.items():
        rows.append(pd.DataFrame({"direction": "none", "band": "", "strength": 0.0,
                                  "variant": variant, "item": np.arange(len(a)), "answer": a}))
    grid = [(name, band, s) for name, vec in vectors.items() for band in config.bands
            for s in config.strengths]
    if progress:
        from tqdm.auto import tqdm

        grid = tqdm(grid, desc="steering", unit="setting")
    for name, (lo, hi), s in grid:
        vec = vectors[name].at(range(lo, hi + 1))
        with vec.apply(asker.lm, strength=s, positions=config.positions, match="architecture"):
            got = asker.answers()
        for variant, a in got.items():
            rows.append(pd.DataFrame({"direction": name, "band": f"{lo}-{hi}", "strength": s,
                                      "variant": variant, "item": np.arange(len(a)),
                                      "answer": a}))
    return pd.concat(rows, ignore_index=True)


def flip_table(answers: pd.DataFrame, gold: np.ndarray, groups: np.ndarray,
               classes: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Flip rates with cluster-bootstrap CIs (see the module docstring).

    Args:
        answers: :func:`measure` output.
        gold: ``[n]`` gold class index of each item; ``groups``: ``[n]`` its scenario.
    """
    boot = Bootstrap.of(groups, n_boot, seed)
    out = []
    for variant, part in answers.groupby("variant", sort=False):
        a0 = part[part["direction"] == "none"].sort_values("item")["answer"].to_numpy()
        ok0 = a0 == gold
        steered = part[part["direction"] != "none"]
        for (name, band, s), g in steered.groupby(["direction", "band", "strength"], sort=False):
            a = g.sort_values("item")["answer"].to_numpy()
            key = {"variant": variant, "direction": name, "band": band, "strength": s}
            targets = range(len(classes)) if name == RANDOM else [list(classes).index(name)]
            stats = _flips(boot, a0, a, gold, ok0, targets)
            if name == RANDOM:  # averaged over every class a share is 1/K by construction
                stats = {m: v for m, v in stats.items() if not m.startswith("share")}
            out += [{**key, "metric": m, "value": float(v), "ci_low": float(lo),
                     "ci_high": float(hi), "n": int(n)} for m, (v, lo, hi, n) in stats.items()]
    return pd.DataFrame(out)


def _flips(boot: Bootstrap, a0, a, gold, ok0, targets) -> dict:
    """flip_to averaged over ``targets`` (one emotion, or every class for the control)."""
    to, share = [], []
    for k in targets:
        eligible = (a0 != k) & (gold != k)
        to.append(np.where(eligible, a == k, np.nan))
        share.append((a == k).astype(float) - (a0 == k))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an item eligible for no target
        to_rate = np.nanmean(np.stack(to), 0)
    stats = {"flip_to": _nanmean(boot, to_rate),
             "share": _nanmean(boot, np.mean([(a == k) for k in targets], 0).astype(float)),
             "share_unsteered": _nanmean(boot, np.mean([(a0 == k) for k in targets], 0)
                                         .astype(float)),
             "flip_away": _nanmean(boot, np.where(ok0, a != gold, np.nan)),
             "share_shift": _nanmean(boot, np.mean(share, 0)),
             "accuracy": _nanmean(boot, (a == gold).astype(float)),
             "accuracy_shift": _nanmean(boot, (a == gold).astype(float) - ok0)}
    return stats


def _nanmean(boot: Bootstrap, x: np.ndarray):
    have = ~np.isnan(x)
    if not have.any():
        return np.nan, np.nan, np.nan, 0
    v, lo, hi = boot.subset(np.flatnonzero(have)).mean(x[have])
    return v, lo, hi, int(have.sum())


@dataclass(frozen=True)
class Flips:
    """What :func:`steering_flips` measured."""

    table: pd.DataFrame  # flip_table rows
    answers: pd.DataFrame  # measure() rows, with id, gold and answer names
    classes: list[str]
    n_items: int
    n_train_rows: int


def steering_flips(lm, store, *, target: str | None = None,
                   config: FlipsConfig = FlipsConfig(), progress: bool = False) -> Flips:
    """Directions from the store's training scenarios, answers on its held-out ones.

    Args:
        lm: The model the store was cached with (a :class:`probe.models.LoadedModel`).
        store: A store path or opened store (``last`` pooling of ``hook_resid_post``).
        target: Its label target (default: the store's).
        config: See :class:`FlipsConfig`.
    """
    from probe.store import open_store
    from probe.sweep import probe_targets
    from steering.directions import directions

    ds = store if hasattr(store, "data_vars") else open_store(store)
    tt = probe_targets(ds, target)
    if tt.task != "classification":
        raise SteeringError(f"steering flips need a class target; {tt.target!r} is continuous")
    groups = ds["group"].values.astype(str)
    held = np.zeros(len(groups), bool)
    held[tt.rows] = split_groups(groups[tt.rows], config.heldout_share, config.seed)
    train = np.zeros(len(groups), bool)
    train[tt.rows] = ~held[tt.rows]
    layers = sorted({x for lo, hi in config.bands for x in range(lo, hi + 1)})
    if max(layers) >= lm.n_layers or min(layers) < 0:
        raise SteeringError(f"bands {config.bands} go outside the model's layers 0-"
                            f"{lm.n_layers - 1}")
    neutral = "neutral" if "neutral" in set(tt.y) else None
    vecs = directions(ds, method=config.method, layers=layers, target=tt.target, rows=train,
                      neutral=neutral)  # all emotions: a subset would change the directions
    if config.emotions is not None:
        unknown = [e for e in config.emotions if e not in vecs]
        if unknown:
            raise SteeringError(f"unknown emotion(s) {unknown}; the directions are "
                                f"{sorted(vecs)}")
        vecs = {e: vecs[e] for e in config.emotions}
    vectors = {**dict(vecs), RANDOM: random_like(next(iter(vecs.values())), config.seed)}
    classes = sorted(np.unique(tt.y).tolist())
    bad = [e for e in vecs if e not in classes]
    if bad:
        raise SteeringError(f"directions {bad} are not answer classes {classes}")
    texts = ds["text"].values.astype(str)[held]
    gold_names = ds[tt.target].values.astype(str)[held]
    gold = np.array([classes.index(g) for g in gold_names])
    asker = Asker(lm, texts, classes, config.template, config.batch_size)
    answers = measure(asker, vectors, config, progress=progress)
    table = flip_table(answers, gold, groups[held], classes, n_boot=config.n_boot,
                       seed=config.seed)
    ids = ds["sample"].values.astype(str)[held]
    answers = answers.assign(id=ids[answers["item"]], gold=gold_names[answers["item"]],
                             answer=np.asarray(classes)[answers["answer"]])
    return Flips(table=table, answers=answers.drop(columns="item"), classes=classes,
                 n_items=int(held.sum()), n_train_rows=int(train.sum()))
