"""Objectives of trained steering vectors: prompt distillation, preference, language modelling.

Each objective is a small object with ``prepare(lm, data)`` (what it precomputes once with the
model unsteered, no gradients) and ``loss(forward, rows)`` (a scalar for rows ``rows`` of the
data, where ``forward(batch)`` runs the *steered* model and returns its logits):

``distill``     prompt distillation: the steered model, given the plain prompt, matches the
                next-token distribution of the same model *prompted* to express the emotion
                (the designed prompt), over the prompted model's own reply tokens:
                ``KL(p_target || p_steered)`` averaged over reply tokens. ``amplify = a > 0``
                sharpens the target away from the plain model, ``p_target ~ p_prompted^(1+a) /
                p_plain^a`` (classifier-free guidance on the prompt), so the vector can do more
                than the prompt; the teacher may also be steered (``PairData.teacher_vector``:
                the prompt + a first vector, distilled into a second vector alone, which is
                ``distill-boot`` in :mod:`steering.train.data`). ``plausible = alpha > 0``
                keeps the amplified target on the tokens the prompted model itself finds
                plausible, ``p_prompted >= alpha x max p_prompted`` (the adaptive plausibility
                constraint of contrastive decoding, Li et al. 2023): amplification then re-weights what the prompted model would write
                instead of promoting rare tokens the prompt merely raised.
``preference``  BiPO / RePS-style: the target emotion's reply over the same prompt's reply in
                another emotion, ``-log sigmoid(beta * (dlogp(y+) - dlogp(y-)))`` with ``dlogp``
                the steered minus unsteered mean token log-probability; what both replies share
                (the prompt's topic, the model's style) cancels.
                ``lm_weight = w > 0`` adds ``w`` x the target replies' language-model loss
                under steering (the SFT anchor of DPO-style training), so the preferred
                reply gains likelihood instead of both replies losing it.
                ``kl_weight = k > 0`` adds ``k`` x ``KL(p_steered || p_unsteered)`` over the
                target reply's tokens (the unsteered model run on the same batch, no
                gradients): a fluency term inside the objective, which penalises moving
                probability onto tokens the unsteered model finds implausible (what the
                perplexity bound of the evaluation measures on generated text).
``lm``          the language-model loss of the target replies (AxBench's ReFT-r1): the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from steering.train.batching import PairBatch, pair_batch
from steering.vector import SteeringError, SteeringVector

Forward = Callable[[PairBatch], Tensor]


@dataclass
class PairData:
    """Training rows: a neutral prompt, the target reply, optionally a contrast reply.

    ``system_prompt`` / ``user_suffix``: the instruction the teacher saw (distillation only).
    ``teacher_vector`` / ``teacher_strength``: steering the teacher had on top of its
    instruction (added at ``last-prompt+generated`` in ``rms`` units, as ``probe steer``),
    for distilling an instruction + steering teacher into a vector alone.
    ``skip_reply_tokens``: reply tokens at the start of each reply (and contrast reply) left
    out of the loss (:func:`~steering.train.batching.pair_batch`); every objective.
    """

    prompts: list[str]
    replies: list[str]
    negatives: list[str] | None = None
    system_prompt: str | None = None
    user_suffix: str = ""
    max_reply_tokens: int = 40
    teacher_vector: SteeringVector | None = None
    teacher_strength: float = 0.0
    skip_reply_tokens: int = 0

    def __post_init__(self) -> None:
        keep = [i for i, r in enumerate(self.replies) if r.strip()
                and (self.negatives is None or self.negatives[i].strip())]
        if not keep:
            raise SteeringError("no non-empty training replies")
        self.prompts = [self.prompts[i] for i in keep]
        self.replies = [self.replies[i] for i in keep]
        if self.negatives is not None:
            self.negatives = [self.negatives[i] for i in keep]

    def __len__(self) -> int:
        return len(self.prompts)

    def teacher_hooks(self, lm, batch: PairBatch) -> AbstractContextManager:
        """The teacher's steering on ``batch`` (a teacher batch), or nothing."""
        v = self.teacher_vector
        if v is None or not self.teacher_strength:
            return nullcontext()
        mask = batch.steer_mask("last-prompt+generated").unsqueeze(-1)

        def adder(delta: Tensor):
            def fn(value: Tensor, ctx) -> Tensor:
                return value + mask.to(value.dtype) * delta.to(value.device, value.dtype)
            return fn
        return lm.hooks({s: adder(self.teacher_strength * v.rms(s) * d.float().flatten())
                         for s, d in v.directions.items()})

    def batch(self, lm, rows: Sequence[int], *, negative: bool = False,
              teacher: bool = False) -> PairBatch:
        texts = self.negatives if negative else self.replies
        return pair_batch(lm, [self.prompts[i] for i in rows], [texts[i] for i in rows],
                          system_prompt=self.system_prompt if teacher else None,
                          user_suffix=self.user_suffix if teacher else "",
                          max_reply_tokens=self.max_reply_tokens,
                          skip_reply_tokens=self.skip_reply_tokens)


