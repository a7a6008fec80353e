"""Fit a steering vector through the hook layer's gradients (rank-1 additive, a few layers).

The vector is one trainable ``d_model`` tensor ``w_l`` per layer, in units of the layer's typical
RMS, added by a write hook (:mod:`probe.hooks`) at the positions ``probe steer`` steers
(``last-prompt+generated``: the prompt's last token and every reply token) or at all positions.
The model's weights are frozen (``requires_grad=False``); gradients reach only ``w``; the hooks
are removed in ``finally``. After each Adam step every ``w_l`` is projected back into the ball of
radius ``max_norm`` (x RMS): the fluency constraint of the fit.

The result is a :class:`~steering.vector.SteeringVector` whose per-site tensor is ``w_l`` and
whose ``meta["rms"]`` holds the RMS, so ``vec.apply(lm, strength=1.0)`` (unit ``rms``) adds
exactly what was trained and ``strength=s`` scales it. ``meta["train"]`` records the
:class:`TrainConfig`; :meth:`TrainConfig.from_record` reads it back, also from files written
before ``init_scale`` was renamed ``init_strength``.

>>> vec, log = train_vector(lm, data, objective("distill"), TrainConfig(layers=(8, 10, 12)))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from probe.kvcache import cache_keyword, returned_cache
from probe.sites import Site
from steering.lowrank import LowRankIntervention
from steering.train.batching import PairBatch, check_positions
from steering.train.objectives import PairData
from steering.train.reft import ReftSite
from steering.vector import SteeringError, SteeringVector


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a vector is fitted.

    Attributes:
        layers: Residual-stream layers (``blocks.L.hook_resid_post``) the vector is added at.
        positions: ``"last-prompt+generated"`` (as ``probe steer``), ``"all"``, or
            ``"opening:K"`` (only the states that predict the reply's first K tokens; steer with
            the same positions).
        steps: Adam steps.
        batch_size: Training rows per step.
        lr: Adam learning rate (the vector is in units of RMS per layer).
        init_strength: Length of the initial vector per layer (x RMS) along the init direction;
            None: the init vector as it is (continue a trained vector: its lengths, converted
            to this data's RMS).
        max_norm: Radius (x RMS per layer) the vector is projected into after each step.
        seed: Row order.
        rank: 0 (default): a rank-1 additive vector per layer; ``r >= 1``: a LoReFT edit of
            rank ``r`` per layer (:mod:`steering.train.reft`), saved as a
            :class:`~steering.lowrank.LowRankIntervention`.
    """

    layers: tuple[int, ...] = (8, 10, 12)
    positions: str = "last-prompt+generated"
    steps: int = 40
    batch_size: int = 8
    lr: float = 0.01
    init_strength: float | None = 0.5
    max_norm: float = 4.0
    seed: int = 0
    rank: int = 0

    def __post_init__(self) -> None:
        if not self.layers or min(self.layers) < 0:
            raise SteeringError(f"layers must be non-negative and not empty, got {self.layers}")
        check_positions(self.positions)
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or not self.max_norm > 0:
            raise SteeringError("steps, batch_size, lr and max_norm must be positive")
        if self.init_strength is not None and not self.init_strength > 0:
            raise SteeringError(f"init_strength must be positive (or None: the init vector's own "
                                f"lengths), got {self.init_strength}")
        if not isinstance(self.rank, int) or self.rank < 0:
            raise SteeringError(f"rank must be 0 (an additive vector) or a positive integer (a "
                                f"LoReFT edit of that rank), got {self.rank!r}")

    @classmethod
    def from_record(cls, record: dict) -> TrainConfig:
        """The config a vector's ``meta["train"]`` records (older files: ``init_scale``)."""
        names = set(cls.__dataclass_fields__)
        fields = {("init_strength" if k == "init_scale" else k): v for k, v in record.items()}
        fields = {k: v for k, v in fields.items() if k in names}
        if "layers" in fields:
            fields["layers"] = tuple(fields["layers"])
        return cls(**fields)


