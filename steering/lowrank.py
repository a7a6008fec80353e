"""Low-rank steering interventions (LoReFT): a subspace per site whose coordinates are rewritten.

A :class:`LowRankIntervention` holds, per site, LoReFT's ``R`` (``[r, d]``, orthonormal rows),
``W`` (``[r, d]``) and ``b`` (``[r]``) and edits the residual stream as
``h' = h + s R^T(W h + b - R h)`` (Wu et al. 2024, "ReFT"; :func:`probe.interventions.loreft`):
an input-dependent edit inside an ``r``-dimensional subspace, where a steering vector adds the
same vector to every token. ``s`` is the setting's ``strength``: 1 applies the edit as trained,
0.5 half of it. With ``W = R`` it is an additive vector ``R^T b``, which is how
:func:`steering.train.trainer.train_vector` starts one (``TrainConfig(rank=r)``).

It steers wherever a :class:`~steering.vector.SteeringVector` does: ``Setting(vector=lr,
strength=s)`` in :mod:`steering.inject`'s grids (mode ``add``, any positions),
:meth:`apply` as a context manager, ``probe steer --vector FILE``. Files: :meth:`save` writes
``NAME.safetensors`` (tensors ``<site>.R``, ``<site>.W``, ``<site>.b``; the metadata in its
header, format ``emoprobe-lowrank-1``) and ``NAME.json``, with a SHA-256 of the tensors;
:func:`load_steering` reads either kind of file.

>>> lr = load_steering("runs/anger-loreft", lm)  # doctest: +SKIP
>>> with lr.apply(lm, strength=1.0):  # doctest: +SKIP
...     lm.generate(["How do bees make honey?"])
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from probe.artifacts import save_safetensors
from probe.directions import checksum, file_base
from probe.interventions import InterventionError, LowRankEdit, loreft
from probe.io import atomic_write
from probe.sites import Site
from steering.errors import SteeringError
from steering.inject import Setting, steering_hooks
from steering.vector import Match, SteeringVector, read_file

FORMAT = "emoprobe-lowrank-1"
PARTS = ("R", "W", "b")


@dataclass(frozen=True, eq=False)
class LowRankIntervention:
    """LoReFT parameters per site, plus provenance (``meta``, as a steering vector's).

    Attributes:
        params: ``{Site: {"R": [r, d], "W": [r, d], "b": [r]}}`` float32 CPU tensors.
        meta: Provenance (model, weights, method, emotion, layers, ``rank``, ``train``).
    """

    params: dict[Site, dict[str, Tensor]]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.params:
            raise SteeringError("a low-rank intervention needs at least one site")
        clean = {}
        for site, p in self.params.items():
            site = Site.parse(site) if isinstance(site, str) else site
            missing = [k for k in PARTS if k not in p]
            if missing:
                raise SteeringError(f"the intervention at {site} lacks {missing}; give R, W and b")
            R, W, b = (torch.as_tensor(p[k]).detach().to("cpu", torch.float32).contiguous() for k in PARTS)
            if not all(bool(torch.isfinite(x).all()) for x in (R, W, b)):
                raise SteeringError(f"the intervention at {site} has NaN or inf entries")
            try:
                loreft(R, W, b)   # shapes and orthonormal rows
            except InterventionError as exc:
                raise SteeringError(f"{site}: {exc}") from None
            clean[site] = {"R": R, "W": W, "b": b}
        object.__setattr__(self, "params", dict(sorted(clean.items())))
        object.__setattr__(self, "meta", dict(self.meta))

    # ------------------------------------------------------------------ views
    @property
    def sites(self) -> list[Site]:
        return list(self.params)

    @property
    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.params if s.layer is not None})

    @property
    def rank(self) -> int:
        return max(int(p["R"].shape[0]) for p in self.params.values())

    @property
    def emotion(self) -> str:
        return str(self.meta.get("emotion", ""))

    def width(self, site: Site) -> int:
        return int(self.params[site]["R"].shape[1])

    def __repr__(self) -> str:
        return (f"LowRankIntervention({self.emotion or 'intervention'!r}, rank={self.rank}, "
                f"method={self.meta.get('method')!r}, layers={self.layers})")

    def at(self, layers) -> LowRankIntervention:
        """The part of the intervention at ``layers`` (every one must be present)."""
        wanted = [layers] if isinstance(layers, int) else list(layers)
        missing = sorted(set(wanted) - set(self.layers))
        if missing or not wanted:
            raise SteeringError(f"layers {missing or wanted} are not in this intervention; it has "
                                f"layers {self.layers}")
        return LowRankIntervention({s: p for s, p in self.params.items() if s.layer in wanted},
                                   dict(self.meta, layers=sorted(set(wanted))))

    def operator(self, site: Site, *, strength: float, positions) -> LowRankEdit | None:
        """The edit at ``site`` (None where this intervention has nothing)."""
        if site not in self.params:
            return None
        p = self.params[site]
        return LowRankEdit(p["R"], p["W"] - p["R"], p["b"], strength=float(strength),
                           positions=positions)

    # ------------------------------------------------------------------ models
    def check(self, lm, *, match: Match = "architecture") -> None:
        """As :meth:`SteeringVector.check`: model fit by ``match``, then every site's width."""
        probe_vec = SteeringVector({s: p["b"].new_zeros(self.width(s)) for s, p in self.params.items()},
                                   self.meta)
        probe_vec.check(lm, match=match)

    def rms(self, site: Site) -> float:
        raise SteeringError("a low-rank intervention's strength multiplies its trained edit; "
                            "it has no unit='rms' size")

    @contextmanager
    def apply(self, lm, *, strength: float = 1.0, positions: str | range = "last-prompt+generated",
              match: Match = "exact"):
        """Steer ``lm`` inside a ``with`` block: the edit x ``strength`` at ``positions``."""
        self.check(lm, match=match)
        with lm.hooks(steering_hooks(Setting(vector=self, strength=strength, positions=positions),
                                     lm)) as manager:
            yield manager

    def edit_norms(self, states: Mapping[Site, Tensor]) -> dict[Site, float]:
        """``{site: mean |R^T((W - R) h + b)|}`` over the rows ``h`` of ``states[site]``
        (``[n, d]``, e.g. :func:`steering.eval.baselines.reply_states`): the size of the edit
        at strength 1 on those tokens (a vector's is its norm on every token)."""
        out = {}
        for site, p in self.params.items():
            if site not in states:
                raise SteeringError(f"no states at {site} to measure the edit on; give "
                                    f"{[str(s) for s in self.params]}")
            h = states[site].float().reshape(-1, self.width(site))
            if not len(h):
                raise SteeringError(f"no tokens at {site} to measure the edit on")
            # R has orthonormal rows, so |R^T x| = |x|
            out[site] = float(((h @ (p["W"] - p["R"]).T) + p["b"]).norm(dim=-1).mean())
        return out

    def randomized(self, seed: int, *, states: Mapping[Site, Tensor] | None = None
                   ) -> LowRankIntervention:
        """A random intervention of the same shapes and sizes (a control): a random orthonormal
        ``R``, and ``W - R`` and ``b`` random with the Frobenius norms of this one's.

        With ``states`` (``{site: [n, d]}`` residuals of real tokens), ``W - R`` and ``b`` are
        then scaled together, per site, so that the random edit's mean size on those tokens
        equals this one's (:meth:`edit_norms`): matched on what the edit does to the stream,
        not only on its parameters' norms (on the ``t12`` interventions the two agree within 1%,
        docs/steering.md).
        """
        g = torch.Generator().manual_seed(seed)
        out = {}
        for site, p in self.params.items():
            r, d = p["R"].shape
            R = torch.linalg.qr(torch.randn(d, r, generator=g)).Q.T.contiguous()
            D, b = torch.randn(r, d, generator=g), torch.randn(r, generator=g)
            D = D / D.norm() * (p["W"] - p["R"]).norm()
            b = b / b.norm() * p["b"].norm()
            out[site] = {"R": R, "W": R + D, "b": b}
        meta = {**self.meta, "method": "random"}
        if states is not None:
            want = self.edit_norms(states)
            got = LowRankIntervention(out, meta).edit_norms(states)
            for site, q in out.items():
                c = want[site] / got[site] if got[site] > 0 else 0.0
                q["W"] = q["R"] + (q["W"] - q["R"]) * c
                q["b"] = q["b"] * c
            meta["control"] = "edit size matched on real tokens"
        return LowRankIntervention(out, meta)

    # ------------------------------------------------------------------ files
    def _flat(self) -> dict[str, Tensor]:
        return {f"{s}.{k}": p[k] for s, p in self.params.items() for k in PARTS}

    def checksum(self) -> str:
        return checksum(self._flat())

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.safetensors`` and ``path.json`` (atomically); returns the tensor file."""
        base = file_base(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        header = {**self.meta, "format": FORMAT, "rank": self.rank,
                  "sites": [str(s) for s in self.params], "sha256": self.checksum()}
        text = json.dumps(header, indent=1, sort_keys=True, allow_nan=False)
        st = base.with_name(base.name + ".safetensors")
        save_safetensors(self._flat(), st, metadata={"emoprobe": text})
        atomic_write(base.with_name(base.name + ".json"), text + "\n")
        return st

    @classmethod
    def load(cls, path: str | os.PathLike, lm=None, *, match: Match = "exact") -> LowRankIntervention:
        """Read what :meth:`save` wrote; verify its checksum and, given ``lm``, its fit."""
        meta, tensors, st = read_file(path)
        if meta.get("format") != FORMAT:
            raise SteeringError(f"{st} has format {meta.get('format')}, not a low-rank intervention "
                                f"({FORMAT}); read it with load_steering")
        return _build(meta, tensors, st, lm, match)


def load_steering(path: str | os.PathLike, lm=None, *, match: Match = "exact"
                  ) -> SteeringVector | LowRankIntervention:
    """A steering vector or a low-rank intervention, whichever ``path`` holds (both steer
    through ``Setting(vector=...)``)."""
    meta, tensors, st = read_file(path)
    if meta.get("format") == FORMAT:
        return _build(meta, tensors, st, lm, match)
    return SteeringVector.load(path, lm, match=match)


def _build(meta: dict, tensors: Mapping, st: Path, lm, match: Match) -> LowRankIntervention:
    meta = dict(meta)
    want = meta.pop("sha256", None)
    for k in ("format", "rank"):
        meta.pop(k, None)
    names = meta.pop("sites", [])
    try:
        lr = LowRankIntervention({Site.parse(n): {k: tensors[f"{n}.{k}"] for k in PARTS}
                                  for n in names}, meta)
    except KeyError as exc:
        raise SteeringError(f"{st} lacks the tensor {exc}; save the intervention again") from None
    if want != lr.checksum():
        raise SteeringError(f"{st} is corrupt: its tensors do not match the checksum saved with "
                            "them; save the intervention again")
    if lm is not None:
        lr.check(lm, match=match)
    return lr


__all__ = ["FORMAT", "LowRankIntervention", "load_steering"]
