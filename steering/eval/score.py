"""How ``steer-eval`` scores replies: judges, the fluency gate, echoes, perplexity, regimes.

One reply becomes one row of a :class:`pandas.DataFrame` (:func:`judge_replies`): each judge's
label, the gate's verdict and first failing check, the reply's perplexity under the
**unsteered** model (given its neutral prompt, whatever instruction produced it), whether it
merely echoes the instruction, and optionally its relevance. :func:`summarize` turns the rows of
one condition into one table row per judge.

A reply *expresses* its target emotion for a judge only if the judge gives that emotion, the
reply passes the gate **and** it is not an echo (:func:`echoes`): a reply that repeats "(Please
answer, and sound happy.)" or says "Happy!" and little else expresses nothing, however a judge
reads it. ``with_echoes`` (gate, echoes counted) and ``judge_only`` (no gate, echoes counted)
are kept next to it so that what the gate and the echo rule removed stays visible.

>>> echoes("The train left at nine and (Please answer, and sound happy.)", "happiness",
...        "(Please answer, and sound happy.)")
True
>>> echoes("I am so happy!", "happiness"), echoes("I am so happy that the sun is out today.", "happiness")
(True, False)
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from steering.judges.emotion import EMOTIONS, JudgeError, agreement
from steering.judges.fluency import LOOP_REASONS, classify_regime
from steering.judges.gate import failed_checks, gate, text_signals

#: Words that name an emotion (what an echo says and little else besides).
EMOTION_WORDS = {
    "anger": frozenset({"anger", "angry", "angrily", "angered", "furious", "mad", "rage"}),
    "sadness": frozenset({"sad", "sadness", "sadly", "unhappy", "sorrow", "sorrowful"}),
    "happiness": frozenset({"happy", "happiness", "happily", "joy", "joyful", "glad"}),
    "fear": frozenset({"fear", "afraid", "scared", "fearful", "frightened", "terrified"}),
    "surprise": frozenset({"surprise", "surprised", "surprising", "amazed", "astonished"}),
    "disgust": frozenset({"disgust", "disgusted", "disgusting", "gross", "revolting"}),
}
_STOP = frozenset(
    "a an the i i'm im am is are was were be been being so very really too and or but of to in "
    "on at for with it it's its this that my me you your we our they he she oh wow just feel "
    "feeling felt sound sounds please answer reply always".split())
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")


def echoes(reply: str, emotion: str, instruction: str | None = None, *, span: int = 4,
           min_other: int = 3) -> bool:
    """True if ``reply`` only echoes an instruction instead of expressing ``emotion``.

    Two cases: the reply contains ``span`` consecutive words of ``instruction`` (the system
    prompt or user-turn suffix that asked for the emotion), or it names the emotion and has
    fewer than ``min_other`` other content words ("I am so happy!").
    """
    if emotion not in EMOTION_WORDS:
        raise JudgeError(f"unknown emotion {emotion!r}; choose from {EMOTIONS}")
    words = _WORDS.findall(reply.lower())
    if instruction:
        said = _WORDS.findall(instruction.lower())
        grams = {tuple(said[i:i + span]) for i in range(len(said) - span + 1)}
        if any(tuple(words[i:i + span]) in grams for i in range(len(words) - span + 1)):
            return True
    named = EMOTION_WORDS[emotion]
    other = [w for w in words if w not in _STOP and w not in named]
    return any(w in named for w in words) and len(other) < min_other


# ---------------------------------------------------------------------------- likelihoods
@torch.inference_mode()
def reply_logprobs(lm, prompts: Sequence[str], replies: Sequence[str], *,
                   batch_size: int = 32) -> list[torch.Tensor]:
    """Log-probability of each reply token given its prompt, under ``lm`` as it is (no hooks).

    The same numbers as :func:`steering.scoring.token_logprobs` (tested to float32
    tolerance), but each distinct prompt runs once and its key/value cache serves all of its
    replies, and a repeated ``(prompt, reply)`` pair is scored once: a grid has many replies
    per prompt.
    """
    from steering.scoring import continuation_ids, prompt_ids

    if len(prompts) != len(replies):
        raise JudgeError(f"{len(prompts)} prompts but {len(replies)} replies")
    out: list[torch.Tensor] = [torch.zeros(0)] * len(replies)
    pairs: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(prompts, replies)):
        pairs.setdefault(key, []).append(i)
    by_prompt: dict[str, list[str]] = {}
    for p, r in pairs:
        if r:
            by_prompt.setdefault(p, []).append(r)
    for prompt, texts in by_prompt.items():
        prefix = prompt_ids(lm, [prompt])[0]
        conts = continuation_ids(lm, texts)
        for text, lp in zip(texts, _prefix_logprobs(lm, prefix, conts, batch_size)):
            for i in pairs[(prompt, text)]:
                out[i] = lp
    return out


def _prefix_logprobs(lm, prefix: list[int], conts: list[list[int]], batch_size: int):
    from probe.kvcache import cache_keyword, returned_cache
    from steering.scoring import _pad_id

    dev = lm.device
    res = lm.model(input_ids=torch.as_tensor([prefix], device=dev), use_cache=True,
                   logits_to_keep=1)
    first = torch.log_softmax(res.logits[0, -1].float(), -1).cpu()
    cache = returned_cache(res)
    out = []
    for b in range(0, len(conts), batch_size):
        part = [c for c in conts[b:b + batch_size]]
        width = max(len(c) for c in part)
        ids = torch.full((len(part), width), _pad_id(lm), dtype=torch.long)
        mask = torch.zeros((len(part), len(prefix) + width), dtype=torch.long)
        mask[:, :len(prefix)] = 1
        for j, c in enumerate(part):
            ids[j, :len(c)] = torch.as_tensor(c)
            mask[j, len(prefix):len(prefix) + len(c)] = 1
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(part))
        logits = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=True,
                          **{cache_keyword(lm.model): rows}).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        for j, c in enumerate(part):
            rest = logp[j, torch.arange(len(c) - 1), torch.as_tensor(c[1:], dtype=torch.long)]
            out.append(torch.cat([first[c[0]].reshape(1), rest]))
    return out


def _mean(lps) -> np.ndarray:
    return np.array([float(lp.mean()) if len(lp) else math.nan for lp in lps])


# ---------------------------------------------------------------------------- replies
def judge_replies(lm, prompts: Sequence[str], replies: Sequence[str], targets: Sequence[str], *,
                  judges: Mapping[str, object], words, instructions: Sequence[str | None] | None = None,
                  relevance: bool = False, batch_size: int = 32) -> pd.DataFrame:
    """One row per reply: labels, gate, perplexity, echo (and relevance).

    Args:
        lm: The model, **unsteered** (no hooks open): perplexity is how it sees the reply.
        prompts: The neutral prompt each reply answers (without any instruction).
        replies: The replies.
        targets: The emotion each reply was steered or prompted towards.
        judges: ``{name: judge}``, each with ``predict(texts) -> labels``.
        words: English word list for the gate (``ClassifierJudge.load().words``).
        instructions: Per reply, the instruction text that asked for the emotion (or None).
        relevance: Also score ``log p(reply | prompt) - log p(reply | empty turn)`` per token.
        batch_size: Rows per forward.

    Returns:
        Columns ``prompt, reply, target, label:<judge>..., passed, reason, perplexity, echo,
        relevance`` and ``signals`` (the gate's :class:`~steering.judges.gate.TextSignals`).
    """
    n = len(replies)
    if not len(prompts) == len(targets) == n:
        raise JudgeError(f"{len(prompts)} prompts, {n} replies and {len(targets)} targets")
    instructions = list(instructions) if instructions is not None else [None] * n
    lp = reply_logprobs(lm, prompts, replies, batch_size=batch_size)
    ppl = np.exp(-_mean(lp))
    signals = text_signals(list(replies), words, perplexity=ppl)
    verdicts = gate(signals)
    frame = pd.DataFrame({"prompt": list(prompts), "reply": list(replies), "target": list(targets)})
    for name, judge in judges.items():
        frame[f"label:{name}"] = judge.predict(list(replies))
    frame["passed"] = [v.passed for v in verdicts]
    frame["reason"] = [v.reason for v in verdicts]
    frame["perplexity"] = ppl
    frame["echo"] = [echoes(r, t, i) for r, t, i in zip(replies, targets, instructions)]
    frame["relevance"] = math.nan
    if relevance:
        empty = reply_logprobs(lm, [""] * n, replies, batch_size=batch_size)
        frame["relevance"] = _mean(lp) - _mean(empty)
    frame["signals"] = signals
    return frame


def judge_names(frame: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in frame.columns if c.startswith("label:")]


def hits(frame: pd.DataFrame, judge: str, *, gated: bool = True, echoes_count: bool = False) -> np.ndarray:
    """Per reply: the judge says the target (and it passed the gate, and is no echo)."""
    hit = frame[f"label:{judge}"].to_numpy() == frame["target"].to_numpy()
    if gated:
        hit &= frame["passed"].to_numpy(bool)
    if not echoes_count:
        hit &= ~frame["echo"].to_numpy(bool)
    return hit


def combined(frame: pd.DataFrame, judges: Sequence[str] | None = None) -> float:
    """Mean over judges of the gated, echo-free expression (the selection score)."""
    judges = list(judges) if judges is not None else judge_names(frame)
    return float(np.mean([hits(frame, j).mean() for j in judges]))


def summarize(frame: pd.DataFrame, *, reference: float, n_boot: int = 2000, seed: int = 0,
              group: str = "prompt_id") -> list[dict]:
    """One row per judge for the replies of one condition (CIs resample ``group`` clusters).

    Fluency columns (``gate_pass``, ``ppl_ratio`` = median perplexity / ``reference``,
    ``regime``, ``loop_share``, ``echo_share``, ``relevance`` = median) are the same in every
    judge's row.
    """
    from probe.stats import group_bootstrap_weights, percentile_ci

    if frame.empty:
        raise JudgeError("no replies to summarize")
    w = group_bootstrap_weights(frame[group].to_numpy(), n_boot, seed)
    report = classify_regime(list(frame["signals"]), reference=reference)
    ppl = frame["perplexity"].to_numpy(float)
    rel = frame["relevance"].to_numpy(float)
    shared = {"n": len(frame), "gate_pass": float(frame["passed"].mean()),
              "echo_share": float(frame["echo"].mean()),
              "ppl_ratio": float(np.nanmedian(ppl) / reference) if np.isfinite(ppl).any() else math.inf,
              "relevance": float(np.nanmedian(rel)) if np.isfinite(rel).any() else math.nan,
              "regime": report.regime, "loop_share": report.loop_share}
    rows = []
    for name in judge_names(frame):
        hit = hits(frame, name).astype(float)
        lo, hi = percentile_ci((w @ hit) / w.sum(axis=1))
        rows.append({"judge": name, "value": float(hit.mean()), "ci_low": float(lo),
                     "ci_high": float(hi),
                     "with_echoes": float(hits(frame, name, echoes_count=True).mean()),
                     "judge_only": float(hits(frame, name, gated=False, echoes_count=True).mean()),
                     **shared})
    return rows


def kappas(frame: pd.DataFrame) -> dict[str, float]:
    """Cohen's kappa between every pair of judges on these replies (``"a~b": kappa``)."""
    said = {j: list(frame[f"label:{j}"]) for j in judge_names(frame)}
    return {f"{a}~{b}": k for (a, b), k in agreement(said).items()}


def loop_failures(frame: pd.DataFrame) -> np.ndarray:
    """Per reply: fails one of the gate's repetition checks."""
    return np.array([bool(set(failed_checks(s)) & set(LOOP_REASONS)) for s in frame["signals"]])
