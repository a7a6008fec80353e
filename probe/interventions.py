"""Ready-made hook functions for the common interventions (TransformerLens-style partials).

Each factory returns ``fn(value, ctx) -> Tensor`` for :func:`probe.hooks.hooks`; ``positions``
takes any mode of :meth:`probe.hooks.HookContext.positions` (``"all"``, ``"prompt"``,
``"generated"``, ``"last"``, ``"last-prompt+generated"``, ``"content"`` or a ``range``).

>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> with lm.hooks({"blocks.12.hook_resid_post": add(v, scale=4.0, positions="last-prompt+generated"),
...                "blocks.5.attn.hook_z[3]": zero()}):  # doctest: +SKIP
...     lm.generate(["Tell me about your day."])
"""

from __future__ import annotations

from torch import Tensor

from probe.hooks import HookContext, HookError, PositionMode


def add(vector: Tensor, *, scale: float = 1.0, positions: PositionMode | range = "all"):
    """Add ``scale * vector`` at the chosen positions."""
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        v = vector.to(device=value.device, dtype=value.dtype)
        return value + scale * v * ctx.mask(positions, value)
    return fn


def zero(*, positions: PositionMode | range = "all"):
    """Zero-ablate the value at the chosen positions (e.g. one head: ``blocks.5.attn.hook_z[3]``)."""
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        return value * (1 - ctx.mask(positions, value))
    return fn


def replace_with(mean: Tensor, *, positions: PositionMode | range = "all"):
    """Replace the value by a fixed one (mean ablation: pass the site's mean over a dataset)."""
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        m = ctx.mask(positions, value)
        return value * (1 - m) + mean.to(device=value.device, dtype=value.dtype) * m
    return fn


def patch(source: Tensor, *, positions: PositionMode | range = "all"):
    """Activation patching: take the value another run cached at this site (same shape).

    ``source`` is what :func:`probe.forward.run_with_cache` returned for the same site on the
    other (clean or corrupt) batch; the two batches must align position by position.
    """
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        if source.shape != value.shape:
            raise HookError(f"patch at {ctx.site}: cached value has shape {tuple(source.shape)} "
                            f"but this run's is {tuple(value.shape)}; the two batches must have "
                            "the same rows and token positions")
        m = ctx.mask(positions, value)
        return value * (1 - m) + source.to(device=value.device, dtype=value.dtype) * m
    return fn


def project_out(direction: Tensor, *, positions: PositionMode | range = "all"):
    """Remove the component along ``direction`` (directional ablation)."""
    def fn(value: Tensor, ctx: HookContext) -> Tensor:
        u = direction.to(device=value.device, dtype=value.dtype)
        u = u / u.norm()
        return value - (value @ u)[..., None] * u * ctx.mask(positions, value)
    return fn
