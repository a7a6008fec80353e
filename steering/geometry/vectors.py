"""Emotion vectors of the geometry protocol as :class:`steering.vector.SteeringVector` s.

Each emotion's vector (the recipe's output, every pooled layer) is saved L2-normalised per site
with its raw norms in ``meta["norms"]`` and the typical RMS of the pooled residual stream in
``meta["rms"]`` (the unit of ``probe steer --strength``), so ``probe steer --vector FILE`` and
:func:`steering.monitor.monitor` take it as it is:

>>> vec = SteeringVector.load("runs/geo/vectors/goemotions/joy")  # doctest: +SKIP
>>> with vec.at(range(10, 20)).apply(lm, strength=2.0): ...  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from probe.sites import Site
from steering.vector import SteeringVector, VectorSet

METHOD = "geometry"


def to_vector_set(
    vectors: torch.Tensor, data, lm, *, recipe=None, info: dict | None = None
) -> VectorSet:
    """``{emotion: SteeringVector}`` from recipe vectors ``[emotion, layer, d]`` of ``data``."""
    sites = [Site("hook_resid_post", x) for x in data.layers]
    rms = data.feats.double().pow(2).mean(dim=(0, 2)).sqrt()
    prov = lm.provenance()
    out = VectorSet()
    for ei, emotion in enumerate(data.emotions):
        v = vectors[ei].double()
        norms = v.norm(dim=-1)
        unit = v / norms.clamp_min(1e-30)[:, None]
        meta = {
            **prov,
            "method": METHOD,
            "emotion": emotion,
            "source": data.name,
            "site": "hook_resid_post",
            "layers": list(data.layers),
            "normalized": True,
            "pooling": "mean-from-offset",
            "dataset": (info or {}).get("dataset", data.name),
            "dataset_hash": (info or {}).get("dataset_hash"),
            "recipe": recipe.to_dict() if recipe is not None else None,
            "n_texts": int((data.labels == ei).sum()),
            "rms": {str(s): float(r) for s, r in zip(sites, rms)},
            "norms": {str(s): float(n) for s, n in zip(sites, norms)},
        }
        out[emotion] = SteeringVector({s: unit[i].float() for i, s in enumerate(sites)}, meta)
    return out


def save_vectors(vectors: torch.Tensor, data, lm, folder: Path, **kwargs) -> VectorSet:
    """Save :func:`to_vector_set` into ``folder`` (``<emotion>.safetensors`` + ``.json``)."""
    vs = to_vector_set(vectors, data, lm, **kwargs)
    Path(folder).mkdir(parents=True, exist_ok=True)
    vs.save(folder)
    return vs
