"""Teacher-forced batches of (prompt, reply) pairs laid out so steering can find the reply.

Every row is ``[left padding] prompt [reply] [right padding]``: the prompts are left-padded to
one width ``W`` so every prompt's last token sits in column ``W - 1`` and every reply starts in
column ``W``. The logits in columns ``W - 1 ... W + R - 2`` predict the reply's tokens; the
steering mask of ``last-prompt+generated`` is the real tokens from column ``W - 1`` on (what
``probe steer`` steers while generating the same reply); that of ``opening:K`` the columns
``W - 1 ... W + K - 2``, the states that predict the reply's first K tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probe.hooks import HookError, opening_length
from steering.scoring import continuation_ids, prompt_ids
from steering.vector import SteeringError

POSITIONS = ("last-prompt+generated", "all", "opening:K")


def check_positions(positions: str) -> None:
    """Refuse training positions other than :data:`POSITIONS` (``opening:K`` with K >= 1)."""
    if isinstance(positions, str) and positions.startswith("opening:"):
        try:
            opening_length(positions)
        except HookError as exc:
            raise SteeringError(str(exc)) from None
    elif positions not in POSITIONS:
        raise SteeringError(f"training positions must be one of {', '.join(POSITIONS)}, not "
                            f"{positions!r}")


@dataclass(frozen=True)
class PairBatch:
    """Token ids of prompt + reply rows and the masks the objectives need.

    Attributes:
        input_ids, attention_mask, position_ids: ``[batch, W + R]``.
        width: ``W``, the padded prompt width.
        reply_mask: ``[batch, R]`` bool, the reply tokens the objectives score (every real
            one, or all but the first ``skip_reply_tokens`` of :func:`pair_batch`).
        reply_ids: ``[batch, R]`` the reply tokens (pad where ``reply_mask`` is False).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    width: int
    reply_mask: Tensor
    reply_ids: Tensor

    @property
    def inputs(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}

    def steer_mask(self, positions: str) -> Tensor:
        """``[batch, W + R]`` float mask of the positions a vector is added at."""
        check_positions(positions)
        mask = self.attention_mask.bool().clone()
        if positions != "all":
            mask[:, : self.width - 1] = False
        if positions.startswith("opening:"):
            mask[:, self.width - 1 + opening_length(positions):] = False
        return mask.float()

    def reply_logits(self, logits: Tensor) -> Tensor:
        """``[batch, R, vocab]``: the logits that predict each reply token.

        ``logits`` cover the whole row, or only the columns from ``W - 1`` on (a forward of
        the suffix after a cached prefix, :meth:`split`).
        """
        r = self.reply_ids.shape[1]
        start = self.width - 1 if logits.shape[1] == self.input_ids.shape[1] else 0
        return logits[:, start: start + r]

    def split(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Inputs of the prefix (columns before ``W - 1``) and of the suffix after its cache."""
        k = self.width - 1
        prefix = {"input_ids": self.input_ids[:, :k], "attention_mask": self.attention_mask[:, :k],
                  "position_ids": self.position_ids[:, :k]}
        suffix = {"input_ids": self.input_ids[:, k:], "attention_mask": self.attention_mask,
                  "position_ids": self.position_ids[:, k:]}
        return prefix, suffix


def pair_batch(lm, prompts: Sequence[str], replies: Sequence[str], *,
               system_prompt: str | None = None, user_suffix: str = "",
               max_reply_tokens: int | None = None, skip_reply_tokens: int = 0) -> PairBatch:
    """Encode ``prompts`` (chat template, optional system prompt / suffix) + ``replies``.

    ``skip_reply_tokens = k``: the first ``k`` tokens of each reply stay in the input but out of
    ``reply_mask`` (at least a reply's last token is kept), so objectives score the reply after
    its opening (a corpus whose replies open alike would otherwise teach the opening).
    """
    if skip_reply_tokens < 0:
        raise SteeringError(f"skip_reply_tokens must be >= 0, got {skip_reply_tokens}")
    if len(prompts) != len(replies) or not prompts:
        raise SteeringError(f"need as many replies as prompts (>0), got {len(prompts)} and "
                            f"{len(replies)}")
    heads = prompt_ids(lm, [p + user_suffix for p in prompts], system_prompt=system_prompt)
    tails = continuation_ids(lm, replies)
    if max_reply_tokens is not None:
        tails = [t[:max_reply_tokens] for t in tails]
    if any(not t for t in tails):
        raise SteeringError("an empty reply cannot be trained on; drop it first")
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    w, r = max(map(len, heads)), max(map(len, tails))
    ids = torch.full((len(heads), w + r), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    rmask = torch.zeros((len(heads), r), dtype=torch.bool)
    for i, (h, t) in enumerate(zip(heads, tails)):
        ids[i, w - len(h): w] = torch.as_tensor(h)
        ids[i, w: w + len(t)] = torch.as_tensor(t)
        att[i, w - len(h): w + len(t)] = 1
        rmask[i, min(skip_reply_tokens, len(t) - 1): len(t)] = True
    pos = (att.cumsum(1) - 1).clamp(min=0)
    dev = lm.device
    return PairBatch(ids.to(dev), att.to(dev), pos.to(dev), w, rmask.to(dev),
                     ids[:, w:].to(dev))