@dataclass
class TrainLog:
    """Loss per step, seconds, and the vector norms (x RMS) at the end."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    norms: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        return asdict(self)


def site_rms(lm, data: PairData, layers: Sequence[int], *, rows: int = 16) -> dict[int, float]:
    """Typical RMS ``sqrt(mean(h**2))`` of each layer's residual over real tokens of ``data``."""
    acc: dict[int, list[Tensor]] = {L: [] for L in layers}
    b = data.batch(lm, list(range(min(rows, len(data)))))
    m = b.attention_mask.bool()

    def reader(layer):
        def fn(value, ctx):
            acc[layer].append(value.float().pow(2).mean(-1).sqrt()[m])
        return fn

    with torch.no_grad(), lm.hooks({Site("hook_resid_post", L): reader(L) for L in layers}):
        lm.model(**b.inputs)
    return {L: float(torch.cat(v).mean()) for L, v in acc.items()}


class SteeredModel:
    """The model with trainable additions ``rms_l * w_l`` at ``sites``, for teacher forcing
    (or, where a weight is a :class:`~steering.train.reft.ReftSite`, its edit of the value).

    ``forward(batch)`` returns logits with the additions at the batch's steering mask. With
    ``last-prompt+generated`` the prompt before its last token is never steered, so its
    key/value cache is computed once per distinct prompt block (unsteered, no grad) and reused:
    the forward then covers only the last prompt token and the reply, and returns their logits.
    Use it inside ``with steered.hooks():``.
    """

    def __init__(self, lm, sites: Sequence[Site], weights: Sequence[Tensor], rms: Sequence[float],
                 positions: str) -> None:
        self.lm, self.sites, self.weights, self.positions = lm, list(sites), list(weights), positions
        self.scales = [float(r) for r in rms]
        self._mask: Tensor | None = None
        self._prefixes: dict[bytes, object] = {}

    def _adder(self, k: int):
        def fn(value: Tensor, ctx) -> Tensor:
            mask = self._mask
            if mask is None or mask.shape != value.shape[:2]:
                raise SteeringError("a training hook saw a value of another shape than its batch")
            w = self.weights[k]
            delta = w.delta(value) if isinstance(w, ReftSite) else (self.scales[k] * w).to(value.dtype)
            return value + mask.unsqueeze(-1).to(value.dtype) * delta
        return fn

    def hooks(self):
        return self.lm.hooks({s: self._adder(k) for k, s in enumerate(self.sites)})

    def __call__(self, batch: PairBatch) -> Tensor:
        return self.forward(batch)

    def unsteered(self, batch: PairBatch) -> Tensor:
        """The same logits as :meth:`forward` with nothing added (the steering mask zeroed;
        the prompt caches are shared), for objectives that compare with the plain model."""
        return self.forward(batch, steer=False)

    def forward(self, batch: PairBatch, *, steer: bool = True) -> Tensor:
        mask = batch.steer_mask(self.positions)
        if not steer:
            mask = torch.zeros_like(mask)
        if self.positions == "all" or batch.width < 2:
            self._mask = mask
            return self.lm.model(**batch.inputs).logits
        pre, suf = batch.split()
        ids = pre["input_ids"]
        key = ids.cpu().numpy().tobytes() + str(tuple(ids.shape)).encode()
        if key not in self._prefixes:
            self._mask = torch.zeros_like(mask[:, : batch.width - 1])
            with torch.no_grad():
                res = self.lm.model(**pre, use_cache=True, logits_to_keep=1)
                self._prefixes[key] = returned_cache(res)
        self._mask = mask[:, batch.width - 1:]
        cache = copy.deepcopy(self._prefixes[key])
        return self.lm.model(**suf, **{cache_keyword(self.lm.model): cache}, use_cache=True).logits


