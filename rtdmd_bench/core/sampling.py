"""Few-step sampling: the CPS transition, its log-probabilities, forward re-noising, rollouts.

METHODS.md section 1. Flow convention: x_sigma = (1-sigma) x0 + sigma eps, v ~ eps - x0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

LogProbMode = Literal["exact", "cps_simplified"]


def _bcast(s: Tensor | float, like: Tensor) -> Tensor:
    """(B,) or scalar -> (B, 1, ..., 1) broadcastable against `like` (B, ...)."""
    s = torch.as_tensor(s, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        return s
    return s.view(-1, *([1] * (like.ndim - 1)))


def x0_from_velocity(x: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
    """x0_hat = x - sigma v.  x, v: (B, ...); sigma: (B,) or scalar."""
    return x - _bcast(sigma, x) * v


def eps_from_velocity(x: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
    """eps_hat = x + (1 - sigma) v."""
    return x + (1 - _bcast(sigma, x)) * v


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * noise


def cps_mean_std(x: Tensor, sigma: Tensor | float, v: Tensor, sigma_next: Tensor | float,
                 eta: float) -> tuple[Tensor, Tensor]:
    """Mean and std of the CPS transition sigma -> sigma_next (coefficient-preserving sampler).

    mu = (1-s') x0_hat + s' cos(eta pi/2) eps_hat;  std = s' sin(eta pi/2).
    Returns mu (B, ...) and std broadcastable to it."""
    x0_hat = x0_from_velocity(x, sigma, v)
    eps_hat = eps_from_velocity(x, sigma, v)
    sn = _bcast(sigma_next, x)
    c = math.cos(eta * math.pi / 2)
    mean = (1 - sn) * x0_hat + sn * c * eps_hat
    std = sn * math.sin(eta * math.pi / 2)
    return mean, std


def cps_step(x: Tensor, sigma: Tensor | float, v: Tensor, sigma_next: Tensor | float, eta: float,
             noise: Tensor | None) -> Tensor:
    """One CPS move: x' = mu + std z. With sigma_next = 0 it returns x0_hat exactly (std = 0).

    `noise` z ~ N(0, I) (B, ...); None means the deterministic move (z = 0)."""
    mean, std = cps_mean_std(x, sigma, v, sigma_next, eta)
    if noise is None:
        return mean
    return mean + std * noise


def cps_log_prob(x_next: Tensor, mean: Tensor, std: Tensor, mode: LogProbMode) -> Tensor:
    """(B,) log-probability of x_next under the CPS Gaussian.

    `exact`: sum over dimensions of the Gaussian log density.
    `cps_simplified`: -mean((x' - mu)^2) over dimensions, what the official RTDMD code uses; it
    drops the std and the normaliser, so ratios exp(logp - logp_old) differ from the exact ones
    (that is the point of the switch)."""
    diff = (x_next - mean).flatten(1)  # (B, D)
    if mode == "cps_simplified":
        return -(diff ** 2).mean(dim=1)
    if mode == "exact":
        std = torch.as_tensor(std, dtype=x_next.dtype, device=x_next.device)
        std = std.expand_as(x_next).flatten(1) if std.ndim else std.expand_as(diff)
        return (-0.5 * (diff / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=1)
    raise ValueError(f"unknown log-prob mode {mode!r}; valid: exact, cps_simplified")


def renoise_coefficients(s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """Forward re-noising from level s to t > s: x_t = a x_s + b n with a = (1-t)/(1-s),
    b = sqrt(t^2 - a^2 s^2), so that x_t has exactly the marginal (1-t) x0 + t eps."""
    s = torch.as_tensor(s, dtype=torch.float32)
    t = torch.as_tensor(t, dtype=torch.float32)
    a = (1 - t) / (1 - s)
    b = torch.sqrt((t ** 2 - a ** 2 * s ** 2).clamp_min(0.0))
    return a, b


def renoise(x_s: Tensor, s: Tensor | float, t: Tensor | float, noise: Tensor) -> Tensor:
    """x_t = a x_s + b n (METHODS.md section 1). x_s, noise: (B, ...); s, t: (B,) or scalars."""
    a, b = renoise_coefficients(s, t)
    return _bcast(a.to(x_s), x_s) * x_s + _bcast(b.to(x_s), x_s) * noise


VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, sigma (B,), step (B,)) -> v


@dataclass
class Rollout:
    """A few-step trajectory. xs[j] is the state at sigmas[j] (xs[0] the initial noise);
    xs[-1] the final sample. `log_probs[j]` (B,) for the stochastic steps, when requested."""

    xs: list[Tensor]
    velocities: list[Tensor]  # v at (xs[j], sigmas[j])
    means: list[Tensor]
    stds: list[Tensor]
    noises: list[Tensor | None]


def rollout(velocity: VelocityFn, x: Tensor, sigmas: Tensor, eta: float,
            noise_fn: Callable[[int], Tensor | None], num_steps: int | None = None,
            grad_last_only: bool = True) -> Rollout:
    """Run `num_steps` (default all) CPS steps from x at sigmas[0].

    `noise_fn(j)` gives z for step j (None = deterministic); the last step of a full rollout
    (sigma' = 0) is deterministic whatever it returns. With `grad_last_only`, every step but the
    last one run here is computed without grad (backward simulation, DMD2/AC-DMD)."""
    n = len(sigmas) - 1 if num_steps is None else num_steps
    xs, vs, means, stds, noises = [x], [], [], [], []
    b = x.shape[0]
    for j in range(n):
        last = j == n - 1
        sig = sigmas[j].expand(b).to(x)
        sig_next = sigmas[j + 1].expand(b).to(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (last or not grad_last_only)):
            v = velocity(xs[-1], sig, torch.full((b,), j, dtype=torch.long, device=x.device))
            z = noise_fn(j) if float(sigmas[j + 1]) > 0 else None
            mean, std = cps_mean_std(xs[-1], sig, v, sig_next, eta)
            x_next = mean if z is None else mean + std * z
        xs.append(x_next)
        vs.append(v)
        means.append(mean)
        stds.append(torch.as_tensor(std))
        noises.append(z)
    return Rollout(xs, vs, means, stds, noises)


def x0_of_last_step(r: Rollout, sigmas: Tensor) -> Tensor:
    """The x0-prediction of the last step run: x0_hat = x_k - sigma_k v_k (backward simulation's
    generator output in DMD2)."""
    k = len(r.velocities) - 1
    return x0_from_velocity(r.xs[k], sigmas[k].to(r.xs[k]), r.velocities[k])


def sample(velocity: VelocityFn, noise: Tensor, sigmas: Tensor, eta: float,
           generator: torch.Generator | None = None) -> Tensor:
    """A full few-step sample without grad; stochastic CPS noise drawn from `generator`."""
    def noise_fn(j: int) -> Tensor:
        return torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)

    with torch.no_grad():
        return rollout(velocity, noise, sigmas, eta, noise_fn, grad_last_only=True).xs[-1]


def euler_sample(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, sigmas: Tensor) -> Tensor:
    """Deterministic Euler ODE sampler x_{j+1} = x_j + (s_{j+1} - s_j) v (the teacher's own
    multi-step sampler)."""
    x = noise
    with torch.no_grad():
        for j in range(len(sigmas) - 1):
            sig = sigmas[j].expand(x.shape[0]).to(x)
            x = x + (sigmas[j + 1] - sigmas[j]).to(x) * velocity(x, sig)
    return x


def base_velocity(base: Any, role: str, cond: Any, cfg: float | None = None,
                  step_conditioning: bool = False) -> VelocityFn:
    """Adapter: a base role as a VelocityFn for `rollout` (passing the step only when asked)."""
    def fn(x: Tensor, sigma: Tensor, step: Tensor) -> Tensor:
        return base.velocity(role, x, sigma, cond, cfg=cfg, step=step if step_conditioning else None)
    return fn