def _reply_logprobs(logits: Tensor, batch: PairBatch) -> Tensor:
    """``[batch, reply, vocab]`` log-probabilities at the reply tokens."""
    return torch.log_softmax(batch.reply_logits(logits).float(), -1)


def _token_logp(logits: Tensor, batch: PairBatch, lp: Tensor | None = None) -> Tensor:
    """``[batch]`` mean log-probability of the reply tokens (``lp``: their
    :func:`_reply_logprobs`, when already computed)."""
    lp = _reply_logprobs(logits, batch) if lp is None else lp
    tok = lp.gather(-1, batch.reply_ids.unsqueeze(-1)).squeeze(-1)
    m = batch.reply_mask.float()
    return (tok * m).sum(1) / m.sum(1)


def amplified_target(lt: Tensor, ls: Tensor, amplify: float, plausible: float = 0.0) -> Tensor:
    """Log of ``p_t ~ p_prompted^(1+a) / p_plain^a`` over the last axis, restricted (when
    ``plausible`` > 0) to the tokens with ``p_prompted >= plausible x max p_prompted``.

    ``lt``, ``ls``: log-probabilities of the prompted and the plain model. Tokens outside the
    plausible set get a log-probability of -1e4 (probability 0, finite so that ``0 x log``
    terms stay 0 in the KL).
    """
    z = (1 + amplify) * lt - amplify * ls
    if plausible > 0:
        keep = lt >= lt.max(-1, keepdim=True).values + math.log(plausible)
        z = z.masked_fill(~keep, float("-inf"))
    return torch.log_softmax(z, -1).clamp_min(-1e4)


@dataclass
class Distill:
    """Prompt distillation (see the module docstring); ``amplify`` >= 0, ``plausible`` in [0, 1)."""

    amplify: float = 0.0
    plausible: float = 0.0
    name: str = "distill"
    _target: list[Tensor] = field(default_factory=list, repr=False)

    def prepare(self, lm, data: PairData) -> None:
        if not 0.0 <= self.plausible < 1.0 or self.amplify < 0:
            raise SteeringError(f"distillation needs amplify >= 0 and 0 <= plausible < 1; got "
                                f"amplify={self.amplify}, plausible={self.plausible}")
        if data.system_prompt is None and not data.user_suffix and data.teacher_vector is None:
            raise SteeringError("distillation needs a teacher that differs from the plain model: "
                                "an instruction (system_prompt and/or user_suffix) or a "
                                "teacher_vector")
        self._target = []
        with torch.no_grad():
            for c in range(0, len(data), 8):
                rows = list(range(c, min(c + 8, len(data))))
                t = data.batch(lm, rows, teacher=True)
                with data.teacher_hooks(lm, t):
                    logits = lm.model(**t.inputs).logits
                lt = torch.log_softmax(t.reply_logits(logits).float(), -1)
                if self.amplify:
                    s = data.batch(lm, rows)
                    ls = torch.log_softmax(s.reply_logits(lm.model(**s.inputs).logits).float(), -1)
                    lt = amplified_target(lt, ls, self.amplify, self.plausible)
                for j in range(len(rows)):   # the scored tokens (all but a skipped opening)
                    self._target.append(lt[j, t.reply_mask[j]].to(torch.bfloat16))

    def loss(self, lm, forward: Forward, data: PairData, rows: Sequence[int]) -> Tensor:
        b = data.batch(lm, rows)
        ls = torch.log_softmax(b.reply_logits(forward(b)).float(), -1)
        total, count = ls.new_zeros(()), 0
        for j, i in enumerate(rows):
            lt = self._target[i].float()
            total = total + (lt.exp() * (lt - ls[j, b.reply_mask[j]])).sum()
            count += lt.shape[0]
        return total / count


