import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Keep the suite fast and reproducible on 2-core CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (much faster than 2 on shared CI cores); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
