"""Training data for trained steering vectors: neutral prompts and the model's own replies.

Trained vectors learn from the *embedded model's own* replies, never from the evaluation's
prompts (``datasets/steering_prompts``) nor from a corpus a reporting judge was fitted on:

* prompts: SEV's neutral scenarios ("{scenario}. {neutral event}", 160 skeletons over eight
  themes: personal narratives, unlike the evaluation's questions and requests), read from
  ``sev.jsonl`` (the skeletons only; the SEV *replies* are not used);
* replies: the model's greedy replies to each prompt under every emotion's *designed prompt*
  (the teacher of prompt distillation, and the two sides of the preference objective), and
  its unsteered replies.

:func:`teacher_replies` generates them once and caches them as JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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


def sev_prompts(path: str | Path, *, n: int | None = None, offset: int = 0) -> list[str]:
    """``n`` SEV neutral scenarios, spread over the themes (round-robin), from ``sev.jsonl``."""
    path = Path(path)
    if path.is_dir():
        path = path / "sev.jsonl"
    if not path.is_file():
        raise SteeringError(f"no SEV skeleton file at {path}: pass the path of sev.jsonl "
                            "(shared/data/sev/sev.jsonl)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_theme: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: r["skeleton_id"]):
        text = f"{r['scenario'].rstrip('.')}. {r['event']['neutral']}"
        by_theme.setdefault(r["theme"], []).append(text)
    order = [t for i in range(max(map(len, by_theme.values())))
             for t in (v[i] for v in by_theme.values() if i < len(v))]
    order = order[offset:]
    return order if n is None else order[:n]


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
        arm = [a for a in prompt_arms(e) if a.condition == "prompt-designed"][0]
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