@dataclass
class Preference:
    """BiPO / RePS-style preference of the target reply over the contrast reply (plus
    ``lm_weight`` x the target reply's language-model loss)."""

    beta: float = 5.0
    lm_weight: float = 0.0
    kl_weight: float = 0.0
    name: str = "preference"
    _ref: Tensor | None = field(default=None, repr=False)

    def prepare(self, lm, data: PairData) -> None:
        if not self.lm_weight >= 0 or not self.beta > 0 or not self.kl_weight >= 0:
            raise SteeringError(f"preference needs beta > 0, lm_weight >= 0 and kl_weight >= 0; got "
                                f"beta={self.beta}, lm_weight={self.lm_weight}, "
                                f"kl_weight={self.kl_weight}")
        if data.negatives is None:
            raise SteeringError("the preference objective needs contrast replies (negatives)")
        pos, neg = [], []
        with torch.no_grad():
            for c in range(0, len(data), 8):
                rows = list(range(c, min(c + 8, len(data))))
                for out, negative in ((pos, False), (neg, True)):
                    b = data.batch(lm, rows, negative=negative)
                    out.append(_token_logp(lm.model(**b.inputs).logits, b))
        self._ref = torch.stack([torch.cat(pos), torch.cat(neg)], 1)

    def loss(self, lm, forward: Forward, data: PairData, rows: Sequence[int]) -> Tensor:
        bp, bn = data.batch(lm, rows), data.batch(lm, rows, negative=True)
        ref = self._ref[list(rows)]
        lp = _reply_logprobs(forward(bp), bp)
        pos = _token_logp(None, bp, lp)
        gain = (pos - ref[:, 0]) - (_token_logp(forward(bn), bn) - ref[:, 1])
        loss = -F.logsigmoid(self.beta * gain).mean()
        if self.lm_weight:
            loss = loss - self.lm_weight * pos.mean()
        if self.kl_weight:
            unsteered = getattr(forward, "unsteered", None)
            if unsteered is None:
                raise SteeringError("kl_weight needs a forward with an .unsteered(batch) method "
                                    "(steering.train.trainer.SteeredModel)")
            with torch.no_grad():
                lu = _reply_logprobs(unsteered(bp), bp)
            loss = loss + self.kl_weight * reverse_kl(lp, lu, bp.reply_mask)
        return loss


def reverse_kl(ls: Tensor, lu: Tensor, mask: Tensor) -> Tensor:
    """Mean over the ``mask``'s tokens of ``KL(p_s || p_u)`` (log-probabilities over the last
    axis): how far the steered distribution moved from the unsteered one, weighted by where the
    steered model puts its mass."""
    per_token = (ls.exp() * (ls - lu)).sum(-1)
    m = mask.float()
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


@dataclass
class LanguageModel:
    """Negative mean log-likelihood of the target replies (ReFT-r1)."""

    name: str = "lm"

    def prepare(self, lm, data: PairData) -> None:
        return None

    def loss(self, lm, forward: Forward, data: PairData, rows: Sequence[int]) -> Tensor:
        b = data.batch(lm, rows)
        return -_token_logp(forward(b), b).mean()


def objective(name: str, **kwargs):
    """``"distill"`` (``amplify``, ``plausible``), ``"preference"`` (``beta``, ``lm_weight``) or
    ``"lm"``."""
    table = {"distill": Distill, "preference": Preference, "lm": LanguageModel}
    if name not in table:
        raise SteeringError(f"unknown objective {name!r}; choose {', '.join(table)}")
    return table[name](**kwargs)