def train_vector(lm, data: PairData, objective, config: TrainConfig = TrainConfig(), *,
                 init: SteeringVector | None = None, emotion: str | None = None,
                 log=None) -> tuple[SteeringVector | LowRankIntervention, TrainLog]:
    """Fit one vector on ``data`` with ``objective`` (:func:`steering.train.objectives.objective`).

    Args:
        lm: The model; its weights are not changed.
        data: Prompts and replies (:class:`~steering.train.objectives.PairData`).
        objective: What to minimise.
        config: Layers, positions, optimiser (:class:`TrainConfig`).
        init: Initial directions (e.g. expression directions); None: a random start (with
            ``config.rank``, the first row of each site's subspace).
        emotion: Recorded in the vector's meta.
        log: Progress lines (or None).
    """
    n_layers = lm.n_layers
    if max(config.layers) >= n_layers:
        raise SteeringError(f"layer {max(config.layers)} out of range: the model has {n_layers}")
    t0 = time.perf_counter()
    if log:
        log(f"preparing {objective.name} on {len(data)} rows (the unsteered model's targets; no gradients)")
    objective.prepare(lm, data)
    rms = site_rms(lm, data, config.layers)
    sites = [Site("hook_resid_post", L) for L in config.layers]
    if config.rank:
        if config.init_strength is None:
            raise SteeringError("a LoReFT edit starts from a direction at init_strength; "
                                "init_strength=None (continue a vector) is for rank 0")
        weights = torch.nn.ModuleList([ReftSite(_init(lm, init, s, config, rms[s.layer]), rank=config.rank,
                                                rms=rms[s.layer], init_strength=config.init_strength,
                                                seed=config.seed + s.layer) for s in sites])
        opt = torch.optim.Adam(weights.parameters(), lr=config.lr)
    else:
        weights = torch.nn.ParameterList([torch.nn.Parameter(_init(lm, init, s, config, rms[s.layer]))
                                          for s in sites])
        opt = torch.optim.Adam(weights, lr=config.lr)
    steered = SteeredModel(lm, sites, weights, [rms[L] for L in config.layers], config.positions)
    forward = steered   # callable; objectives that need the plain model use forward.unsteered

    gen = torch.Generator().manual_seed(config.seed)
    out = TrainLog()
    # fixed batches (their prompt caches are reused), visited in a new order every epoch
    perm = torch.randperm(len(data), generator=gen).tolist()
    fixed = [perm[i:i + config.batch_size] for i in range(0, len(perm), config.batch_size)]
    order: list[list[int]] = []
    with torch.enable_grad(), steered.hooks():
        for step in range(config.steps):
            if not order:
                order = [fixed[i] for i in torch.randperm(len(fixed), generator=gen).tolist()]
            rows = order.pop()
            opt.zero_grad()
            loss = objective.loss(lm, forward, data, rows)
            if not torch.isfinite(loss.detach()):
                raise SteeringError(f"the {objective.name} loss became {float(loss.detach())} at step {step}")
            loss.backward()
            opt.step()
            with torch.no_grad():
                for w in weights:
                    if isinstance(w, ReftSite):
                        w.project_(config.max_norm)
                    else:
                        w.mul_(min(1.0, config.max_norm / max(float(w.norm()), 1e-12)))
            out.losses.append(float(loss.detach()))
            if log and (step % 10 == 0 or step == config.steps - 1):
                log(f"  step {step:3d} {objective.name} loss {out.losses[-1]:.4f}")
    out.seconds = time.perf_counter() - t0
    out.norms = {str(s): float(w.norm() if isinstance(w, ReftSite) else w.detach().norm())
                 for s, w in zip(sites, weights)}
    meta = {**lm.provenance(), "method": f"trained-{objective.name}", "emotion": emotion,
            "layers": list(config.layers), "rms": {str(s): rms[L] for s, L in zip(sites, config.layers)},
            "train": {**asdict(config), "objective": repr(objective), "rows": len(data),
                      "final_loss": out.losses[-1], "seconds": round(out.seconds, 1),
                      "init": (init.meta.get("method") if init is not None else "random")}}
    if config.rank:
        return LowRankIntervention({s: w.export() for s, w in zip(sites, weights)}, meta), out
    vec = SteeringVector({s: w.detach().clone() for s, w in zip(sites, weights)}, meta)
    return vec, out


def _init(lm, init: SteeringVector | None, site: Site, config: TrainConfig, rms: float) -> Tensor:
    """The starting weight at ``site``: ``init``'s direction at ``config.init_strength`` x RMS (a
    random one without ``init``), or with ``init_strength=None`` ``init`` itself, converted to
    this data's ``rms`` so that it adds the same absolute edit."""
    d = lm.model.config.hidden_size
    if init is not None and site in init.directions:
        v = init.directions[site].float().flatten()
    elif config.init_strength is None:
        raise SteeringError(f"init_strength=None continues an init vector, and it has no "
                            f"direction at {site}")
    else:
        v = torch.randn(d, generator=torch.Generator().manual_seed(config.seed + site.layer))
    if v.numel() != d or not math.isfinite(float(v.norm())) or float(v.norm()) == 0:
        raise SteeringError(f"the initial direction at {site} is not a non-zero {d}-vector")
    if config.init_strength is None:
        return (v * (init.rms(site) / rms)).to(torch.float32)
    return (v / v.norm() * config.init_strength).to(torch.float32)
