"""Statistics of emotion geometry: PCA, correlations with ratings, permutation nulls, RDMs.

Everything is batched over layers (and over bootstrap resamples where that applies):

* :func:`pca_scores` -- principal-component scores of the emotion vectors, per layer;
* :func:`correlate` -- Pearson or Spearman r of each PC's scores with each rating scale;
* :func:`permutation_null` -- r with the ratings' emotion labels shuffled (p-values, null band);
* :func:`rdm` / :func:`rdm_agreement` -- representational dissimilarity matrices (1 - cosine)
  and the Spearman correlation of their upper triangles (agreement; needs no shared basis).

PC signs are arbitrary, so geometry is judged by ``|r|`` (sign-free), and the null is built
the same way (``|r|`` of shuffled ratings).

>>> import torch
>>> v = torch.randn(8, 2, 16)            # 8 emotions, 2 layers, d=16
>>> pca_scores(v, k=3)[0].shape          # (layer, emotion, pc)
torch.Size([2, 8, 3])
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import rankdata
from torch import Tensor


def pca(
    vectors: Float[Tensor, "... emotion layer d"], k: int = 3
) -> tuple[
    Float[Tensor, "... layer emotion pc"],
    Float[Tensor, "... layer pc"],
    Float[Tensor, "... layer pc d"],
]:
    """Scores of the emotions on the top ``k`` PCs per layer, each PC's variance share, and
    the PCs themselves (unit rows in activation space)."""
    v = vectors.movedim(-3, -2).double()  # ... layer emotion d
    v = v - v.mean(-2, keepdim=True)
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    k = min(k, s.shape[-1])
    share = (s**2 / (s**2).sum(-1, keepdim=True).clamp_min(1e-300))[..., :k]
    return (u[..., :k] * s[..., None, :k]).float(), share.float(), vh[..., :k, :].float()


def pca_scores(
    vectors: Float[Tensor, "... emotion layer d"], k: int = 3
) -> tuple[Float[Tensor, "... layer emotion pc"], Float[Tensor, "... layer pc"]]:
    """Scores of the emotions on the top ``k`` PCs at each layer, and each PC's variance share."""
    scores, share, _ = pca(vectors, k)
    return scores, share


def aligned_scores(
    vectors: Float[Tensor, "boot emotion layer d"],
    reference: Float[Tensor, "layer pc d"],
    extra: int = 2,
) -> Float[Tensor, "boot layer emotion pc"]:
    """Bootstrap PCA scores matched to the full-sample PCs.

    A resample's PCs may come in another order (PC2 and PC3 swap when their variances are
    close), so each reference PC takes the resample's PC (among the top ``k + extra``) whose
    direction is closest to it (largest ``|cosine|``); without this the bootstrap mixes PCs.
    """
    k = reference.shape[-2]
    scores, _, comps = pca(vectors, k + extra)
    cos = (comps.double() @ reference.double().transpose(-1, -2)).abs()  # boot layer k+e k
    pick = cos.argmax(-2)  # boot layer k
    idx = pick[..., None, :].expand(*scores.shape[:-1], k)
    return torch.gather(scores, -1, idx)


def _standardize(x: Tensor, dim: int) -> Tensor:
    x = x.double()
    x = x - x.mean(dim, keepdim=True)
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-300)


def ranks(x: Tensor, dim: int) -> Tensor:
    """Ranks along ``dim`` (ties get their average rank, as Spearman's r needs)."""
    arr = rankdata(x.detach().cpu().double().numpy(), axis=dim)
    return torch.from_numpy(np.ascontiguousarray(arr))


