"""Each pooling is one function of a row's token layout; a registered one works everywhere."""

from __future__ import annotations

import pytest
import torch

from probe.capture import CaptureError, check_poolings, pooling_weights
from probe.modality import MODALITY_CODES, POOLING_MODALITY
from probe.pooling import POOLING_FUNCTIONS, RowTokens, register_pooling

IMAGE, TEXT = MODALITY_CODES["image"], MODALITY_CODES["text"]
ROW = RowTokens(length=6, content=(3, 5), target=4,
                codes=torch.tensor([TEXT, IMAGE, IMAGE, TEXT, TEXT, TEXT]))
EXPECTED = {  # which tokens each pooling reads, equally weighted
    "last": [5], "mean": [0, 1, 2, 3, 4, 5], "content-mean": [3, 4], "content-last": [4],
    "token": [4], "image-mean": [1, 2], "text-mean": [0, 3, 4, 5], "text-last": [5],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_poolings_read_their_tokens(name):
    w = POOLING_FUNCTIONS[name](ROW)
    where = EXPECTED[name]
    assert w.shape == (ROW.length,) and torch.nonzero(w).flatten().tolist() == where
    torch.testing.assert_close(w[where], torch.full((len(where),), 1.0 / len(where)))


def test_a_registered_pooling_goes_through_capture(monkeypatch):
    monkeypatch.setitem(POOLING_FUNCTIONS, "first", None)  # restored after the test
    monkeypatch.setitem(POOLING_MODALITY, "first", None)
    register_pooling("first", lambda row: torch.eye(row.length)[0])
    assert check_poolings(["first", "last"]) == ("first", "last")
    w = pooling_weights([2, 3], [(0, 2), (1, 3)], [None, None], ["first", "last"], width=3,
                        padding_side="left")
    assert w[:, 0].tolist() == [[0, 1, 0], [1, 0, 0]]  # row 0 is left-padded by one
    assert w[:, 1].tolist() == [[0, 0, 1], [0, 0, 1]]
    with pytest.raises(CaptureError, match="unknown pooling 'firts'.*first"):
        check_poolings(["firts"])


def test_a_pooling_reads_a_known_modality():
    with pytest.raises(ValueError, match="modality 'pixels'"):
        register_pooling("odd", lambda row: torch.ones(row.length), modality="pixels")
    assert "odd" not in POOLING_FUNCTIONS
