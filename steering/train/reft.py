"""LoReFT at one site, parametrised for training (``TrainConfig(rank=r)``).

The edit is ``R^T(rms * b + D h / d)``: ``R`` ``[r, d]`` with orthonormal rows (re-orthonormalised
after every step), ``b`` ``[r]`` in units of the site's typical RMS, ``D`` ``[r, d]`` scaled by
``1 / d`` so that an Adam step moves ``D h / d`` about as far (in RMS) as it moves ``b``. It is
LoReFT's ``R^T(W h + b' - R h)`` with ``W = R + D / d`` and ``b' = rms * b``
(:meth:`ReftSite.export`). It starts as the rank-1 vector's start: ``R``'s first row the initial
direction, ``b = (init_strength, 0, ...)``, ``D = 0``, so the first edit is
``init_strength * rms`` along that direction at every steered token; the fit can then make it
depend on the token's state, inside a subspace of ``r`` dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ReftSite(torch.nn.Module):
    """Trainable LoReFT parameters at one site (see the module docstring)."""

    def __init__(self, direction: Tensor, *, rank: int, rms: float, init_strength: float,
                 seed: int) -> None:
        super().__init__()
        d = direction.numel()
        if not 1 <= rank <= d:
            raise ValueError(f"rank must be between 1 and {d}, got {rank}")
        g = torch.Generator().manual_seed(seed)
        u = direction.float().flatten() / direction.norm()
        basis = torch.cat([u[:, None], torch.randn(d, rank - 1, generator=g)], dim=1)
        q = _orthonormal(basis)
        q[:, 0] *= torch.sign(q[:, 0] @ u)   # the first row is +u
        b = torch.zeros(rank)
        b[0] = init_strength
        self.R = torch.nn.Parameter(q.T.contiguous())
        self.D = torch.nn.Parameter(torch.zeros(rank, d))
        self.b = torch.nn.Parameter(b)
        self.rms, self.d = float(rms), d

    def delta(self, value: Tensor) -> Tensor:
        """The edit ``[batch, pos, d]`` for the value ``[batch, pos, d]`` (before masking)."""
        coords = self.rms * self.b + value.float() @ self.D.T / self.d
        return (coords @ self.R).to(value.dtype)

    @torch.no_grad()
    def project_(self, max_norm: float) -> None:
        """Orthonormalise ``R``'s rows; keep ``|b| <= max_norm`` and ``D h / d`` within about
        ``max_norm`` RMS (``|D|_F <= max_norm sqrt(d)``)."""
        self.R.copy_(_orthonormal(self.R.T).T)
        self.b.mul_(min(1.0, max_norm / max(float(self.b.norm()), 1e-12)))
        cap = max_norm * math.sqrt(self.d)
        self.D.mul_(min(1.0, cap / max(float(self.D.norm()), 1e-12)))

    def norm(self) -> float:
        """``|b|`` (x RMS): the size of the edit's constant part."""
        return float(self.b.detach().norm())

    def export(self) -> dict[str, Tensor]:
        """LoReFT's ``R``, ``W``, ``b`` (absolute units), for :class:`~steering.lowrank.LowRankIntervention`."""
        R = self.R.detach().clone()
        return {"R": R, "W": R + self.D.detach() / self.d, "b": self.rms * self.b.detach().clone()}


def _orthonormal(columns: Tensor) -> Tensor:
    """Orthonormal columns spanning ``columns`` ``[d, r]``, each kept on its column's side."""
    q, r = torch.linalg.qr(columns)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return q * sign
