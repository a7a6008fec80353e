"""The site grammar: parsing, pattern expansion, clear errors."""

import pytest

from probe.sites import ALL_KINDS, LAYER_KINDS, STORE_KINDS, Site, SiteError, parse_sites


def test_the_kind_subsets_are_named_not_sliced():
    """A store holds these kinds by name: q/k/v (interventions only) are not among them, and a
    kind added to the grammar joins LAYER_KINDS but not STORE_KINDS until named there."""
    assert set(STORE_KINDS) < set(ALL_KINDS)
    assert not {"attn.hook_q", "attn.hook_k", "attn.hook_v"} & set(STORE_KINDS)
    assert {"hook_embed", "hook_resid_post", "attn.hook_z", "mlp.hook_post"} <= set(STORE_KINDS)
    assert len(STORE_KINDS) == 8
    assert set(ALL_KINDS) - set(LAYER_KINDS) == {"hook_embed"}


def test_round_trip_every_kind():
    for kind in ALL_KINDS:
        site = Site(kind) if kind == "hook_embed" else Site(kind, 7)
        assert Site.parse(str(site)) == site


@pytest.mark.parametrize("spec, expected", [
    ("blocks.*.hook_resid_post", [f"blocks.{i}.hook_resid_post" for i in range(4)]),
    ("resid_post", [f"blocks.{i}.hook_resid_post" for i in range(4)]),
    ("blocks.1-2.hook_mlp_out", ["blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"]),
    ("blocks.0,3.attn.hook_z", ["blocks.0.attn.hook_z", "blocks.3.attn.hook_z"]),
    ("blocks.-1.hook_resid_pre", ["blocks.3.hook_resid_pre"]),
    ("hook_embed blocks.0.mlp.hook_post", ["hook_embed", "blocks.0.mlp.hook_post"]),
    (["attn.hook_z"], [f"blocks.{i}.attn.hook_z" for i in range(4)]),
])
def test_patterns_expand(spec, expected):
    assert [str(s) for s in parse_sites(spec, n_layers=4)] == expected


def test_duplicates_collapse_and_order_is_stable():
    sites = parse_sites("blocks.2.hook_resid_post blocks.0-2.hook_resid_post hook_embed", n_layers=4)
    assert [str(s) for s in sites] == ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(3)]


@pytest.mark.parametrize("spec, message", [
    ("blocks.4.hook_resid_post", "out of range: the model has 4 layers"),
    ("blocks.*.hook_nope", "unknown site kind 'hook_nope'"),
    ("blocks.x-y.hook_resid_post", "bad layer list"),
    ("residual", "cannot parse site pattern"),
    ("", "no sites given"),
])
def test_errors_say_what_to_fix(spec, message):
    with pytest.raises(SiteError, match=message):
        parse_sites(spec, n_layers=4)


def test_site_value_checks():
    with pytest.raises(SiteError):
        Site("hook_resid_post")
    with pytest.raises(SiteError):
        Site("hook_embed", 3)
    with pytest.raises(SiteError):
        Site.parse("blocks.three.hook_resid_post")
