"""Intra-op threading for tiny networks (toy2d MLPs, the digits networks, 2-D estimators)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny tensor work on one intra-op thread, then restore the setting (also usable as a
    decorator: `@single_thread()`).

    On a shared CPU, thread synchronisation for (512, 128) matmuls costs far more than the maths
    (measured: 16 ms vs 250 ms per toy2d fit step under load; digits training 10-20x slower), and
    one thread makes results bitwise reproducible across machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
