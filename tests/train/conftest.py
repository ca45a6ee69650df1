"""Training tests run single-threaded: on a busy 2-core machine OpenMP threads oversubscribe
the cores and slow torch down by an order of magnitude."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
