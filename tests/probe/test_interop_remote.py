"""nnsight's remote (NDIF) path of probe.interop, tested up to the network call.

NDIF cannot be reached from here. ``remote="local"`` is nnsight's own dry run of the remote
path (the trace serialized, deserialized with local modules hidden as on the server, then run);
a fake backend stands in for NDIF behind ``remote=True``.
"""

import copy

import pytest
import torch

nnsight = pytest.importorskip("nnsight")

from probe.capture import CaptureError  # noqa: E402
from probe.interop import capture_with_nnsight  # noqa: E402
from probe.sites import parse_sites  # noqa: E402
from probe.tokens import encode  # noqa: E402
from tests.tiny import CORPUS  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def setup(tiny_dir, tiny_llama):
    enc = encode(tiny_llama.tokenizer, CORPUS[:3], chat_template=True)
    sites = parse_sites("blocks.0-1.hook_resid_post blocks.1.attn.hook_z[2]", n_layers=3)
    here = capture_with_nnsight(tiny_llama, enc, sites, ["last", "content-mean"])
    return enc, sites, here


def lazy(tiny_dir, tiny_llama):
    """What ndif_model gives: an nnsight model of a checkpoint id whose weights are not loaded."""
    # a copy: nnsight sets padding_side="left" on the tokenizer it is given, and the session's
    # tiny_llama is shared with every other test module
    return nnsight.TransformersModel(str(tiny_dir / "llama"), tokenizer=copy.deepcopy(tiny_llama.tokenizer),
                                     task="text-generation")


def test_dry_run_of_the_remote_path_equals_local_capture(tiny_dir, tiny_llama, setup):
    enc, sites, here = setup
    model = lazy(tiny_dir, tiny_llama)
    got = capture_with_nnsight(model, enc, sites, ["last", "content-mean"], remote="local")
    for s in sites:
        assert torch.equal(got[s], here[s]), s


def test_remote_true_ships_the_trace_to_the_backend(tiny_dir, tiny_llama, setup, monkeypatch):
    from nnsight.intervention.backends.local import LocalSimulationBackend
    from nnsight.schema.request import RequestModel

    enc, sites, here = setup
    model = lazy(tiny_dir, tiny_llama)
    shipped = []

    class FakeNDIF(LocalSimulationBackend):
        def __call__(self, tracer):
            shipped.append(RequestModel.serialize(tracer, compress=False))
            return super().__call__(tracer)

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "test-key")
    monkeypatch.setattr(type(model), "_remote_backend",
                        lambda self, remote, *a: FakeNDIF(self), raising=True)
    assert not getattr(model, "dispatched", False)
    got = capture_with_nnsight(model, enc, sites, ["last", "content-mean"], remote=True)
    assert len(shipped) == 1 and len(shipped[0]) > 1000
    for s in sites:
        assert torch.equal(got[s], here[s]), s


def test_remote_needs_an_nnsight_model_and_a_key(tiny_dir, tiny_llama, setup, monkeypatch):
    enc, sites, _ = setup
    with pytest.raises(CaptureError, match="needs an nnsight model"):
        capture_with_nnsight(tiny_llama, enc, sites, remote=True)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(CaptureError, match="NDIF_API_KEY"):
        capture_with_nnsight(lazy(tiny_dir, tiny_llama), enc, sites, remote=True)
