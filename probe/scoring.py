"""Label scoring: the log-likelihood of every candidate answer as the continuation of a prompt.

The one label scorer of the toolkit: ``probe behave``'s zero-shot answers, ``probe steer-flips``,
steering's multiple-choice capability items and its LLM judge
(:func:`steering.scoring.option_logprobs`) all score their options here.

:func:`score_candidates` runs ONE forward over a batch of prompts (left-padded, position ids
from the mask, ``use_cache=True``, logits of the last position only), then copies each prompt's
KV cache once per candidate and runs all candidates of all prompts as one second forward
(skipped when every candidate is a single token). A multi-token candidate is scored token by
token; the result holds the summed log-probability and the token count, so both the ``sum``
and the length-normalised ``mean`` variants are available. :func:`score_candidates_naive`
is the reference: one full forward per (prompt, candidate), no padding, no cache; the two agree
within float tolerance (``tests/probe/test_scoring.py``, tiny models of several
families and SmolLM2) and ``benchmarks/bench_label_scoring.py`` measures the speed-up.

>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> s = score_candidates(lm, [prompt_ids], [[lm.tokenizer.encode("Anger"), ...]])  # doctest: +SKIP
>>> s.mean.argmax(1)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probe.errors import EmoprobeError
from probe.forward import pad_batch
from probe.kvcache import cache_keyword, returned_cache

__all__ = ["MIN_SHARED", "Scores", "ScoringError", "SharedPrefix", "score_candidates",
           "score_candidates_naive", "tokenize_candidates"]

Ids = Sequence[int]


class ScoringError(EmoprobeError, ValueError):
    """Prompts, candidates or replies cannot be scored as asked (empty, mismatched, ...)."""


@dataclass(frozen=True)
class Scores:
    """Candidate log-likelihoods of n prompts (``[n, C]``; NaN where a prompt has fewer).

    Attributes:
        logprob: Sum over a candidate's tokens of ``log p(token | prompt, earlier tokens)``.
        n_tokens: Number of tokens of each candidate (0 where absent).
    """

    logprob: np.ndarray
    n_tokens: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Length-normalised log-likelihood (per token)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.logprob / self.n_tokens

    def rows(self) -> list[np.ndarray]:
        """Each prompt's candidate log-probabilities (sum), without the NaN of absent ones."""
        return [lp[n > 0] for lp, n in zip(self.logprob, self.n_tokens)]

    def variant(self, name: str) -> np.ndarray:
        """``"sum"`` or ``"mean"``."""
        if name not in ("sum", "mean"):
            raise ScoringError(f"unknown scoring variant {name!r}; choose sum or mean")
        return self.logprob if name == "sum" else self.mean


def tokenize_candidates(tokenizer, strings: Sequence[str]) -> list[list[int]]:
    """Token ids of each candidate string, without special tokens."""
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]
    empty = [s for s, x in zip(strings, ids) if not x]
    if empty:
        raise ScoringError(f"candidate {empty[0]!r} tokenizes to nothing")
    return ids


def _per_prompt(prompts: Sequence[Ids], candidates) -> list[list[list[int]]]:
    """Candidates per prompt, from one shared list or one list per prompt."""
    if not prompts:
        raise ScoringError("no prompts to score")
    if any(len(p) == 0 for p in prompts):
        raise ScoringError("a prompt has no tokens")
    first = candidates[0] if len(candidates) else ()
    shared = len(first) > 0 and isinstance(first[0], Integral)  # one list for all prompts
    per = [list(map(list, candidates))] * len(prompts) if shared else [
        [list(c) for c in cs] for cs in candidates]
    if len(per) != len(prompts):
        raise ScoringError(f"{len(prompts)} prompts but candidates for {len(per)}")
    if any(not cs or any(not c for c in cs) for cs in per):
        raise ScoringError("every prompt needs at least one candidate, each of >= 1 token")
    return per


