"""Exponential moving average of parameters, with a swap-in context for evaluation."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, every `update()`."""

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, repeats: int = 1) -> None:
        """`repeats` successive updates towards the same parameters (RTDMD's stage-2 EMA wrapper is
        stepped once per gradient-accumulation micro-batch between two optimiser steps)."""
        for _ in range(repeats):
            for s, p in zip(self.shadow, self.params):
                s.lerp_(p.detach(), 1 - self.decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the live parameters."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Tensor]:
        return {f"ema.{i}": s for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(state[f"ema.{i}"])
