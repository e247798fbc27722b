import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Keep the suite fast and reproducible on 2-core CI machines. Under pytest-xdist (the README's
# `-n 2`) every worker gets one intra-op thread: two workers with two OpenMP threads each on
# two cores oversubscribe them, and each OpenMP barrier then waits for a descheduled thread.
# On the many small ops of these tests that made single tests 30-70x slower (whole suite
# 120 s -> 580-920 s, measured).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))


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
