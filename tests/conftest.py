"""Shared test settings.

The suite runs on 2 shared cores. Small tensor ops with torch's 2-thread pool stall
whenever the other core is busy, so tests run torch single-threaded.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
