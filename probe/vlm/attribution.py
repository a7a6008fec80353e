"""Modality attribution: how much of a read-out at the answer comes from image vs text tokens.

For each input, the read-out ``M`` is a scalar at the answer position (by default the model's
valence logit difference, :func:`valence_readout`). Positions are grouped by modality:

``media``     the image (or audio) tokens the processor filled with features
``text``      the row's own text (its ``content`` span)
``template``  every other real token (chat template, system prompt)

At each residual-stream site ``a`` (``blocks.L.hook_resid_pre``; layer 0 = the merged
embeddings), attribution patching estimates what replacing a group's values by a baseline
``a'`` (the group's mean over the whole set: mean ablation) would do to ``M``:

    AtP(G) = sum_{p in G} (a_p - a'_p) . dM/da_p          ~  M(clean) - M(G ablated)

from one forward and one backward for all sites at once. The estimate is checked by actually
mean-ablating each group (write hooks on :mod:`probe.hooks`) at the check site and comparing.

>>> res = modality_attribution(lm, enc, readout=valence_readout(lm.tokenizer))  # doctest: +SKIP
>>> res.atp.sel(layer=0).mean("item")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from probe.errors import AttributionError
from probe.forward import Batch, make_batch
from probe.interventions import replace
from probe.sites import Site
from probe.tokens import Encoded

GROUPS = ("media", "text", "template")
Readout = Callable[[Tensor, Batch], Tensor]  # (logits, batch) -> [batch]

POSITIVE_WORDS = ("happy", "joy", "joyful", "glad", "excited", "delighted", "pleased", "content")
NEGATIVE_WORDS = ("sad", "angry", "afraid", "scared", "upset", "disgusted", "fear", "anxious")


def answer_tokens(tokenizer, words: Sequence[str]) -> list[int]:
    """First tokens of ``words`` as an answer would start (bare, capitalised, after a space)."""
    out: list[int] = []
    for w in words:
        for form in (w, w.capitalize(), " " + w, " " + w.capitalize()):
            ids = tokenizer(form, add_special_tokens=False)["input_ids"]
            if ids and ids[0] not in out:
                out.append(ids[0])
    return out


def valence_readout(tokenizer, positive: Sequence[str] = POSITIVE_WORDS,
                    negative: Sequence[str] = NEGATIVE_WORDS) -> Readout:
    """``M = logsumexp(logits[positive answers]) - logsumexp(logits[negative answers])``.

    Read at each row's last token (where the model answers). Tokens that start a positive and
    a negative word alike are dropped from both sets.
    """
    pos, neg = answer_tokens(tokenizer, positive), answer_tokens(tokenizer, negative)
    shared = set(pos) & set(neg)
    pos, neg = [t for t in pos if t not in shared], [t for t in neg if t not in shared]
    if not pos or not neg:
        raise AttributionError("the positive and negative answer words share all their first "
                               "tokens in this tokenizer; pass other words")
    pos_t, neg_t = torch.as_tensor(pos), torch.as_tensor(neg)

    def readout(logits: Tensor, batch: Batch) -> Tensor:
        last = _wide(logits[torch.arange(len(batch), device=logits.device), batch.last])
        pos_l, neg_l = last[:, pos_t.to(last.device)], last[:, neg_t.to(last.device)]
        return pos_l.logsumexp(-1) - neg_l.logsumexp(-1)
    readout.tokens = {"positive": pos, "negative": neg}
    return readout


@dataclass(frozen=True)
class Attribution:
    """Per-item results.

    Attributes:
        readout: ``[item]`` M on the clean inputs.
        atp: ``[item, layer, group]`` attribution-patching estimates (groups: :data:`GROUPS`).
        ablated: ``[item, group]`` ``M(clean) - M(group mean-ablated)`` at ``check_layer`` for the
            media and text groups (template: NaN, not ablated).
        layers: The layers of ``atp`` (resid_pre of each; 0 = the embeddings).
        check_layer: Where the ablation check ran.
        n_tokens: ``[item, group]`` positions per group.
    """

    readout: np.ndarray
    atp: np.ndarray
    ablated: np.ndarray
    layers: tuple[int, ...]
    check_layer: int
    n_tokens: np.ndarray


def group_masks(batch: Batch) -> dict[str, Tensor]:
    """``[batch, pos]`` bool masks of the three position groups of a multimodal batch."""
    if batch.modality is None:
        raise AttributionError("modality attribution needs a multimodal batch (rows encoded with "
                               "probe.multimodal.encode.encode_multimodal, with images or audio)")
    real = batch.attention_mask.bool()
    media = (batch.modality != 0) & real
    text = batch.content & real & ~media
    return {"media": media, "text": text, "template": real & ~media & ~text}


def _batches(encoded: Encoded, batch_size: int):
    for start in range(0, len(encoded), batch_size):
        rows = range(start, min(start + batch_size, len(encoded)))
        yield rows, _subset(encoded, rows)


def _subset(encoded, rows):
    fields = {k: v for k, v in encoded.__dict__.items()}
    for k, v in fields.items():
        if isinstance(v, list) and len(v) == len(encoded):
            fields[k] = [v[r] for r in rows]
    return type(encoded)(**fields)


@torch.no_grad()
def group_means(lm, encoded: Encoded, sites: Sequence[Site], *, batch_size: int = 8) -> dict:
    """``{(site, group): mean vector}`` over every position of that group in the set."""
    sums: dict = {}
    counts: dict = {}
    for _, enc in _batches(encoded, batch_size):
        batch = make_batch(lm, enc)
        _, cache = lm.run_with_cache(batch, list(sites), stop=True)
        masks = group_masks(batch)
        for s in sites:
            for g, m in masks.items():
                v = _wide(cache[s][m])
                sums[s, g] = sums.get((s, g), 0) + v.sum(0)
                counts[s, g] = counts.get((s, g), 0) + len(v)
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def modality_attribution(lm, encoded: Encoded, *, readout: Readout,
                         layers: Sequence[int] | None = None, check_layer: int = 0,
                         batch_size: int = 8) -> Attribution:
    """Attribution of ``readout`` to media / text / template positions, checked by ablation.

    Args:
        lm: a loaded multimodal model.
        encoded: rows from :func:`probe.multimodal.encode.encode_multimodal`.
        readout: ``(logits, batch) -> [batch]`` scalar per row (e.g. :func:`valence_readout`).
        layers: layers whose ``hook_resid_pre`` is attributed (default: every layer).
        check_layer: the layer at which each group is really mean-ablated.
        batch_size: rows per forward.
    """
    layers = tuple(range(lm.n_layers)) if layers is None else tuple(sorted(set(layers)))
    if check_layer not in layers:
        raise AttributionError(f"check layer {check_layer} is not among the attributed layers "
                               f"{layers}")
    sites = [Site("hook_resid_pre", L) for L in layers]
    means = group_means(lm, encoded, sites, batch_size=batch_size)
    n, out_m = len(encoded), np.zeros(len(encoded))
    atp = np.zeros((n, len(layers), len(GROUPS)))
    ablated = np.full((n, len(GROUPS)), np.nan)
    n_tok = np.zeros((n, len(GROUPS)), dtype=np.int64)
    for rows, enc in _batches(encoded, batch_size):
        batch = make_batch(lm, enc)
        masks = group_masks(batch)
        per_row: list[Tensor] = []

        def metric(logits, b, per_row=per_row):
            m = readout(logits, b)
            per_row.append(m.detach())
            return m.sum()

        values, grads, _ = lm.run_with_grads(batch, metric, sites)
        r = list(rows)
        out_m[r] = per_row[0].cpu().double().numpy()
        for j, s in enumerate(sites):
            for k, g in enumerate(GROUPS):
                diff = (_wide(values[s]) - means[s, g]) * _wide(grads[s])
                atp[r, j, k] = (diff.sum(-1) * masks[g]).sum(-1).cpu().double().numpy()
        for k, g in enumerate(GROUPS):
            n_tok[r, k] = masks[g].sum(-1).cpu().numpy()
        ablated[r] = _ablate(lm, batch, readout, Site("hook_resid_pre", check_layer), means,
                             out_m[r])
    return Attribution(out_m, atp, ablated, layers, check_layer, n_tok)


@torch.no_grad()
def _ablate(lm, batch: Batch, readout: Readout, site: Site, means: dict,
            clean: np.ndarray) -> np.ndarray:
    out = np.full((len(batch), len(GROUPS)), np.nan)
    modes = {"media": _media_mode(batch), "text": "content"}
    for k, g in enumerate(GROUPS):
        if g not in modes:
            continue
        with lm.hooks({site: replace(means[site, g], positions=modes[g])}):
            m = readout(lm.logits(batch), batch).cpu().double().numpy()
        out[:, k] = clean - m
    return out


def _wide(x: Tensor) -> Tensor:
    """float32, or float64 when the model runs in it (sums of many small terms)."""
    return x if x.dtype == torch.float64 else x.float()


def _media_mode(batch: Batch) -> str:
    return "audio" if bool((batch.modality == 3).any()) else "image"
