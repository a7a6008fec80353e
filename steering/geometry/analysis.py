"""The geometry analyses on pooled features: PCs vs ratings, and agreement between sources.

``best_layer`` rows give, per PC and scale, the layer where ``|r|`` peaks and a p-value that
accounts for picking it (the permutation null of the maximum over layers); the CI is that
layer's, so it does not include the selection.

:func:`analyze` gives, per layer, PC and rating scale, ``|r|`` (Pearson and Spearman) with a
bias-corrected bootstrap CI over texts (texts resampled within each emotion; vectors, PCA
and r recomputed;
the neutral basis stays fixed), a permutation p-value and the null's 95th percentile (the
ratings' emotion labels shuffled). :func:`agreement` compares two sets of vectors over their
shared emotions: RDM Spearman agreement per layer with a bootstrap CI, and per-emotion cosines.
Rows are tidy dicts (one measurement each) for ``results.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from steering.geometry import stats
from steering.geometry.features import GeometryError
from steering.geometry.ratings import Ratings
from steering.geometry.recipe import emotion_vectors, label_weights

CHUNK = 25  # bootstrap resamples per batched step (memory: CHUNK x emotions x layers x d floats)


@dataclass(frozen=True)
class Labelled:
    """Pooled features of one source with integer labels into ``emotions``."""

    name: str
    emotions: list[str]
    labels: Tensor
    feats: Tensor  # [text, layer, d]
    layers: list[int]

    def subset(self, emotions: Sequence[str]) -> Labelled:
        """Only the texts of ``emotions`` (relabelled in that order)."""
        idx = [self.emotions.index(e) for e in emotions]
        keep = torch.isin(self.labels, torch.tensor(idx))
        remap = {old: new for new, old in enumerate(idx)}
        labels = torch.tensor([remap[int(x)] for x in self.labels[keep]])
        return Labelled(self.name, list(emotions), labels, self.feats[keep], self.layers)

    def vectors(self, bases, *, grand_mean: bool = True, weights: Tensor | None = None) -> Tensor:
        w = label_weights(self.labels, len(self.emotions)) if weights is None else weights
        return emotion_vectors(
            self.feats, w, bases, subtract_grand_mean=grand_mean, labels=self.labels
        )

    def boot_weights(self, n: int, seed: int) -> Tensor:
        return stats.bootstrap_weights(self.labels, len(self.emotions), n, seed=seed)


def analyze(
    data: Labelled,
    ratings: Ratings,
    bases,
    *,
    grand_mean: bool = True,
    k: int = 3,
    n_boot: int = 1000,
    n_perm: int = 2000,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Rows of ``|r(PC, scale)|`` per layer with CIs, p-values and null bands; plus the
    full-sample ``{"scores": [layer, emotion, pc], "r": [layer, pc, scale], "vectors": ...}``."""
    ratings = ratings.subset(data.emotions)
    vectors = data.vectors(bases, grand_mean=grand_mean)
    scores, share, comps = stats.pca(vectors, k)
    out = {"scores": scores, "share": share, "vectors": vectors, "r": {}}
    boot_scores = _boot(
        data, bases, grand_mean, n_boot, seed, lambda v: stats.aligned_scores(v, comps)
    )
    rows = []
    for method, metric in (("pearson", "abs_r"), ("spearman", "abs_spearman")):
        r = stats.correlate(scores, ratings.values, method=method)
        out["r"][method] = r
        null = stats.permutation_null(
            scores, ratings.values, n_perm=n_perm, seed=seed, method=method
        )
        p = stats.permutation_p(r, null)
        null95 = torch.quantile(null.double(), 0.95, dim=0)
        lo = hi = None
        if boot_scores is not None:
            rb = stats.correlate(boot_scores, ratings.values, method=method).abs()
            lo, hi = stats.bc_interval(rb, r.abs())
        rows += _best_layer(data, ratings, metric, r.abs(), null, lo, hi)
        for li, layer in enumerate(data.layers):
            for pc in range(scores.shape[-1]):
                for si, scale in enumerate(ratings.scales):
                    rows.append(
                        _row(
                            "pc_vs_rating",
                            data.name,
                            metric,
                            layer,
                            abs(float(r[li, pc, si])),
                            None if lo is None else float(lo[li, pc, si]),
                            None if hi is None else float(hi[li, pc, si]),
                            pc=pc + 1,
                            scale=scale,
                            p_value=float(p[li, pc, si]),
                            null_95=float(null95[li, pc, si]),
                            signed_r=float(r[li, pc, si]),
                            n=len(data.emotions),
                        )
                    )
    for li, layer in enumerate(data.layers):
        for pc in range(share.shape[-1]):
            rows.append(
                _row(
                    "pc_variance",
                    data.name,
                    "variance_share",
                    layer,
                    float(share[li, pc]),
                    pc=pc + 1,
                    n=len(data.emotions),
                )
            )
    return rows, out


