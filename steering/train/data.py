"""Training data for trained steering vectors: neutral prompts and the model's own replies.

Trained vectors learn from the *embedded model's own* replies, never from the evaluation's
prompts (``datasets/steering_prompts``) nor from a corpus a reporting judge was fitted on:

* prompts: SEV's neutral scenarios ("{scenario}. {neutral event}", 160 skeletons over eight
  themes: personal narratives, unlike the evaluation's questions and requests), read from
  ``sev.jsonl`` (the skeletons only; the SEV *replies* are not used);
* replies: the model's greedy replies to each prompt under every emotion's *designed prompt*
  (the teacher of prompt distillation, and the two sides of the preference objective), and
  its unsteered replies.

:func:`teacher_replies` generates them once and caches them as JSON. :func:`sampled_teacher`
(the ``rsd-*`` objectives) samples several replies per prompt of ``load_prompts("train")``
(questions, requests, small talk, instructions: the evaluation's kinds, none of its prompts)
under the designed prompt and keeps the ones a judge says express the emotion and that stay on
the prompt: rejection-sampled distillation of the prompted model into a vector.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from probe.io import atomic_write
from steering.eval.baselines import prompt_arms
from steering.eval.grid import Arm, Decoding, generate_arms
from steering.inject import Setting
from steering.train.objectives import PairData, objective
from steering.vector import SteeringError, SteeringVector

#: Objective names of the command line and the benchmarks: the three distillations differ only
#: in ``amplify`` (0 for ``distill``) and ``plausible`` (``distill-cd`` only); ``distill-boot``
#: distils the designed prompt *plus a first vector* (:func:`steered_teacher`) into a vector
#: that works without the prompt (no amplification, ``plausible`` kept).
OBJECTIVES = ("distill-cd", "distill", "distill-amp", "distill-boot", "preference", "lm")

#: Objectives learnt from :func:`sampled_teacher`'s kept replies: ``rsd-lm`` (their language-model
#: loss given the plain prompt, AxBench's ReFT-r1 objective on filtered self-generated replies)
#: ``rsd-distill`` (KL from the designed prompt's next-token distribution over their tokens,
#: plausibility-truncated as ``distill-cd``, no amplification) and ``rsd-pref`` (each kept reply
#: preferred over a rejected sample to the same prompt, plus its language-model loss: BiPO /
#: RePS on the sampler's own pairs); ``rsd-pref-kl`` adds ``KL(p_steered || p_unsteered)`` over
#: the kept reply (a fluency term, as ``sev-pref-lm-kl``).
RSD_OBJECTIVES = ("rsd-lm", "rsd-distill", "rsd-pref", "rsd-pref-kl")


@dataclass(frozen=True, kw_only=True)
class TeacherSet:
    """Replies of the model to ``prompts`` under each emotion's designed prompt (and none).

    Attributes:
        prompts: The neutral prompts (user turns, no instruction).
        replies: ``{emotion: [reply per prompt]}``; key ``"unsteered"`` holds the plain replies.
        system_prompts / user_suffixes: ``{emotion: text}`` of the designed prompt used.
        meta: model, decoding, source of the prompts.
    """

    prompts: list[str]
    replies: dict[str, list[str]]
    system_prompts: dict[str, str]
    user_suffixes: dict[str, str]
    meta: dict

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TeacherSet:
        return cls(**json.loads(Path(path).read_text()))


def _sev_skeletons(path: str | Path) -> list[dict]:
    """SEV's skeletons from ``sev.jsonl``, ordered round-robin over the themes (the order
    :func:`sev_prompts` and :func:`sev_reply_data` take slices of, so disjoint slices never
    share a skeleton)."""
    path = Path(path)
    if path.is_dir():
        path = path / "sev.jsonl"
    if not path.is_file():
        raise SteeringError(f"no SEV skeleton file at {path}: pass the path of sev.jsonl "
                            "(shared/data/sev/sev.jsonl)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_theme: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["skeleton_id"]):
        by_theme.setdefault(r["theme"], []).append(r)
    return [v[i] for i in range(max(map(len, by_theme.values())))
            for v in by_theme.values() if i < len(v)]


def _sev_prompt(row: dict, valence: str) -> str:
    return f"{row['scenario'].rstrip('.')}. {row['event'][valence]}"


def sev_prompts(path: str | Path, *, n: int | None = None, offset: int = 0) -> list[str]:
    """``n`` SEV neutral scenarios, spread over the themes (round-robin), from ``sev.jsonl``."""
    order = [_sev_prompt(r, "neutral") for r in _sev_skeletons(path)][offset:]
    return order if n is None else order[:n]


#: Objectives learnt from SEV's *replies* (Llama-3.2-3B-Instruct answering each scenario + event
#: in one emotion, accepted by SEV's judge) instead of the model's own prompted replies:
#: ``sev-preference`` (the target emotion's reply over another emotion's reply to the same
#: scenario + event), ``sev-pref-lm`` (the same plus the target reply's language-model loss) and
#: ``sev-lm`` (the target replies' language-model loss alone).
SEV_OBJECTIVES = ("sev-preference", "sev-pref-lm", "sev-pref-lm-kl", "sev-lm")


def sev_reply_data(name: str, emotion: str, path: str | Path, *, n: int | None = 60,
                   offset: int = 0, lm_weight: float = 1.0, beta: float = 5.0,
                   skip_opening: int = 0, kl_weight: float = 1.0):
    """``(PairData, objective)`` of one of :data:`SEV_OBJECTIVES` for ``emotion``.

    Rows: the skeletons ``offset .. offset + n`` of the round-robin order (the same order as
    :func:`sev_prompts`, so a slice of tune prompts taken from it elsewhere is kept out by
    choosing disjoint ranges), each with its positive, neutral and negative event as the plain
    prompt ``"{scenario}. {event}"`` and SEV's accepted ``emotion`` reply to it as the target;
    the contrast reply of the preference objectives is another emotion's accepted reply to the
    same prompt, the other emotions in turn. ``path``: the SEV folder (``sev.jsonl`` and
    ``sev_accepted.jsonl``). ``skip_opening = k``: the first ``k`` tokens of every reply are left
    out of the loss (SEV's replies open alike: 71% of its anger replies with "Are you kidding",
    81% of fear's with "Oh no, what"; a vector trained on them learns the opening).
    ``sev-pref-lm-kl``: ``sev-pref-lm`` plus ``kl_weight`` x ``KL(p_steered || p_unsteered)``
    over the target reply's tokens (a fluency term inside the objective).
    """
    if name not in SEV_OBJECTIVES:
        raise SteeringError(f"unknown SEV objective {name!r}; choose from {', '.join(SEV_OBJECTIVES)}")
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    accepted = folder / "sev_accepted.jsonl"
    if not accepted.is_file():
        raise SteeringError(f"no SEV replies at {accepted}: pass the SEV folder "
                            "(shared/data/sev, with sev.jsonl and sev_accepted.jsonl)")
    reply: dict[tuple[str, str, str], str] = {}
    for line in accepted.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("gen_text", "").strip():
                reply[(r["skeleton_id"], r["valence"], r["emotion"])] = r["gen_text"].strip()
    emotions = sorted({k[2] for k in reply})
    if emotion not in emotions:
        raise SteeringError(f"SEV has no {emotion!r} replies; it has {', '.join(emotions)}")
    others = [e for e in emotions if e != emotion]
    skeletons = _sev_skeletons(folder)[offset:]
    skeletons = skeletons if n is None else skeletons[:n]
    prompts, targets, negatives = [], [], []
    for row in skeletons:
        for valence in ("positive", "neutral", "negative"):
            key = (row["skeleton_id"], valence)
            if (*key, emotion) not in reply:
                continue
            turn = others[len(prompts) % len(others):] + others
            contrast = next((reply[(*key, o)] for o in turn if (*key, o) in reply), None)
            if contrast is None:
                continue
            prompts.append(_sev_prompt(row, valence))
            targets.append(reply[(*key, emotion)])
            negatives.append(contrast)
    if not prompts:
        raise SteeringError(f"no SEV {emotion} replies among skeletons {offset}..{offset + (n or 0)}")
    if name == "sev-lm":
        return PairData(prompts, targets, skip_reply_tokens=skip_opening), objective("lm")
    return (PairData(prompts, targets, negatives=negatives, skip_reply_tokens=skip_opening),
            objective("preference", beta=beta,
                      lm_weight=lm_weight if name.startswith("sev-pref-lm") else 0.0,
                      kl_weight=kl_weight if name == "sev-pref-lm-kl" else 0.0))


def teacher_replies(lm, prompts: Sequence[str], emotions: Sequence[str], *,
                    max_new_tokens: int = 40, batch_size: int = 16, cache: str | Path | None = None,
                    log=None) -> TeacherSet:
    """Greedy replies to ``prompts`` unprompted and under each emotion's designed prompt."""
    decoding = Decoding(max_new_tokens=max_new_tokens)
    path = _cache_file(cache, "teacher", [lm.fingerprint, list(prompts), list(emotions),
                                          asdict(decoding)])
    if path is not None and path.is_file():
        return TeacherSet.load(path)
    arms = [Arm(condition="unsteered", emotion=None)]
    designed = {}
    for e in emotions:
        arm = next(a for a in prompt_arms(e) if a.condition == "prompt-designed")
        designed[e] = arm
        arms.append(arm)
    texts = generate_arms(lm, list(prompts), arms, decoding=decoding, batch_size=batch_size, log=log)
    out = TeacherSet(prompts=list(prompts),
                     replies={"unsteered": texts[0], **{e: texts[i + 1] for i, e in enumerate(emotions)}},
                     system_prompts={e: a.system_prompt for e, a in designed.items()},
                     user_suffixes={e: a.user_suffix for e, a in designed.items()},
                     meta={"model": lm.spec.alias, "weight_fingerprint": lm.fingerprint,
                           "decoding": asdict(decoding), "prompts": "SEV neutral scenarios"})
    if path is not None:
        out.save(path)
    return out


def _cache_file(cache: str | Path | None, stem: str, parts: list) -> Path | None:
    """``<cache>/<stem>-<hash of parts>.json`` (None without a cache folder)."""
    if cache is None:
        return None
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    return Path(cache) / f"{stem}-{key}.json"


def steered_teacher(lm, teach: TeacherSet, emotion: str, vector: SteeringVector, strength: float,
                    *, max_new_tokens: int = 40, batch_size: int = 16,
                    cache: str | Path | None = None, log=None) -> TeacherSet:
    """``teach`` with ``emotion``'s replies regenerated under its designed prompt *plus*
    ``vector`` at ``strength`` (the teacher of ``distill-boot``); cached like
    :func:`teacher_replies`, keyed by the vector's checksum too."""
    if not strength or not math.isfinite(strength):
        raise SteeringError(f"a steered teacher needs a finite, non-zero strength, got {strength!r}")
    decoding = Decoding(max_new_tokens=max_new_tokens)
    digest = vector.checksum()
    path = _cache_file(cache, "teacher-steered", [lm.fingerprint, teach.prompts, emotion, digest,
                                                  strength, asdict(decoding)])
    if path is not None and path.is_file():
        return TeacherSet.load(path)
    arm = Arm(condition="prompt-designed+steered", emotion=emotion,
              system_prompt=teach.system_prompts[emotion], user_suffix=teach.user_suffixes[emotion],
              setting=Setting(vector=vector, strength=strength))
    texts = generate_arms(lm, teach.prompts, [arm], decoding=decoding, batch_size=batch_size, log=log)[0]
    out = TeacherSet(prompts=list(teach.prompts), replies={**teach.replies, emotion: texts},
                     system_prompts=dict(teach.system_prompts), user_suffixes=dict(teach.user_suffixes),
                     meta={**teach.meta, "steered": {emotion: {
                         "vector": vector.meta.get("method"), "vector_checksum": digest,
                         "strength": strength, "unit": "rms", "positions": "last-prompt+generated"}}})
    if path is not None:
        out.save(path)
    return out


def objective_data(name: str, emotion: str, teach: TeacherSet, *, amplify: float = 2.0,
                   plausible: float = 0.1, teacher_vector: SteeringVector | None = None,
                   teacher_strength: float = 0.0):
    """``(PairData, objective)`` of one objective ``name`` (:data:`OBJECTIVES`) for ``emotion``.

    Distillations learn the designed prompt's replies with its instruction as the teacher;
    ``distill-boot`` needs ``teacher_vector`` / ``teacher_strength`` (the teacher is the prompt
    plus that vector, and ``teach`` must hold that teacher's replies: :func:`steered_teacher`);
    ``preference`` contrasts them with another emotion's reply to the same prompt (the other
    emotions in turn); ``lm`` is the replies' language-model loss.
    """
    if name not in OBJECTIVES:
        raise SteeringError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    replies = teach.replies[emotion]
    if name == "distill-boot":
        if teacher_vector is None or not teacher_strength:
            raise SteeringError("distill-boot distils the designed prompt plus a first vector: give "
                                "teacher_vector and a non-zero teacher_strength")
        made = (teach.meta.get("steered") or {}).get(emotion, {})
        if (made.get("strength"), made.get("vector_checksum")) != (teacher_strength,
                                                                    teacher_vector.checksum()):
            raise SteeringError(f"the teacher replies for {emotion} were not generated with this "
                                "steered teacher; make them with steered_teacher(...) first")
    elif teacher_vector is not None:
        raise SteeringError(f"only distill-boot takes a teacher vector, not {name!r}")
    if name.startswith("distill"):
        data = PairData(teach.prompts, replies, system_prompt=teach.system_prompts[emotion],
                        user_suffix=teach.user_suffixes[emotion], teacher_vector=teacher_vector,
                        teacher_strength=teacher_strength)
        return data, objective("distill", amplify=amplify if name in ("distill-amp", "distill-cd") else 0.0,
                               plausible=plausible if name in ("distill-cd", "distill-boot") else 0.0)
    if name == "preference":
        others = [e for e in teach.system_prompts if e != emotion]
        neg = [teach.replies[others[i % len(others)]][i] for i in range(len(teach.prompts))]
        return PairData(teach.prompts, replies, negatives=neg), objective("preference")
    return PairData(teach.prompts, replies), objective("lm")


@dataclass(frozen=True, kw_only=True)
class SampledSet:
    """Replies sampled under one emotion's designed prompt and kept by a judge.

    Attributes:
        prompts / replies: One row per kept reply (a prompt appears up to ``keep`` times).
        emotion: The target emotion.
        system_prompt / user_suffix: The emotion's designed prompt (the sampler's instruction,
            unless ``meta["sampler"]["prompted"]`` is false; the teacher of ``rsd-distill``).
        meta: Model, sampling, the sampler, the judge's sources, ``accepted`` per prompt (of
            ``samples``), ``rate`` (accepted / sampled), ``prompts_kept`` (prompts with at least
            one reply).
        negatives: Per kept reply, the same prompt's most relevant *rejected* sample that passed
            the fluency gate and is no echo ("" where every sample was kept; empty in sets
            cached before negatives were kept).
    """

    prompts: list[str]
    replies: list[str]
    emotion: str
    system_prompt: str
    user_suffix: str
    meta: dict
    negatives: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> SampledSet:
        return cls(**json.loads(Path(path).read_text()))


def sampled_teacher(lm, prompts: Sequence[str], emotion: str, *, judge, samples: int = 8,
                    keep: int = 2, temperature: float = 0.8, top_p: float = 0.95,
                    max_new_tokens: int = 60, seed: int = 0, batch_size: int = 64,
                    steer: Setting | None = None, prompted: bool = True,
                    min_confidence: float | None = None,
                    cache: str | Path | None = None, log=None) -> SampledSet:
    """Rejection-sampled teacher replies for ``emotion`` (the data of :data:`RSD_OBJECTIVES`).

    ``samples`` replies per prompt are sampled (``temperature``, ``top_p``, the evaluation's
    repetition settings, ``seed``) under the emotion's designed prompt; a reply is kept if
    ``judge`` labels it ``emotion``, it passes the fluency gate, it does not merely echo the
    instruction, and its relevance (log-likelihood gain from the plain prompt, per token) is
    positive; of each prompt's kept replies the ``keep`` most relevant distinct ones stay, each
    with the prompt's most relevant rejected sample that passed the gate as its ``negative``.
    The judge must not be one that reports on the vectors trained from this (it chose their data).

    ``steer`` (a :class:`~steering.inject.Setting` with a :class:`SteeringVector`) steers the
    sampler; with ``prompted=False`` it sees the plain prompt: the steered model's *own*
    replies, judge-filtered, are then the targets of the next vector (on-policy self-training,
    ReST / expert iteration: the openings are the steered model's, not the designed prompt's).

    ``min_confidence`` also asks the judge's probability of ``emotion`` to reach it (a judge with
    ``predict_proba`` and ``classes``): an arg-max label at p ~ 0.25 of seven classes passes
    on-topic text with no emotion in it ("The three primary colors are ..." as anger).
    """
    import numpy as np
    import torch

    from steering.eval.composite import judge_sources
    from steering.eval.score import judge_replies
    from steering.inject import generate_settings
    from steering.judges.emotion import ClassifierJudge

    if samples < 1 or keep < 1 or not temperature > 0 or not 0 < top_p <= 1:
        raise SteeringError(f"sampled_teacher needs samples >= 1, keep >= 1, temperature > 0 and "
                            f"0 < top_p <= 1; got {samples}, {keep}, {temperature}, {top_p}")
    if steer is not None and not isinstance(steer.vector, SteeringVector):
        raise SteeringError("sampled_teacher steers with a Setting whose vector is a SteeringVector")
    if min_confidence is not None and not (0 < min_confidence < 1 and hasattr(judge, "predict_proba")
                                           and emotion in getattr(judge, "classes", ())):
        raise SteeringError(f"min_confidence must be in (0, 1) with a judge that has predict_proba and "
                            f"the class {emotion!r}; got {min_confidence} with {type(judge).__name__}")
    if steer is None and not prompted:
        raise SteeringError("prompted=False samples the plain model: give steer=Setting(vector=..., "
                            "strength=...) to sample a steered model's own replies")
    prompts = list(prompts)
    arm = next(a for a in prompt_arms(emotion) if a.condition == "prompt-designed")
    settings = {"samples": samples, "keep": keep, "temperature": temperature, "top_p": top_p,
                "max_new_tokens": max_new_tokens, "seed": seed}
    if min_confidence is not None:   # older caches (no threshold) keep their keys
        settings["min_confidence"] = min_confidence
    sampler = {"prompted": prompted}
    if steer is not None:
        sampler.update(vector=steer.vector.meta.get("method"), strength=steer.strength,
                       unit=steer.unit, positions=str(steer.positions),
                       digest=vector_digest(steer.vector))
    sources = sorted(judge_sources(judge))
    path = _cache_file(cache, f"sampled-{emotion}", [lm.fingerprint, prompts, settings,
                                                      arm.system_prompt, arm.user_suffix, sources,
                                                      getattr(judge, "name", type(judge).__name__)]
                       + ([sampler] if steer is not None else []))   # older caches stay valid
    if path is not None and path.is_file():
        return SampledSet.load(path)
    rows = [p for p in prompts for _ in range(samples)]
    torch.manual_seed(seed)
    texts = generate_settings(lm, [p + (arm.user_suffix if prompted else "") for p in rows],
                              [steer or Setting()], max_new_tokens=max_new_tokens,
                              batch_size=batch_size,
                              system_prompt=arm.system_prompt if prompted else None, do_sample=True,
                              temperature=temperature, top_p=top_p, **Decoding().kwargs())[0]
    frame = judge_replies(lm, rows, texts, [emotion] * len(rows), judges={"teacher": judge},
                          words=ClassifierJudge.load().words,
                          instructions=[arm.instruction] * len(rows), relevance=True)
    fluent = (frame["passed"].astype(bool) & ~frame["echo"].astype(bool)).to_numpy()
    ok = fluent & ((frame["label:teacher"] == emotion) & (frame["relevance"] > 0)).to_numpy()
    if min_confidence is not None:
        ok &= judge.predict_proba(texts)[:, list(judge.classes).index(emotion)] >= min_confidence
    kept_p, kept_r, kept_n, accepted = [], [], [], []
    for i, p in enumerate(prompts):
        span = range(i * samples, (i + 1) * samples)
        idx = [j for j in span if ok[j]]
        rejected = [j for j in span if fluent[j] and frame["label:teacher"].iat[j] != emotion
                    and texts[j].strip()]
        negative = texts[max(rejected, key=lambda j: frame["relevance"].iat[j])] if rejected else ""
        accepted.append(len(idx))
        seen: set[str] = set()
        for j in sorted(idx, key=lambda j: -frame["relevance"].iat[j]):
            if texts[j].strip() and texts[j] not in seen and len(seen) < keep:
                seen.add(texts[j])
                kept_p.append(p)
                kept_r.append(texts[j])
                kept_n.append(negative)
    if log:
        log(f"{emotion}: kept {len(kept_r)} sampled replies of {len(rows)} "
            f"({int(np.sum(ok))} accepted, {sum(a > 0 for a in accepted)}/{len(prompts)} prompts)")
    if not kept_r:
        raise SteeringError(f"no sampled {emotion} reply was accepted ({len(rows)} sampled): try "
                            "more samples, a higher temperature or another judge")
    out = SampledSet(prompts=kept_p, replies=kept_r, emotion=emotion, system_prompt=arm.system_prompt,
                     user_suffix=arm.user_suffix,
                     negatives=kept_n,
                     meta={"model": lm.spec.alias, "weight_fingerprint": lm.fingerprint, **settings,
                           "sampler": sampler, "judge_sources": sources, "accepted": accepted,
                           "rate": float(np.mean(ok)), "prompts_kept": sum(a > 0 for a in accepted),
                           "rule": "judge label == emotion, gate passed, no echo, relevance > 0"
                                   + (f", p(emotion) >= {min_confidence}" if min_confidence else ""),
                           "negative_rule": "another label, gate passed, no echo; most relevant"})
    if path is not None:
        out.save(path)
    return out


def vector_digest(vector: SteeringVector) -> str:
    """A short hash of ``vector``'s directions (sites and values): which vector, for cache keys."""
    h = hashlib.sha256()
    for site in sorted(vector.directions, key=str):
        h.update(str(site).encode())
        h.update(vector.directions[site].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cap_openings(sampled: SampledSet, max_per_opening: int, *, words: int = 3) -> SampledSet:
    """``sampled`` with at most ``max_per_opening`` kept replies per opening (first ``words``
    words, as the template gate reads them), so a vector trained on it is not taught one stock
    opening (68 of 127 kept fear replies said "I'm afraid", 25 opened with it).

    Which replies stay: every prompt's most relevant reply first, then every prompt's second
    (the order :func:`sampled_teacher` keeps them in), each while its opening has room; the
    result keeps the prompts' order. ``max_per_opening`` 0 returns ``sampled`` unchanged.
    """
    from steering.eval.composite import opening

    if max_per_opening < 0 or words < 1:
        raise SteeringError(f"cap_openings needs max_per_opening >= 0 and words >= 1; got "
                            f"{max_per_opening}, {words}")
    if not max_per_opening:
        return sampled
    rank, prev = [], None
    for p in sampled.prompts:   # each reply's rank among its prompt's kept replies
        rank.append(rank[-1] + 1 if p == prev else 0)
        prev = p
    used: dict[str, int] = {}
    keep = set()
    for i in sorted(range(len(rank)), key=lambda i: (rank[i], i)):
        head = opening(sampled.replies[i], words)
        if used.get(head, 0) < max_per_opening:
            used[head] = used.get(head, 0) + 1
            keep.add(i)
    idx = sorted(keep)
    return SampledSet(prompts=[sampled.prompts[i] for i in idx],
                      replies=[sampled.replies[i] for i in idx],
                      negatives=[sampled.negatives[i] for i in idx] if sampled.negatives else [],
                      emotion=sampled.emotion,
                      system_prompt=sampled.system_prompt, user_suffix=sampled.user_suffix,
                      meta={**sampled.meta, "max_per_opening": max_per_opening,
                            "opening_words": words, "before_cap": len(sampled.replies)})


def rsd_data(name: str, sampled: SampledSet, *, plausible: float = 0.1, skip_opening: int = 0,
             max_opening: int = 0, kl_weight: float = 1.0):
    """``(PairData, objective)`` of one of :data:`RSD_OBJECTIVES` on ``sampled``'s kept replies;
    ``max_opening``: at most that many of them per opening (:func:`cap_openings`, 0: all);
    ``skip_opening``: each reply's first tokens stay in the input and out of the loss;
    ``kl_weight``: the weight of ``rsd-pref-kl``'s KL term (the others have none)."""
    if name not in RSD_OBJECTIVES:
        raise SteeringError(f"unknown objective {name!r}; choose from {', '.join(RSD_OBJECTIVES)}")
    if skip_opening < 0:
        raise SteeringError(f"skip_opening must be >= 0, got {skip_opening}")
    sampled = cap_openings(sampled, max_opening)
    if name == "rsd-lm":
        return (PairData(sampled.prompts, sampled.replies, skip_reply_tokens=skip_opening),
                objective("lm"))
    if name.startswith("rsd-pref"):
        rows = [i for i, n in enumerate(sampled.negatives) if n.strip()]
        if not rows:
            raise SteeringError(f"{name} needs rejected samples to contrast, and this set has none "
                                "(every sample was kept, or it was cached before negatives were "
                                "kept: sample it again into another cache folder)")
        return (PairData([sampled.prompts[i] for i in rows], [sampled.replies[i] for i in rows],
                         negatives=[sampled.negatives[i] for i in rows],
                         skip_reply_tokens=skip_opening),
                objective("preference", lm_weight=1.0,
                          kl_weight=kl_weight if name == "rsd-pref-kl" else 0.0))
    return (PairData(sampled.prompts, sampled.replies, system_prompt=sampled.system_prompt,
                     user_suffix=sampled.user_suffix, skip_reply_tokens=skip_opening),
            objective("distill", plausible=plausible))
