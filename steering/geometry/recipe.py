"""The emotion-vector recipe: per-emotion means, grand-mean subtraction, neutral-PC projection.

Given pooled features of labelled texts (:mod:`steering.geometry.features`):

1. the mean feature of each emotion's texts, at every layer;
2. minus the grand mean over emotions (each emotion weighs the same, however many texts);
3. with the top principal components of neutral text projected out, as many as explain
   ``variance_share`` of the neutral texts' variance (Anthropic 2026: 50%), at each layer.

Every step is an option (:class:`Recipe`) and recorded in ``run.json``. The arithmetic is
batched over layers and over bootstrap resamples (``weights`` instead of index lists).

>>> r = Recipe()
>>> (r.token_offset, r.subtract_grand_mean, r.neutral_share)
(0, True, 0.5)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from steering.geometry import defaults
from steering.geometry.features import GeometryError


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The recipe's options, with the published defaults.

    Attributes:
        token_offset: First pooled token of a corpus text (corpus texts are 10-40 tokens,
            so 0); stories use ``story_offset``.
        story_offset: First pooled token of a model-written story (Anthropic: 50).
        subtract_grand_mean: Subtract the mean over emotions of the emotion means.
        neutral_share: Project out the top neutral-text PCs explaining this share of their
            variance (0: no projection).
        max_neutral_pcs: Upper bound on the number of neutral PCs removed.
    """

    token_offset: int = defaults.TOKEN_OFFSET
    story_offset: int = defaults.STORY_OFFSET
    subtract_grand_mean: bool = True
    neutral_share: float = defaults.NEUTRAL_SHARE
    max_neutral_pcs: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.neutral_share < 1.0:
            raise GeometryError(
                f"neutral variance share must be in [0, 1), got {self.neutral_share}"
            )
        if self.token_offset < 0 or self.story_offset < 0:
            raise GeometryError("token offsets must be >= 0")
        if self.max_neutral_pcs < 1:
            raise GeometryError("max_neutral_pcs must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def label_weights(labels: Tensor, n_classes: int) -> Float[Tensor, "emotion text"]:
    """Row-normalised one-hot weights: ``W @ X`` is each emotion's mean (empty: an error)."""
    w = torch.zeros(n_classes, len(labels))
    w[labels, torch.arange(len(labels))] = 1.0
    counts = w.sum(1, keepdim=True)
    if (counts == 0).any():
        raise GeometryError(f"emotion {int((counts[:, 0] == 0).nonzero()[0])} has no texts")
    return w / counts


def neutral_basis(
    neutral: Float[Tensor, "text layer d"], share: float, max_pcs: int = 64
) -> tuple[list[Tensor], list[int], list[float]]:
    """Per layer, the top PCs of neutral texts that explain ``share`` of their variance.

    Returns ``(bases, k, explained)``: ``bases[l]`` is ``[d, k_l]`` orthonormal columns (empty
    when ``share`` is 0), ``k[l]`` their count and ``explained[l]`` the share they explain.
    """
    bases, ks, shares = [], [], []
    for layer in range(neutral.shape[1]):
        x = neutral[:, layer].double()
        x = x - x.mean(0)
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        var = s**2 / (s**2).sum().clamp_min(1e-300)
        cum = var.cumsum(0)
        k = 0 if share <= 0 else min(int((cum < share).sum()) + 1, max_pcs, len(s))
        bases.append(vh[:k].T.float())
        ks.append(k)
        shares.append(float(cum[k - 1]) if k else 0.0)
    return bases, ks, shares


def emotion_vectors(
    feats: Float[Tensor, "text layer d"],
    weights: Float[Tensor, "... emotion text"],
    bases: list[Tensor] | None = None,
    *,
    subtract_grand_mean: bool = True,
    labels: Tensor | None = None,
) -> Float[Tensor, "... emotion layer d"]:
    """The recipe on features: weighted emotion means, grand mean removed, neutral PCs out.

    ``weights`` may carry leading (bootstrap) dimensions; each row sums to 1 over texts. With
    ``labels`` (each text's emotion; row ``c`` of ``weights`` is zero off emotion ``c``'s texts)
    the means are computed one emotion's block at a time: the same numbers, emotions-fold
    fewer operations.
    """
    flat = feats.reshape(feats.shape[0], -1)
    if labels is None:
        means = weights @ flat
    else:
        means = flat.new_empty(*weights.shape[:-1], flat.shape[1])
        for c in range(weights.shape[-2]):
            idx = torch.nonzero(labels == c).flatten()
            means[..., c, :] = weights[..., c, idx] @ flat[idx]
    means = means.reshape(*weights.shape[:-1], *feats.shape[1:])
    if subtract_grand_mean:
        means = means - means.mean(dim=-3, keepdim=True)
    if bases is not None:
        means = project_out(means, bases)
    return means


def project_out(vectors: Float[Tensor, "... emotion layer d"], bases: list[Tensor]) -> Tensor:
    """``v - U U^T v`` at each layer with that layer's basis ``U`` (``[d, k]``)."""
    out = vectors.clone()
    for layer, u in enumerate(bases):
        if u.numel():
            v = vectors[..., layer, :]
            out[..., layer, :] = v - (v @ u) @ u.T
    return out
