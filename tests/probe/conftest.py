"""Fixtures for the probe tests."""

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture()
def one_thread():
    """Tiny solves on a shared machine: 2 busy-waiting threads can be 5x slower than 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)
