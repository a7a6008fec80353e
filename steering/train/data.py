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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from probe.io import atomic_write
from steering.eval.baselines import prompt_arms
from steering.eval.grid import Arm, Decoding, generate_arms
from steering.train.objectives import PairData, objective
from steering.vector import SteeringError

#: Objective names of the command line and the benchmarks: the three distillations differ only
#: in ``amplify`` (0 for ``distill``) and ``plausible`` (``distill-cd`` only).
OBJECTIVES = ("distill-cd", "distill", "distill-amp", "preference", "lm")


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
    key = hashlib.sha256(json.dumps([lm.fingerprint, list(prompts), list(emotions),
                                     asdict(decoding)]).encode()).hexdigest()[:12]
    if cache is not None:
        path = Path(cache) / f"teacher-{key}.json"
        if path.is_file():
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
    if cache is not None:
        out.save(path)
    return out


def objective_data(name: str, emotion: str, teach: TeacherSet, *, amplify: float = 2.0,
                   plausible: float = 0.1):
    """``(PairData, objective)`` of one objective ``name`` (:data:`OBJECTIVES`) for ``emotion``.

    Distillations learn the designed prompt's replies with its instruction as the teacher;
    ``preference`` contrasts them with another emotion's reply to the same prompt (the other
    emotions in turn); ``lm`` is the replies' language-model loss.
    """
    if name not in OBJECTIVES:
        raise SteeringError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    replies = teach.replies[emotion]
    if name.startswith("distill"):
        data = PairData(teach.prompts, replies, system_prompt=teach.system_prompts[emotion],
                        user_suffix=teach.user_suffixes[emotion])
        return data, objective("distill", amplify=0.0 if name == "distill" else amplify,
                               plausible=plausible if name == "distill-cd" else 0.0)
    if name == "preference":
        others = [e for e in teach.system_prompts if e != emotion]
        neg = [teach.replies[others[i % len(others)]][i] for i in range(len(teach.prompts))]
        return PairData(teach.prompts, replies, negatives=neg), objective("preference")
    return PairData(teach.prompts, replies), objective("lm")
