"""bfloat16 stores: uint16 bits on disk, exact float32 values on read."""

import numpy as np
import pytest
import torch

from probe import bf16
from probe.cache import CacheConfig, cache_activations
from probe.capture import iter_blocks
from probe.models import load_model
from probe.sites import parse_sites
from probe.store import StoreError, open_store
from probe.tokens import encode


def test_bits_round_trip_exactly_with_nan_and_huge_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.logspace(-30, 30, 1000)
    x = torch.cat([x, torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])])
    b = x.to(torch.bfloat16)
    back = bf16.from_bits(bf16.to_bits(b))
    want = b.float().numpy()
    assert back.dtype == np.float32
    assert np.array_equal(back.view(np.uint32), want.view(np.uint32))  # -0.0 and NaN bits too
    assert bf16.from_bits(np.array([bf16.NAN_BITS], np.uint16))[0] != \
        bf16.from_bits(np.array([bf16.NAN_BITS], np.uint16))[0]  # the fill value is NaN


@pytest.fixture()
def loud(tiny_dir):
    """The tiny Llama with activations far beyond float16's range."""
    lm = load_model(str(tiny_dir / "llama"), device="cpu", dtype="float32")
    with torch.no_grad():
        lm.model.get_input_embeddings().weight.mul_(1e5)
    return lm


def test_bfloat16_store_holds_what_float16_cannot(loud, toy_dataset, tmp_path):
    config = CacheConfig(sites="hook_embed blocks.*.hook_resid_post", block_size=8,
                         poolings=("last", "mean"))
    with pytest.raises(StoreError, match="--store-dtype\\s+bfloat16"):
        cache_activations(loud, toy_dataset, config=config, out=tmp_path / "f16.zarr",
                          progress=False)
    as_bf16 = CacheConfig(**{**config.__dict__, "store_dtype": "bfloat16"})
    path = cache_activations(loud, toy_dataset, config=as_bf16, out=tmp_path / "bf16.zarr",
                             progress=False)
    import zarr

    raw = zarr.open_group(str(path), mode="r")["hook_resid_post"]
    assert raw.dtype == np.uint16 and raw.attrs[bf16.ATTR] == bf16.VALUE
    ds = open_store(path)
    values = ds["hook_resid_post"].values
    assert values.dtype == np.float32 and np.abs(values).max() > 65504
    # exactly the captured values rounded to bfloat16
    enc = encode(loud.tokenizer, toy_dataset.texts, chat_template=True)
    sites = parse_sites("blocks.*.hook_resid_post", n_layers=3)
    blocks = dict(iter_blocks(loud, enc, sites, ["last", "mean"], batch_size=32, block_size=8,
                              padding_side=loud.tokenizer.padding_side))
    for first, pooled in blocks.items():
        for s in sites:
            want = pooled[s].to(torch.bfloat16).float().numpy()
            got = values[first:first + len(want), s.layer]
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_lazy_decoding_with_dask(loud, toy_dataset, tmp_path):
    pytest.importorskip("dask")
    from probe.lazy import open_lazy

    path = cache_activations(loud, toy_dataset, config=CacheConfig(
        sites="blocks.1.hook_resid_post", block_size=8, store_dtype="bfloat16"),
        out=tmp_path / "s.zarr", progress=False)
    eager, lazy = open_store(path)["hook_resid_post"], open_lazy(path)["hook_resid_post"]
    assert hasattr(lazy.data, "dask") and lazy.dtype == np.float32
    assert np.array_equal(lazy.values, eager.values, equal_nan=True)
