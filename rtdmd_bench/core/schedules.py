"""Noise schedules (METHODS.md section 1).

sigma in [0, 1], sigma = 1 is pure noise. SD3/SD3.5 use a constant shift s (=3); FLUX uses the
resolution-dependent dynamic shift of diffusers' FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rtdmd_bench.core.parallel import BatchRandom


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """Constant shift: sigma' = s*sigma / (1 + (s-1)*sigma). Fixes 0 and 1; s > 1 moves mass to noise."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def dynamic_shift_sigma(sigma: Tensor, mu: float) -> Tensor:
    """FLUX dynamic shift: sigma' = e^mu / (e^mu + 1/sigma - 1) (the exponential time shift, power 1).

    Equals `shift_sigma(sigma, e^mu)`; sigma = 0 maps to 0."""
    s = math.exp(mu)
    return shift_sigma(sigma, s)


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """mu interpolated linearly in the image token count (diffusers' `calculate_shift`)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def few_step_sigmas(num_steps: int, shift: float = 1.0, mu: float | None = None) -> Tensor:
    """Student schedule: timesteps 1000, 1000-1000/N, ... (N of them) -> sigma = t/1000, shifted,
    then a final 0.  (num_steps + 1,), descending.

    For N=4, shift 3: [1.0, 0.9, 0.75, 0.5, 0.0] (METHODS.md section 1)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    base = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps  # (N,) 1 .. 1/N
    sig = dynamic_shift_sigma(base, mu) if mu is not None else shift_sigma(base, shift)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float()


def _draw(kind: str, n: int, generator: torch.Generator | BatchRandom | None, device: torch.device | str) -> Tensor:
    """(n,) normal or uniform draws from a plain generator or a training step's BatchRandom
    (whose n is this rank's rows)."""
    if isinstance(generator, BatchRandom):
        return (generator.randn((n,)) if kind == "normal" else generator.rand((n,))).to(device)
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(n, generator=generator, device=device)


def logit_normal_sigma(n: int, generator: torch.Generator | BatchRandom | None = None, mean: float = 0.0,
                       std: float = 1.0, lo: float = 0.02, hi: float = 0.98,
                       device: torch.device | str = "cpu") -> Tensor:
    """(n,) sigma = sigmoid(N(mean, std)) clamped to [lo, hi] (official fake-score timesteps)."""
    z = _draw("normal", n, generator, device) * std + mean
    return torch.sigmoid(z).clamp(lo, hi)


def uniform_sigma(n: int, generator: torch.Generator | BatchRandom | None = None, lo: float = 0.02,
                  hi: float = 0.98, device: torch.device | str = "cpu") -> Tensor:
    """(n,) sigma ~ U(lo, hi)."""
    return lo + (hi - lo) * _draw("uniform", n, generator, device)