def score_candidates(
    lm,
    prompts: Sequence[Ids],
    candidates: Sequence[Ids] | Sequence[Sequence[Ids]],
    *,
    batch_size: int = 16,
    max_rows: int = 256,
    sort_by_length: bool = True,
    share_prefix: bool = True,
    progress: bool = False,
) -> Scores:
    """Log-likelihood of every candidate after every prompt, prompts batched with a shared cache.

    Args:
        lm: A :class:`probe.models.LoadedModel`.
        prompts: Token ids of each prompt, ending where the answer starts.
        candidates: Token ids of the candidates: one list for all prompts, or one per prompt.
        batch_size: Prompts per forward.
        max_rows: Upper bound on prompt x candidate rows of the second forward (the prompt
            batch shrinks to respect it; it bounds the copied cache's memory).
        sort_by_length: Batch prompts of similar length together (longest first), so a batch
            pads little; results come back in the given order either way. ``False`` batches
            them as given (what ``benchmarks/bench_behave.py`` compares against).
        share_prefix: Run the tokens every prompt starts with (the chat template's system
            turn, a template's opening words) once, and start every batch from a copy of their
            KV cache, instead of recomputing them for every prompt.
        progress: Show a progress bar.

    Returns:
        :class:`Scores` with ``[n, C]`` arrays (C: the most candidates of any prompt).
    """
    from tqdm.auto import tqdm

    per = _per_prompt(prompts, candidates)
    width = max(len(cs) for cs in per)
    logprob = np.full((len(prompts), width), np.nan)
    n_tokens = np.zeros((len(prompts), width), dtype=int)
    step = max(1, min(batch_size, max_rows // width))
    bar = tqdm(total=len(prompts), unit="prompt", desc="scoring", disable=not progress,
               dynamic_ncols=True)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) if sort_by_length \
        else list(range(len(prompts)))
    prefix = SharedPrefix.of(lm, prompts) if share_prefix else None
    cut = prefix.length if prefix else 0
    for start in range(0, len(prompts), step):
        idx = order[start:start + step]
        values = _score_batch(lm, [prompts[i][cut:] for i in idx], [per[i] for i in idx], prefix)
        for i, v in zip(idx, values):
            logprob[i, :len(v)] = v
            n_tokens[i, :len(v)] = [len(c) for c in per[i]]
        bar.update(len(idx))
    bar.close()
    return Scores(logprob=logprob, n_tokens=n_tokens)


#: A shared prefix shorter than this is not worth a separate forward and cache copies.
MIN_SHARED = 4


@dataclass(frozen=True)
class SharedPrefix:
    """The tokens all prompts start with, run once: their KV cache (batch of one)."""

    length: int
    cache: object

    @classmethod
    @torch.inference_mode()
    def of(cls, lm, prompts: Sequence[Ids]) -> SharedPrefix | None:
        """The longest common start of ``prompts`` (each keeps >= 1 token of its own), run
        through the model; None when it is short or the model's cache cannot be copied per row."""
        first, n = prompts[0], min(len(p) for p in prompts) - 1
        length = 0
        while length < n and all(p[length] == first[length] for p in prompts):
            length += 1
        if length < MIN_SHARED:
            return None
        ids = torch.tensor([list(first[:length])], device=lm.device)
        out = lm.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = returned_cache(out)
        if not hasattr(cache, "batch_repeat_interleave") or getattr(cache, "is_sliding", None) \
                and any(cache.is_sliding):
            return None  # sliding-window layers keep a window, not the whole prefix
        return cls(length=length, cache=cache)

    def inputs(self, lm, suffixes: list[Ids]) -> dict:
        """Model inputs of a batch of suffixes that continue the prefix: its cache copied per
        row, the suffixes left-padded after it (padding in the middle, masked), positions
        counted over real tokens."""
        batch = pad_batch(suffixes, lm.tokenizer.pad_token_id, "left", lm.device)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(suffixes))
        ones = torch.ones((len(suffixes), self.length), dtype=batch["attention_mask"].dtype,
                          device=lm.device)
        mask = torch.cat([ones, batch["attention_mask"]], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, self.length:]
        return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions,
                cache_keyword(lm.model): cache}


@torch.inference_mode()
def _score_batch(lm, prompts: list[Ids], per: list[list[list[int]]],
                 prefix: SharedPrefix | None = None) -> list[np.ndarray]:
    inputs = prefix.inputs(lm, prompts) if prefix else \
        pad_batch(prompts, lm.tokenizer.pad_token_id, "left", lm.device)
    out = lm.model(**inputs, use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)  # [B, V]
    rows = [(i, c) for i, cs in enumerate(per) for c in cs]
    item = torch.tensor([i for i, _ in rows], device=lm.device)
    heads = torch.tensor([c[0] for _, c in rows], device=lm.device)
    total = first[item, heads]  # [R]
    longest = max(len(c) for _, c in rows)
    if longest > 1:
        total = total + _continuations(lm, cache, inputs["attention_mask"], item,
                                       [c for _, c in rows], longest)
    total = total.cpu().double().numpy()
    bounds = np.cumsum([0] + [len(cs) for cs in per])
    return [total[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _continuations(lm, cache, prompt_mask: Tensor, item: Tensor, cands: list[list[int]],
                   longest: int) -> Float[Tensor, " rows"]:
    """Sum of log p(c[j] | prompt, c[:j]) for j >= 1, all candidate rows in one forward."""
    R, L, dev = len(cands), longest - 1, lm.device
    ids = torch.full((R, L), lm.tokenizer.pad_token_id, dtype=torch.long)
    targets = torch.zeros((R, L), dtype=torch.long)
    mask = torch.zeros((R, L), dtype=torch.long)
    for r, c in enumerate(cands):
        ids[r, :len(c) - 1] = torch.tensor(c[:-1])
        targets[r, :len(c) - 1] = torch.tensor(c[1:])
        mask[r, :len(c) - 1] = 1
    ids, targets, mask = ids.to(dev), targets.to(dev), mask.to(dev)
    cache.batch_select_indices(item)  # each prompt's cache, once per candidate
    lengths = prompt_mask.sum(1)[item]
    attention = torch.cat([prompt_mask[item], mask], 1)
    positions = lengths[:, None] + torch.arange(L, device=dev)[None]
    logits = lm.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                      use_cache=True, **{cache_keyword(lm.model): cache}).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    return (logp * mask).sum(1)


@torch.inference_mode()
def score_candidates_naive(lm, prompts: Sequence[Ids],
                           candidates: Sequence[Ids] | Sequence[Sequence[Ids]]) -> Scores:
    """Reference: one forward per (prompt, candidate) over ``prompt + candidate``, unpadded."""
    per = _per_prompt(prompts, candidates)
    width = max(len(cs) for cs in per)
    logprob = np.full((len(prompts), width), np.nan)
    n_tokens = np.zeros((len(prompts), width), dtype=int)
    for i, (p, cs) in enumerate(zip(prompts, per)):
        for k, c in enumerate(cs):
            ids = torch.tensor([list(p) + c], device=lm.device)
            logits = lm.model(input_ids=ids).logits[0, len(p) - 1:-1].float()
            target = torch.tensor(c, device=lm.device)[:, None]
            lp = torch.log_softmax(logits, -1).gather(-1, target)
            logprob[i, k] = float(lp.sum())
            n_tokens[i, k] = len(c)
    return Scores(logprob=logprob, n_tokens=n_tokens)
