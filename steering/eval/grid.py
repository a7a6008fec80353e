"""The search space of ``steer-eval``: grid points, arms (what generates a reply), generation.

A :class:`GridPoint` is one way to steer towards one emotion: direction method, layers,
positions and strength (per layer, in units of each layer's typical RMS). An :class:`Arm` is
anything that produces replies to the neutral prompts: a grid point, no steering, a system
prompt, a prompt plus steering, a random direction, or any other intervention that opens hooks
(``Arm.hooks``: a circuit modulation, say). :func:`generate_arms` generates every arm
on every prompt with as few batched ``generate`` calls as the arms allow (one per distinct
system prompt / user suffix / prefix reuse; all settings of a prompt share its prefix KV cache
where the positions leave the prompt alone, :func:`steering.inject.generate_settings`).

The grid is staged (:class:`GridConfig`): a coarse pass over methods x layer bands x positions
x total strengths on a few tune prompts, then a strength ladder around the best of the
best configurations on every tune prompt (:func:`ladder_points`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from steering.inject import Setting, prefix_reusable
from steering.vector import SteeringError, SteeringVector


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """Generation settings of every reply (greedy; Wang et al.'s repetition settings)."""

    max_new_tokens: int = 40
    repetition_penalty: float = 1.05
    no_repeat_ngram_size: int = 3

    def kwargs(self) -> dict:
        return {"repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


@dataclass(frozen=True, kw_only=True)
class GridPoint:
    """One steering setting for one emotion; ``strength`` is per layer, x the layer's typical RMS."""

    emotion: str
    method: str
    layers: tuple[int, ...]
    positions: str
    strength: float
    site: str = "resid_post"

    @property
    def band(self) -> str:
        lo, hi = min(self.layers), max(self.layers)
        contiguous = list(self.layers) == list(range(lo, hi + 1))
        return f"{lo}-{hi}" if contiguous else ",".join(map(str, self.layers))

    @property
    def total(self) -> float:
        """Strength summed over the layers (x RMS): comparable across bands."""
        return self.strength * len(self.layers)

    @property
    def config(self) -> tuple[str, str, tuple[int, ...], str]:
        """Everything but the strength."""
        return (self.emotion, self.method, self.layers, self.positions)

    def vector(self, vectors: Mapping[str, Mapping[str, SteeringVector]]) -> SteeringVector:
        if self.method not in vectors:
            raise SteeringError(f"no {self.method} directions were computed; have {sorted(vectors)}")
        return vectors[self.method][self.emotion].at(self.layers)

    def setting(self, vectors: Mapping[str, Mapping[str, SteeringVector]]) -> Setting:
        return Setting(vector=self.vector(vectors), strength=self.strength, positions=self.positions,
                       label=self.describe())

    def describe(self) -> str:
        return (f"{self.emotion}: {self.method} L{self.band} {self.positions} "
                f"x{self.strength:.3g} RMS/layer")

    def record(self) -> dict:
        return {"method": self.method, "layers": self.band, "positions": self.positions,
                "strength": self.strength, "total_strength": self.total}


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """The coarse grid and the ladder (see the module docstring).

    Attributes:
        methods: Direction methods (:data:`steering.directions.METHODS`, store-based ones).
        bands: Layer bands ``(first, last)``, inclusive.
        positions: Position modes (:data:`steering.inject.POSITION_MODES`).
        totals: Coarse strengths, summed over a band's layers (x RMS); per layer = total / width.
        coarse_prompts: Tune prompts of the coarse pass (spread over the prompt kinds).
        ladder_configs: Configurations per emotion that go on to the ladder.
        ladder_steps: Strengths inserted between the best coarse strength and each neighbour.
    """

    methods: tuple[str, ...] = ("context-agnostic", "mean-diff-neutral")
    bands: tuple[tuple[int, int], ...] = ((6, 11), (10, 19), (14, 19), (20, 25))
    positions: tuple[str, ...] = ("last-prompt+generated", "all")
    totals: tuple[float, ...] = (6.0, 12.0, 24.0)
    coarse_prompts: int = 8
    ladder_configs: int = 2
    ladder_steps: int = 1

    def __post_init__(self) -> None:
        for lo, hi in self.bands:
            if not 0 <= lo <= hi:
                raise SteeringError(f"layer band {lo}-{hi} is empty or negative")
        if not self.totals or min(self.totals) <= 0:
            raise SteeringError(f"strengths must be positive, got {self.totals}")
        if self.coarse_prompts < 1 or self.ladder_configs < 1 or self.ladder_steps < 0:
            raise SteeringError("coarse_prompts and ladder_configs must be >= 1, ladder_steps >= 0")

    def layers(self) -> list[int]:
        """Every layer some band touches."""
        return sorted({x for lo, hi in self.bands for x in range(lo, hi + 1)})

    def coarse_points(self, emotions: Sequence[str]) -> list[GridPoint]:
        return [GridPoint(emotion=e, method=m, layers=tuple(range(lo, hi + 1)), positions=p,
                          strength=t / (hi - lo + 1))
                for e in emotions for m in self.methods for lo, hi in self.bands
                for p in self.positions for t in sorted(self.totals)]


def ladder_points(best: GridPoint, coarse_totals: Sequence[float], steps: int) -> list[GridPoint]:
    """``best``'s configuration at the coarse strengths and ``steps`` geometric midpoints
    between the best strength and each of its neighbours."""
    totals = sorted(coarse_totals)
    i = min(range(len(totals)), key=lambda k: abs(totals[k] - best.total))
    ladder = set(totals)
    for j in (i - 1, i + 1):
        if 0 <= j < len(totals):
            a, b = totals[i], totals[j]
            ladder |= {a * (b / a) ** (k / (steps + 1)) for k in range(1, steps + 1)}
    if i == 0 and steps:  # below the weakest coarse strength: halve it
        ladder.add(totals[0] / 2)
    n = len(best.layers)
    return [GridPoint(emotion=best.emotion, method=best.method, layers=best.layers,
                      positions=best.positions, strength=round(t / n, 4), site=best.site)
            for t in sorted(ladder)]


# ---------------------------------------------------------------------------- arms
@dataclass(frozen=True, kw_only=True)
class Arm:
    """What produces one set of replies: a steering setting, an instruction, or both.

    Attributes:
        condition: ``unsteered``, ``steered``, ``prompt-system``, ``prompt-designed``,
            ``prompt-designed+steered``, ``random``, ``grid``, or a caller's label.
        emotion: The target emotion (None: the replies serve every target, e.g. unsteered).
        setting: The steering setting (``Setting()`` for none).
        point: The grid point the setting comes from (None for unsteered / prompting).
        system_prompt: Replaces the chat template's system prompt (None: the template's).
        user_suffix: Appended to each neutral prompt in the user turn.
        hooks: Another intervention, held open while this arm generates: a hook dict
            ``{site: fn}`` (opened with ``lm.hooks``) or a zero-argument callable that returns
            a context manager opening hooks (e.g. a circuit modulation,
            ``lambda: lm.hooks(modulation_hooks(lm, circuit, strength=2, offsets=offsets))``).
            None: only ``setting`` steers.
    """

    condition: str
    emotion: str | None
    setting: Setting = field(default_factory=Setting)
    point: GridPoint | None = None
    system_prompt: str | None = None
    user_suffix: str = ""
    hooks: Mapping | Callable[[], AbstractContextManager] | None = field(default=None, compare=False)

    @property
    def instruction(self) -> str | None:
        """The text that asks for the emotion (for echo detection), if any."""
        parts = [p for p in (self.system_prompt, self.user_suffix.strip()) if p]
        return "\n".join(parts) or None

    def key(self) -> tuple:
        return (self.condition, self.emotion, self.point, self.system_prompt, self.user_suffix)


def generate_arms(lm, prompts: Sequence[str], arms: Sequence[Arm], *, decoding: Decoding,
                  batch_size: int = 64, log: Callable[[str], None] | None = None) -> list[list[str]]:
    """``texts[a][p]``: the reply to ``prompts[p]`` under ``arms[a]`` (greedy, batched)."""
    from steering.inject import generate_settings

    groups: dict[tuple, list[int]] = {}
    for i, arm in enumerate(arms):
        safe = prefix_reusable([arm.setting])
        own = None if arm.hooks is None else i   # an arm with hooks generates on its own
        groups.setdefault((arm.system_prompt, arm.user_suffix, safe, own), []).append(i)
    out: list[list[str]] = [[] for _ in arms]
    for (system, suffix, _, _), idx in groups.items():
        t0 = time.perf_counter()
        with open_hooks(lm, arms[idx[0]].hooks):
            texts = generate_settings(lm, [p + suffix for p in prompts],
                                      [arms[i].setting for i in idx],
                                      max_new_tokens=decoding.max_new_tokens, batch_size=batch_size,
                                      system_prompt=system, **decoding.kwargs())
        for i, t in zip(idx, texts):
            out[i] = t
        if log:
            rows = len(idx) * len(prompts)
            log(f"  generated {rows} replies ({len(idx)} arms x {len(prompts)} prompts) in "
                f"{time.perf_counter() - t0:.0f} s")
    return out


def open_hooks(lm, hooks) -> AbstractContextManager:
    """The context that holds ``hooks`` open: a hook dict ``{site: fn}`` (``lm.hooks``), a
    zero-argument callable returning a context manager, or None (nothing opened)."""
    from steering.judges.emotion import JudgeError

    if hooks is None:
        return contextlib.nullcontext()
    if isinstance(hooks, Mapping):
        return lm.hooks(dict(hooks))
    if callable(hooks):
        ctx = hooks()
        if not hasattr(ctx, "__enter__"):
            raise JudgeError("an intervention callable must return a context manager that opens "
                             f"hooks, got {type(ctx).__name__}")
        return ctx
    raise JudgeError(f"intervention must be a hook dict, a callable, a Setting (score_intervention "
                     f"only) or None; got {type(hooks).__name__}")


def fmt_strength(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"
