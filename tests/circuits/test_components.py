"""Component names, groups and the tensor views attribution and patching share."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits.components import (
    Component,
    ComponentError,
    Group,
    at_units,
    groups,
    parse_types,
    per_unit,
    row_mask,
)
from probe.arch import Architecture
from probe.sites import Site


@pytest.mark.parametrize("name", ["blocks.5.attn.hook_z[3]", "blocks.0.mlp.hook_post[1535]",
                                  "blocks.2.hook_attn_out", "blocks.7.hook_resid_pre@-2",
                                  "blocks.1.attn.hook_k[2]"])
def test_names_round_trip(name):
    assert str(Component.parse(name)) == name


def test_bad_components_say_what_is_wrong():
    with pytest.raises(ComponentError, match="not a component site"):
        Component(Site("hook_resid_post", 3))
    with pytest.raises(ComponentError, match="position"):
        Component(Site("hook_resid_pre", 3))
    with pytest.raises(ComponentError, match="count from the last token"):
        Component(Site("hook_resid_pre", 3), position=2)
    with pytest.raises(ComponentError, match="unknown component type"):
        parse_types("heads,edges")


def test_groups_cover_every_unit(llama):
    gs = groups(llama, ("heads", "neurons", "sublayers", "resid", "queries", "keys"), range(3),
                positions=5)
    n = {t: sum(g.n_units for g in gs if g.type == t) for t in ("heads", "neurons", "sublayers",
                                                                 "resid", "queries", "keys")}
    assert n == {"heads": 12, "neurons": 384, "sublayers": 6, "resid": 15, "queries": 12, "keys": 6}
    g = next(g for g in gs if g.type == "keys")
    assert g.components()[1] == Component(Site("attn.hook_k", 0, head=1))


def test_a_type_the_architecture_lacks_is_an_error(llama):
    table = {k: v for k, v in llama.arch.table.items() if k != "attn.hook_q"}
    lm = dataclasses.replace(llama, arch=Architecture("custom", table, llama.arch.layers_path))
    with pytest.raises(ComponentError, match="lacks"):
        groups(lm, ("queries",), range(2))


def test_views_select_the_right_entries():
    g = Group("heads", Site("attn.hook_z", 0), 3)
    x = torch.arange(2 * 4 * 3 * 2, dtype=torch.float).reshape(2, 4, 3, 2)
    pu = per_unit(g, x)
    assert pu.shape == (2, 4, 3) and pu[1, 2, 0] == x[1, 2, 0].sum()
    mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    last = torch.tensor([3, 3])
    assert torch.equal(at_units(g, pu, mask, last), (pu * mask[..., None]).sum(1))
    m = row_mask(g, torch.tensor([2, -1]), mask, last, x)
    assert m[0, 1:, 2].all() and not m[0, :, :2].any() and not m[1].any()
    r = Group("resid", Site("hook_resid_pre", 1), 2)
    y = torch.randn(2, 4, 5)
    got = at_units(r, per_unit(r, y), mask, last)
    assert torch.allclose(got[:, 0], y[:, 3].sum(-1)) and torch.allclose(got[:, 1], y[:, 2].sum(-1))
    mr = row_mask(r, torch.tensor([1, 0]), mask, last, y)
    assert mr[0, 2].all() and mr[1, 3].all() and mr.sum() == 2 * 5
