"""Noise schedules (METHODS.md section 1).

sigma in [0, 1], sigma = 1 is pure noise. SD3/SD3.5 use a constant shift s (=3); FLUX uses the
resolution-dependent dynamic shift of diffusers' FlowMatchEulerDiscreteScheduler.

Two families of schedules live here: the student's few-step formula (`few_step_sigmas`, RTDMD's
`denoising_step_list` [1000, 750, 500, 250] shifted) and the teacher's multi-step schedule, which is
what diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps` gives for a base's published
scheduler config (`scheduler_sigmas`; RTDMD's "normal" inference mode and the diffusers pipelines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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


@dataclass(frozen=True)
class FlowMatchSchedulerConfig:
    """The fields of a diffusers `FlowMatchEulerDiscreteScheduler` config (a hub repository's
    `scheduler/scheduler_config.json`) that decide its sigmas. Names and defaults are diffusers'
    constructor arguments, so `FlowMatchEulerDiscreteScheduler(**dataclasses.asdict(cfg))` is the
    same scheduler. Options the suite does not model (Karras/exponential/beta sigmas, shift_terminal,
    inverted sigmas, stochastic sampling) are absent: no published config of a supported base sets them."""

    num_train_timesteps: int = 1000
    """Training timesteps T; the training grid is t = T, T-1, ..., 1 (sigma = t / T)."""
    shift: float = 1.0
    """Constant shift s (SD3/SD3.5: 3.0); unused when `use_dynamic_shifting`."""
    use_dynamic_shifting: bool = False
    """Shift by exp(mu) given at `set_timesteps` time (FLUX.1, FLUX.2) instead of by `shift`."""
    base_shift: float = 0.5
    """mu at `base_image_seq_len` tokens (FLUX.1's `calculate_shift`; FLUX.2-klein ignores it)."""
    max_shift: float = 1.15
    """mu at `max_image_seq_len` tokens."""
    base_image_seq_len: int = 256
    """Token count of `base_shift`."""
    max_image_seq_len: int = 4096
    """Token count of `max_shift`."""
    time_shift_type: Literal["exponential", "linear"] = "exponential"
    """Dynamic shift: exponential e^mu / (e^mu + 1/sigma - 1), or linear mu / (mu + 1/sigma - 1)."""


Spacing = Literal["scheduler", "uniform"]


def scheduler_sigmas(num_steps: int, cfg: FlowMatchSchedulerConfig, mu: float | None = None,
                     spacing: Spacing = "scheduler") -> Tensor:
    """(num_steps + 1,) descending sigmas of diffusers' `FlowMatchEulerDiscreteScheduler` after
    `set_timesteps`, with its final 0 appended.

    `spacing="scheduler"`: `set_timesteps(num_steps, mu=mu)` with no sigmas (RTDMD's normal mode,
    StableDiffusion3Pipeline): num_steps points evenly spaced between the ends of the training grid,
    sigma 1 and the grid's smallest sigma (1/T, after the constant shift when there is one), then
    shifted. The constant shift is thus applied twice to the last point: on SD3 (s=3, T=1000) the
    last non-zero sigma is 0.0089 for every N.
    `spacing="uniform"`: `set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)`, what FluxPipeline and
    Flux2KleinPipeline pass, then shifted."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if cfg.use_dynamic_shifting and mu is None:
        raise ValueError("a dynamically shifted scheduler needs mu (the base computes it from its token count)")
    smallest = 1.0 / cfg.num_train_timesteps  # the training grid's last sigma, t = 1
    if not cfg.use_dynamic_shifting:  # diffusers shifts the grid at construction, then again below
        smallest = cfg.shift * smallest / (1.0 + (cfg.shift - 1.0) * smallest)
    end = smallest if spacing == "scheduler" else 1.0 / num_steps
    raw = torch.linspace(1.0, end, num_steps, dtype=torch.float64)  # (N,) before shifting
    if not cfg.use_dynamic_shifting:
        sig = shift_sigma(raw, cfg.shift)
    elif cfg.time_shift_type == "exponential":
        sig = dynamic_shift_sigma(raw, mu)
    else:  # linear: mu / (mu + 1/sigma - 1)
        sig = mu / (mu + 1.0 / raw - 1.0)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float()


def scheduler_config_differences(published: dict, recorded: FlowMatchSchedulerConfig) -> list[str]:
    """'key: published != recorded' for every schedule-deciding key of a `scheduler_config.json`
    (as a dict) that disagrees with the recorded config, including options the suite does not model
    when they are switched on. Keys the file omits take diffusers' defaults."""
    defaults = FlowMatchSchedulerConfig()
    out = []
    for name in FlowMatchSchedulerConfig.__dataclass_fields__:
        value = published.get(name, getattr(defaults, name))
        if value != getattr(recorded, name):
            out.append(f"{name}: {value!r} != {getattr(recorded, name)!r}")
    for name in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                 "shift_terminal", "stochastic_sampling"):
        if published.get(name):
            out.append(f"{name}: {published[name]!r} (not modelled by the suite)")
    return out


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
