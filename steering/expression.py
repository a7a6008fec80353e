"""Expression directions: emotion read while text *expresses* it, not while the model perceives it.

The residual stream at ``blocks.L.hook_resid_post``, mean-pooled over the **reply tokens** of
emotional replies (given the neutral prompt they answer, with no instruction in view), contrasted
*across emotions*: each emotion's mean minus the mean over the other emotions (not against
neutral, so the shared "emotional vs not" axis cancels). With ``groups`` (the prompt each reply
answers, when every prompt has a reply in several emotions), each group's mean over emotions is
removed first (Wang et al.'s context-agnostic recipe), so what a prompt's replies share cancels.

Sources: the model's own replies under each emotion's designed prompt
(:func:`steering.train.data.teacher_replies`), or any corpus of emotional replies (SEV).

:func:`transfer_auroc` scores a direction set on rows it was not computed from (e.g. expression
directions on perception rows, and the reverse): AUROC of emotion vs the rest of the projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import os
from pathlib import Path

from probe.hooks import StopForward
from probe.paths import cache_root
from probe.sites import Site
from steering.prompted import default_prompts
from steering.train.batching import pair_batch
from steering.train.data import teacher_replies
from steering.train.objectives import PairData
from steering.train.trainer import site_rms
from steering.vector import SteeringError, SteeringVector, VectorSet


def reply_activations(lm, prompts: Sequence[str], replies: Sequence[str], layers: Sequence[int], *,
                      batch_size: int = 16, max_reply_tokens: int = 60) -> np.ndarray:
    """``[n, layers, d_model]``: residual after each layer, mean over each reply's tokens."""
    layers = list(layers)
    out = []
    for b0 in range(0, len(prompts), batch_size):
        b = pair_batch(lm, prompts[b0:b0 + batch_size], replies[b0:b0 + batch_size],
                       max_reply_tokens=max_reply_tokens)
        m = b.reply_mask.float()
        got: dict[int, torch.Tensor] = {}

        def reader(layer):
            def fn(value, ctx):
                h = value[:, b.width:].float()
                got[layer] = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)
            return fn

        with torch.no_grad(), lm.hooks({Site("hook_resid_post", L): reader(L) for L in layers},
                                       stop_after=max(layers)):
            try:
                lm.model(**b.inputs)
            except StopForward:  # the hook layer stops after the deepest layer read
                pass
        out.append(torch.stack([got[L] for L in layers], 1).cpu().numpy())
    return np.concatenate(out)


def contrast(X: np.ndarray, labels: Sequence[str], emotions: Sequence[str],
             groups: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{emotion: [layers, d]}``: emotion mean minus the mean of the other emotions' means.

    With ``groups``, each group's rows are first centred on the group's mean over emotions
    (groups holding fewer than two of ``emotions`` are dropped).
    """
    labels = np.asarray(labels, dtype=object)
    X = np.asarray(X, dtype=np.float64)
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        X = X.copy()
        keep = np.zeros(len(X), bool)
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            present = [e for e in emotions if (labels[idx] == e).any()]
            if len(present) < 2:
                continue
            centre = np.mean([X[idx][labels[idx] == e].mean(0) for e in present], 0)
            X[idx] -= centre
            keep[idx] = True
        X, labels = X[keep], labels[keep]
    means = {}
    for e in emotions:
        if not (labels == e).any():
            raise SteeringError(f"no rows of {e!r} to compute its expression direction from")
        means[e] = X[labels == e].mean(0)
    return {e: means[e] - np.mean([means[o] for o in emotions if o != e], 0) for e in emotions}


def expression_vectors(lm, prompts: Sequence[str], replies: Sequence[str], labels: Sequence[str], *,
                       layers: Sequence[int], emotions: Sequence[str],
                       groups: Sequence[str] | None = None, source: str = "",
                       X: np.ndarray | None = None) -> VectorSet:
    """Unit expression directions per emotion as :class:`SteeringVector` s (``rms`` recorded)."""
    layers = list(layers)
    if X is None:
        X = reply_activations(lm, prompts, replies, layers)
    raw = contrast(X, labels, emotions, groups)
    rms = np.sqrt((X.astype(np.float64) ** 2).mean(-1)).mean(0)  # [layers]: per-reply mean pooled
    # typical RMS of single positions, as the other methods record it
    rms_tok = _token_rms(lm, prompts[:16], replies[:16], layers)
    sites = [Site("hook_resid_post", L) for L in layers]
    out = VectorSet()
    for e in emotions:
        for k, L in enumerate(layers):
            if not np.linalg.norm(raw[e][k]) > 0 or not np.isfinite(raw[e][k]).all():
                raise SteeringError(f"the replies in {e} do not differ from the other emotions' at "
                                    f"layer {L} (identical replies?); no direction to take")
        dirs = {s: torch.as_tensor(raw[e][k] / np.linalg.norm(raw[e][k]), dtype=torch.float32)
                for k, s in enumerate(sites)}
        out[e] = SteeringVector(dirs, {**lm.provenance(), "method": "expression", "emotion": e,
                                       "layers": layers, "pooling": "reply-mean",
                                       "source": source, "rows": int(len(X)),
                                       "raw_norm": {str(s): float(np.linalg.norm(raw[e][k]))
                                                    for k, s in enumerate(sites)},
                                       "pooled_rms": {str(s): float(rms[k]) for k, s in enumerate(sites)},
                                       "rms": {str(s): rms_tok[L] for s, L in zip(sites, layers)}})
    return out


def model_expression_directions(lm, *, layers: Sequence[int], emotions: Sequence[str],
                                prompts: Sequence[str] | None = None, max_new_tokens: int = 40,
                                cache_dir: str | os.PathLike | None = None, log=None) -> VectorSet:
    """Expression directions from the model's own replies (what ``probe directions --method
    expression`` computes).

    The model answers ``prompts`` (default: the 64 neutral items of emotion-scenarios) under each
    emotion's designed prompt (greedy, cached as JSON under ``cache/<model>/``); each reply is
    then read *given the plain prompt* (the instruction out of view), pooled over its tokens,
    and contrasted across emotions within each prompt.
    """
    prompts = list(prompts) if prompts is not None else default_prompts()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    teach = teacher_replies(lm, prompts, emotions, max_new_tokens=max_new_tokens,
                            cache=root / lm.spec.alias, log=log)
    rows = [(p, teach.replies[e][i], e, str(i)) for e in emotions
            for i, p in enumerate(teach.prompts) if teach.replies[e][i].strip()]
    p, r, y, g = (list(x) for x in zip(*rows))
    return expression_vectors(lm, p, r, y, layers=layers, emotions=emotions, groups=g,
                              source=f"{lm.spec.alias} designed-prompt replies to {len(prompts)} prompts")


def _token_rms(lm, prompts, replies, layers) -> dict[int, float]:
    return site_rms(lm, PairData(list(prompts), list(replies)), layers)


def transfer_auroc(vectors: dict[str, SteeringVector], X: np.ndarray, labels: Sequence[str],
                   layers: Sequence[int]) -> dict[str, list[float]]:
    """Per emotion, per layer: AUROC (emotion vs rest) of the rows' projection on the direction."""
    labels = np.asarray(labels, dtype=object)
    out = {}
    for e, v in vectors.items():
        if not (labels == e).any() or (labels == e).all():
            continue
        scores = []
        for k, L in enumerate(layers):
            u = v.directions[Site("hook_resid_post", L)].numpy()
            scores.append(float(roc_auc_score(labels == e, X[:, k] @ u)))
        out[e] = scores
    return out