def correlate(
    scores: Float[Tensor, "... layer emotion pc"],
    ratings: Float[Tensor, "emotion scale"],
    *,
    method: str = "pearson",
) -> Float[Tensor, "... layer pc scale"]:
    """r of each PC's scores with each rating scale, over emotions."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', not {method!r}")
    if method == "spearman":
        scores, ratings = ranks(scores, -2), ranks(ratings, 0)
    zs = _standardize(scores, -2)
    zr = _standardize(ratings, 0)
    return torch.einsum("...ek,em->...km", zs, zr).float()


def permutation_null(
    scores: Float[Tensor, "layer emotion pc"],
    ratings: Float[Tensor, "emotion scale"],
    *,
    n_perm: int = 2000,
    seed: int = 0,
    method: str = "pearson",
) -> Float[Tensor, "perm layer pc scale"]:
    """``|r|`` with the ratings' rows (emotion labels) shuffled, ``n_perm`` times."""
    gen = torch.Generator().manual_seed(seed)
    n = ratings.shape[0]
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_perm)])
    if method == "spearman":
        scores, ratings = ranks(scores, -2), ranks(ratings, 0)
    zs = _standardize(scores, -2)
    zr = _standardize(ratings, 0)[perms]  # perm emotion scale
    return torch.einsum("lek,pem->plkm", zs, zr).abs().float()


def permutation_p(observed: Tensor, null: Tensor) -> Tensor:
    """One-sided p of ``|observed|`` against a null of ``|r|`` (first dim): (1 + #>=) / (1 + n)."""
    hits = (null >= observed.abs()[None] - 1e-12).sum(0)
    return (hits + 1).double() / (null.shape[0] + 1)


def rdm(
    vectors: Float[Tensor, "... emotion layer d"],
) -> Float[Tensor, "... layer emotion emotion"]:
    """1 - cosine between emotion vectors at each layer."""
    v = vectors.movedim(-3, -2).double()
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return (1.0 - v @ v.transpose(-1, -2)).float()


def rdm_agreement(
    a: Float[Tensor, "... layer emotion emotion"], b: Float[Tensor, "... layer emotion emotion"]
) -> Float[Tensor, "... layer"]:
    """Spearman r between the upper triangles of two RDMs (same emotions, same order)."""
    n = a.shape[-1]
    if n < 3:
        raise ValueError(f"RDM agreement needs >= 3 emotions, got {n}")
    i, j = torch.triu_indices(n, n, 1)
    ra, rb = ranks(a[..., i, j], -1), ranks(b[..., i, j], -1)
    return (_standardize(ra, -1) * _standardize(rb, -1)).sum(-1).float()


def percentile_ci(samples: Tensor, ci: float = 0.95, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Percentile interval along ``dim`` (NaNs ignored)."""
    lo = torch.nanquantile(samples.double(), (1 - ci) / 2, dim=dim)
    hi = torch.nanquantile(samples.double(), 1 - (1 - ci) / 2, dim=dim)
    return lo.float(), hi.float()


def bootstrap_weights(
    labels: Tensor, n_classes: int, n_boot: int, *, seed: int = 0
) -> Float[Tensor, "boot emotion text"]:
    """Resample texts within each emotion: per resample, mean weights (counts / size)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(n_boot, n_classes, len(labels))
    for c in range(n_classes):
        idx = torch.nonzero(labels == c).flatten()
        draws = idx[torch.randint(len(idx), (n_boot, len(idx)), generator=gen)]
        w[:, c].scatter_add_(1, draws, torch.full(draws.shape, 1.0 / len(idx)))
    return w


def bc_interval(samples: Tensor, estimate: Tensor, ci: float = 0.95) -> tuple[Tensor, Tensor]:
    """Bias-corrected percentile interval (Efron 1981) along the first dim of ``samples``.

    ``|r|`` of re-estimated PCs is biased (resampling adds noise, which lowers ``|r|``), so the
    plain percentile interval sits below the estimate; the correction shifts the quantiles by
    ``z0 = Phi^-1(share of resamples below the estimate)``.
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    b = samples.shape[0]
    s = samples.double().sort(0).values
    est = estimate.double()[None]
    below = (s < est).double().mean(0) + 0.5 * (s == est).double().mean(0)
    z0 = normal.icdf(below.clamp(1.0 / (b + 1), b / (b + 1.0)).float()).double()
    za = float(normal.icdf(torch.tensor((1 + ci) / 2)))
    out = []
    for z in (-za, za):
        q = normal.cdf((2 * z0 + z).float()).double() * (b - 1)
        lo_i = q.floor().long().clamp(0, b - 1)
        hi_i = (lo_i + 1).clamp(max=b - 1)
        frac = q - lo_i
        out.append(
            (s.gather(0, lo_i[None])[0] * (1 - frac) + s.gather(0, hi_i[None])[0] * frac).float()
        )
    return out[0], out[1]
