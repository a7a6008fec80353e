"""The one intervention vocabulary: each operator does what the table in probe/interventions.py
says, on a direction or on units, with strength (added, in a unit) and factor (multiplied)."""

from __future__ import annotations

import pytest
import torch

from probe.forward import make_batch, run_with_cache
from probe.hooks import hooks
from probe.interventions import (
    InterventionError,
    Shift,
    ablate,
    add,
    clamp,
    patch,
    replace,
    scale,
    shift,
    shift_amounts,
)
from probe.sites import Site
from tests.tiny import CORPUS
from tests.tolerance import F32, assert_close

RESID = Site("hook_resid_post", 0)
NEURONS = Site("mlp.hook_post", 1)
UNITS = [3, 17]


def _value(lm, site, fn=None):
    batch = make_batch(lm, CORPUS[:3])
    with hooks(lm, {site: fn} if fn is not None else {}):
        _, got = run_with_cache(lm, batch, [site])
    return got[site], batch.attention_mask.bool()


def _direction(lm, seed=0):
    return torch.randn(lm.arch.d_model(lm.model), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", ["add", "ablate", "clamp", "scale"])
def test_each_operator_on_a_direction(tiny_llama, op):
    lm = tiny_llama
    v = _direction(lm)
    u = v / v.norm()
    h, real = _value(lm, RESID)
    fn = {"add": add(v, strength=2.0, unit="rms", rms=1.5), "ablate": ablate(v),
          "clamp": clamp(v, strength=-3.0), "scale": scale(v, factor=0.25)}[op]
    assert isinstance(fn, Shift)
    h2, _ = _value(lm, RESID, fn)
    p, p2 = h @ u, h2 @ u
    expect = {"add": p + 2.0 * 1.5 * v.norm(), "ablate": torch.zeros_like(p),
              "clamp": torch.full_like(p, -3.0), "scale": 0.25 * p}[op]
    tol = 64 * F32 * float(h.abs().max())
    assert torch.allclose(p2[real], expect[real], atol=tol)
    orth, orth2 = h - p[..., None] * u, h2 - p2[..., None] * u  # nothing else moves
    assert torch.allclose(orth[real], orth2[real], atol=tol)
    assert torch.equal(h[~real], h2[~real])  # nor padding


def test_factor_one_and_strength_zero_change_nothing(tiny_llama):
    lm = tiny_llama
    v = _direction(lm)
    h, _ = _value(lm, RESID)
    for fn in (scale(v, factor=1.0), add(v, strength=0.0), scale(factor=1.0, units=UNITS)):
        site = RESID if isinstance(fn, Shift) else NEURONS
        base = h if site == RESID else _value(lm, NEURONS)[0]
        assert torch.equal(_value(lm, site, fn)[0], base)


def test_operators_on_units_touch_those_units_only(tiny_llama):
    lm = tiny_llama
    h, real = _value(lm, NEURONS)
    rows = torch.tensor([0.5, -2.0])
    other = torch.ones(h.shape[-1], dtype=torch.bool)
    other[UNITS] = False
    cases = {"add": (add(rows, strength=3.0, units=UNITS), h[..., UNITS] + 3.0 * rows),
             "scale": (scale(factor=2.5, units=UNITS), 2.5 * h[..., UNITS]),
             "ablate": (ablate(units=UNITS), torch.zeros_like(h[..., UNITS])),
             "clamp": (clamp(strength=2.0, unit="rms", rms=0.5, units=UNITS),
                       torch.ones_like(h[..., UNITS])),
             "replace": (replace(rows, units=UNITS), rows.expand_as(h[..., UNITS])),
             "patch": (patch(h * 7, units=UNITS), 7 * h[..., UNITS])}
    for name, (fn, want) in cases.items():
        got, _ = _value(lm, NEURONS, fn)
        assert_close(got[real][:, UNITS], want[real], rel=1e-6, err_msg=name)
        assert torch.equal(got[..., other], h[..., other]), name


def test_whole_value_operators(tiny_llama):
    lm = tiny_llama
    h, real = _value(lm, NEURONS)
    got, _ = _value(lm, NEURONS, scale(factor=3.0, positions="last"))
    last = torch.zeros_like(real)
    last[torch.arange(3), real.shape[1] - 1 - real.flip(1).float().argmax(1)] = True
    assert_close(got[last], 3.0 * h[last], rel=1e-6)
    assert torch.equal(got[~last], h[~last])
    assert torch.equal(_value(lm, NEURONS, ablate())[0][real], torch.zeros_like(h[real]))


def test_per_row_numbers_equal_one_row_at_a_time():
    """The batched form steering's tables use: [batch] offsets/gains, [batch, d] directions."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 5, 8, generator=g)
    u = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    offset, gain = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, -1.0, 0.5])
    tok = torch.tensor([False, True, True])
    mask = torch.ones(3, 5)
    mask[0, :2] = 0
    batched = shift(h, u, shift_amounts(h, u, offset=offset, gain=gain, token_rms=tok, mask=mask))
    for r in range(3):
        one = shift_amounts(h[r:r + 1], u[r], offset=float(offset[r]), gain=float(gain[r]),
                            token_rms=bool(tok[r]), mask=mask[r:r + 1])
        assert_close(batched[r], shift(h[r:r + 1], u[r], one)[0], rel=1e-6)


def test_words_are_checked():
    v = torch.ones(4)
    with pytest.raises(InterventionError, match="rms=..."):
        add(v, strength=1.0, unit="rms")
    with pytest.raises(InterventionError, match="unknown unit"):
        add(v, unit="x-rms")
    with pytest.raises(InterventionError, match="finite"):
        scale(v, factor=float("nan"))
    with pytest.raises(InterventionError, match="token-rms"):
        add(v, unit="token-rms", units=[0])
    with pytest.raises(InterventionError, match="zero vector"):
        ablate(torch.zeros(4))
    with pytest.raises(InterventionError, match="not both"):
        scale(v, factor=2.0, units=[0])
    with pytest.raises(InterventionError, match="direction or units"):
        clamp(strength=1.0)
