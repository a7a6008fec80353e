"""Big models on one node: a device map with a memory cap that forces a CPU / disk split."""

import pytest
import torch

from probe.capture import iter_blocks, no_hooks_left
from probe.interventions import add
from probe.models import load_model
from probe.placement import PlacementError, parse_max_memory, placement
from probe.sites import parse_sites
from probe.tokens import encode
from tests.tiny import CORPUS, save_tiny

F32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """The same tiny Llama whole, and spread over CPU memory and disk by a 450 kB CPU cap."""
    root = tmp_path_factory.mktemp("placement")
    path = save_tiny("llama", root, n_layers=4)
    whole = load_model(str(path), device="cpu", dtype="float32")
    spread = load_model(str(path), dtype="float32", device_map="auto", max_memory="cpu=450KB",
                        offload_folder=str(root / "offload"))
    return whole, spread


def test_the_cap_forces_a_split(split):
    _, spread = split
    where = placement(spread.model)
    assert "disk" in where.values() and "cpu" in where.values(), where
    assert spread.device == torch.device("cpu")


def test_split_model_captures_the_same_activations(split, one_thread):
    whole, spread = split
    enc = encode(whole.tokenizer, CORPUS[:6], chat_template=True)
    sites = parse_sites("hook_embed blocks.*.hook_resid_post blocks.*.attn.hook_z", n_layers=4)
    pools = ["last", "mean", "content-mean"]
    a = dict(iter_blocks(whole, enc, sites, pools, batch_size=4, block_size=6))[0]
    b = dict(iter_blocks(spread, enc, sites, pools, batch_size=4, block_size=6))[0]
    for s in sites:
        torch.testing.assert_close(b[s], a[s], rtol=4 * F32, atol=4 * F32 * float(a[s].abs().max()))


def test_hooks_write_and_leave_no_trace_on_a_split_model(split):
    whole, spread = split
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    steer = {"blocks.1-3.hook_resid_mid": add(v, strength=3.0, positions="last")}
    with torch.no_grad():
        before = spread.logits(CORPUS[:3])
        with no_hooks_left(spread.model):
            with spread.hooks(steer):
                got = spread.logits(CORPUS[:3])
        with whole.hooks(steer):
            want = whole.logits(CORPUS[:3])
        after = spread.logits(CORPUS[:3])
    assert torch.equal(after, before)
    assert not torch.allclose(got, before)
    torch.testing.assert_close(got, want, rtol=4 * F32, atol=4 * F32 * float(want.abs().max()))


def test_bad_placement_options():
    assert parse_max_memory("0=20GiB, cpu=64GiB") == {0: "20GiB", "cpu": "64GiB"}
    with pytest.raises(PlacementError, match="DEVICE=SIZE"):
        parse_max_memory("20GiB")
    with pytest.raises(PlacementError, match="need --device-map"):
        load_model("smollm2-135m", max_memory="cpu=1GiB")
    with pytest.raises(PlacementError, match="choose auto"):
        load_model("smollm2-135m", device_map="everywhere")
