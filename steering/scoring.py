"""Log-likelihoods of replies and of answer options under a causal LM, batched on any device.

Everything here is a plain forward of ``lm.model`` (no hooks): it is how the *unsteered* model
sees a text. :func:`token_logprobs` scores each reply token given its prompt, the reply being
the assistant turn of the chat template; :func:`option_logprobs` scores several short
continuations of one prompt (answer letters, judge labels) with the toolkit's label scorer,
:func:`probe.scoring.score_candidates` (the prompt runs once, its key/value cache is reused for
every option).

Rows are batched longest first with left padding and position ids that follow the attention
mask (:func:`probe.forward.pad_batch`), so a batched score equals the one-row score (tested).

>>> lp = token_logprobs(lm, ["What is 2 + 2?"], ["2 + 2 = 4."])  # doctest: +SKIP
>>> float(lp[0].mean().neg().exp())  # perplexity of the reply  # doctest: +SKIP
3.1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probe.forward import pad_batch
from probe.scoring import ScoringError, score_candidates


def prompt_ids(lm, prompts: Sequence[str], *, chat_template: bool | None = None,
               system_prompt: str | None = None) -> list[list[int]]:
    """Token ids of each prompt, ending where the model starts its reply.

    Args:
        lm: a :class:`probe.models.LoadedModel`.
        prompts: user turns (raw text when the chat template is off).
        chat_template: wrap each prompt as a user turn with the generation prompt; ``None``
            follows ``lm.chat_template``.
        system_prompt: replaces the template's default system prompt (chat template only).
    """
    tok = lm.tokenizer
    use_template = lm.chat_template if chat_template is None else chat_template
    if use_template and not lm.has_chat_template:
        raise ScoringError("this model's tokenizer has no chat template; pass chat_template=False")
    if not use_template and system_prompt is not None:
        raise ScoringError("system_prompt needs the chat template (chat_template=True)")
    out = []
    for p in prompts:
        if use_template:
            msgs = [{"role": "user", "content": p}]
            if system_prompt is not None:
                msgs.insert(0, {"role": "system", "content": system_prompt})
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(p)["input_ids"] if p else []
        if not ids:  # nothing to condition on: start from BOS (or EOS, GPT-2's BOS)
            ids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
        out.append(list(ids))
    return out


def continuation_ids(lm, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of replies or options on their own (no special tokens added)."""
    return [list(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) if t else []
            for t in texts]


def token_logprobs(lm, prompts: Sequence[str], replies: Sequence[str], *,
                   chat_template: bool | None = None, system_prompt: str | None = None,
                   batch_size: int = 16) -> list[Float[Tensor, "reply_tokens"]]:
    """Log-probability of every reply token given its prompt, under the unsteered model.

    Args:
        lm: a :class:`probe.models.LoadedModel`.
        prompts: one user turn per reply; ``""`` gives an empty user turn (for relevance).
        replies: the assistant turns to score (an empty reply gives an empty tensor).
        chat_template: see :func:`prompt_ids`.
        system_prompt: see :func:`prompt_ids`.
        batch_size: rows per forward.

    Returns:
        One float32 CPU tensor per reply, one entry per reply token.
    """
    if len(prompts) != len(replies):
        raise ScoringError(f"{len(prompts)} prompts but {len(replies)} replies")
    prefixes = prompt_ids(lm, prompts, chat_template=chat_template, system_prompt=system_prompt)
    return sequence_logprobs(lm, prefixes, continuation_ids(lm, replies), batch_size=batch_size)


def _pad_id(lm) -> int:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


@torch.inference_mode()
def sequence_logprobs(lm, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                      *, batch_size: int = 16) -> list[Float[Tensor, "tokens"]]:
    """Log-probabilities of each continuation's tokens after its prefix (token ids in and out).

    Only the last ``max continuation + 1`` positions of each batch go through the LM head.
    """
    if batch_size < 1:
        raise ScoringError(f"batch_size must be >= 1, got {batch_size}")
    out: list[Tensor] = [torch.zeros(0)] * len(prefixes)
    order = sorted(range(len(prefixes)), key=lambda i: -(len(prefixes[i]) + len(continuations[i])))
    for b in range(0, len(order), batch_size):
        rows = [i for i in order[b:b + batch_size] if continuations[i]]
        if not rows:
            continue
        ids = [list(prefixes[i]) + list(continuations[i]) for i in rows]
        inputs = pad_batch(ids, _pad_id(lm), "left", lm.device)
        keep = max(len(continuations[i]) for i in rows) + 1
        logits = lm.model(**inputs, use_cache=False, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for j, i in enumerate(rows):
            n = len(continuations[i])
            target = torch.as_tensor(continuations[i], device=logp.device)
            out[i] = logp[j, keep - 1 - n:keep - 1].gather(-1, target[:, None])[:, 0].cpu()
    return out


def option_logprobs(lm, prompts: Sequence[str], options: Sequence[Sequence[str]], *,
                    chat_template: bool | None = None, system_prompt: str | None = None,
                    batch_size: int = 16) -> list[np.ndarray]:
    """Total log-probability of each option as the start of the reply to its prompt.

    The toolkit's label scorer on text: :func:`probe.scoring.score_candidates` runs each prompt
    once and reuses its key/value cache for every option (one extra forward for all options,
    none when every option is a single token, such as answer letters).

    Returns:
        One array per prompt with one log-probability per option (sum over the option's tokens).
    """
    if len(prompts) != len(options):
        raise ScoringError(f"{len(prompts)} prompts but {len(options)} option lists")
    empty = [(i, k) for i, opts in enumerate(options) for k, o in enumerate(opts) if not o]
    if empty:
        raise ScoringError(f"option {empty[0][1]} of prompt {empty[0][0]} is empty")
    if not prompts:
        return []
    prefixes = prompt_ids(lm, prompts, chat_template=chat_template, system_prompt=system_prompt)
    opt_ids = [continuation_ids(lm, opts) for opts in options]
    return score_candidates(lm, prefixes, opt_ids, batch_size=batch_size).rows()


@torch.inference_mode()
def greedy_replies(lm, prompts: Sequence[str], *, system_prompt: str | None = None,
                   chat_template: bool | None = None, max_new_tokens: int = 48,
                   batch_size: int = 8, **generate_kwargs) -> list[str]:
    """Greedy replies to ``prompts`` (left padding, batched longest first), in input order.

    ``generate_kwargs`` go to ``model.generate`` (e.g. ``repetition_penalty``). Whatever hooks
    are on the model act during generation: this is also how steered replies are produced.
    """
    ids = prompt_ids(lm, prompts, chat_template=chat_template, system_prompt=system_prompt)
    out = [""] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        inputs = pad_batch([ids[i] for i in rows], _pad_id(lm), "left", lm.device)
        gen = lm.model.generate(input_ids=inputs["input_ids"],
                                attention_mask=inputs["attention_mask"], do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=_pad_id(lm),
                                **generate_kwargs)
        width = inputs["input_ids"].shape[1]
        for j, i in enumerate(rows):
            out[i] = lm.tokenizer.decode(gen[j, width:], skip_special_tokens=True)
    return out