def agreement(
    a: Labelled,
    b: Labelled | Tensor,
    bases_a,
    bases_b=None,
    *,
    grand_mean: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    name_b: str | None = None,
    layer_map: Sequence[int] | None = None,
) -> list[dict]:
    """RDM agreement (Spearman, bootstrap CI) and per-emotion cosines between two sources.

    ``b`` is another :class:`Labelled` (resampled too) or fixed vectors ``[emotion, layer, d]``
    in ``a``'s emotion order (e.g. saved expression directions). ``layer_map[i]`` is the index
    into ``b``'s layers compared with ``a``'s ``i``-th layer (another model: same relative
    depth); default: the same index. Cosines need a shared basis, so they are only given when
    ``layer_map`` is None (same model).
    """
    if len(a.emotions) < 3:
        raise GeometryError(f"agreement needs >= 3 shared emotions, got {a.emotions}")
    name_b = name_b or (b.name if isinstance(b, Labelled) else "vectors")
    va = a.vectors(bases_a, grand_mean=grand_mean)
    vb = b.vectors(bases_b, grand_mean=grand_mean) if isinstance(b, Labelled) else b
    idx = list(range(va.shape[1])) if layer_map is None else list(layer_map)
    full = stats.rdm_agreement(stats.rdm(va), stats.rdm(vb)[idx])
    boots = []
    if n_boot:
        wa = a.boot_weights(n_boot, seed)
        wb = b.boot_weights(n_boot, seed + 1) if isinstance(b, Labelled) else None
        for c in range(0, n_boot, CHUNK):
            ra = stats.rdm(a.vectors(bases_a, grand_mean=grand_mean, weights=wa[c : c + CHUNK]))
            rb = (
                stats.rdm(b.vectors(bases_b, grand_mean=grand_mean, weights=wb[c : c + CHUNK]))
                if wb is not None
                else stats.rdm(vb)[None]
            )
            boots.append(stats.rdm_agreement(ra, rb[:, idx]))
    lo, hi = stats.bc_interval(torch.cat(boots), full) if boots else (None, None)
    rows = []
    for li, layer in enumerate(a.layers):
        rows.append(
            _row(
                "rdm_agreement",
                a.name,
                "rdm_spearman",
                layer,
                float(full[li]),
                None if lo is None else float(lo[li]),
                None if hi is None else float(hi[li]),
                other=name_b,
                other_layer=(b.layers[idx[li]] if isinstance(b, Labelled) else layer),
                n=len(a.emotions),
            )
        )
    if layer_map is None:
        cos = torch.nn.functional.cosine_similarity(
            va.double(), vb.double(), dim=-1
        )  # emotion layer
        for ei, e in enumerate(a.emotions):
            for li, layer in enumerate(a.layers):
                rows.append(
                    _row(
                        "cosine",
                        a.name,
                        "cosine",
                        layer,
                        float(cos[ei, li]),
                        other=name_b,
                        emotion=e,
                    )
                )
    return rows


def _best_layer(data, ratings, metric, observed, null, lo, hi) -> list[dict]:
    """Per PC and scale, the layer where ``|r|`` peaks, with a family-wise p over layers: the
    share of permutations whose best layer reaches the observed best (max-statistic null)."""
    rows = []
    best, where = observed.max(dim=0)  # pc scale
    null_best = null.max(dim=1).values  # perm pc scale
    p = (1 + (null_best >= best[None] - 1e-12).sum(0)).double() / (null.shape[0] + 1)
    for pc in range(best.shape[0]):
        for si, scale in enumerate(ratings.scales):
            li = int(where[pc, si])
            rows.append(
                _row(
                    "best_layer",
                    data.name,
                    metric,
                    data.layers[li],
                    float(best[pc, si]),
                    None if lo is None else float(lo[li, pc, si]),
                    None if hi is None else float(hi[li, pc, si]),
                    pc=pc + 1,
                    scale=scale,
                    p_value=float(p[pc, si]),
                    n=len(data.emotions),
                    null_95=float(torch.quantile(null_best[:, pc, si].double(), 0.95)),
                )
            )
    return rows


def _boot(data: Labelled, bases, grand_mean: bool, n_boot: int, seed: int, fn) -> Tensor | None:
    if not n_boot:
        return None
    w = data.boot_weights(n_boot, seed)
    return torch.cat(
        [
            fn(data.vectors(bases, grand_mean=grand_mean, weights=w[c : c + CHUNK]))
            for c in range(0, n_boot, CHUNK)
        ]
    )


def _row(
    analysis: str,
    source: str,
    metric: str,
    layer: int,
    value: float,
    ci_low=None,
    ci_high=None,
    **extra,
) -> dict:
    return {
        "experiment": analysis,
        "source": source,
        "metric": metric,
        "layer": layer,
        "value": value,
        "ci_low": ci_low,
        "ci_high": ci_high,
        **extra,
    }
