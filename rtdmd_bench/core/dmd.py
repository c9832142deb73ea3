"""Distribution matching pieces (METHODS.md sections 2 and 3): the DMD generator gradient and
loss, the fake-score flow-matching loss, AC-DMD's ambient target and consistency regulariser."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from rtdmd_bench.core.sampling import _bcast, cps_step, renoise_coefficients

Normalize = Literal["mean_abs", "none"]


def dmd_gradient(x: Tensor, pred_fake: Tensor, pred_real: Tensor, normalize: Normalize = "mean_abs",
                 eps: float = 1e-8) -> Tensor:
    """DMD2 gradient g = (pred_fake - pred_real) / mean|x - pred_real| (per-sample mean over dims).

    x, pred_*: (B, ...) in the same space (x0 for DMD2; x_s for AC-DMD). `normalize="none"`
    leaves g unnormalised (with a proper time weighting the noise-averaged KL gradient)."""
    g = pred_fake - pred_real
    if normalize == "none":
        return g
    scale = (x - pred_real).abs().flatten(1).mean(dim=1).clamp_min(eps)  # (B,)
    return g / _bcast(scale.detach(), g)


def dmd_generator_loss(x: Tensor, g: Tensor) -> Tensor:
    """0.5 * MSE(x, sg(x - g)); its gradient w.r.t. x is g / numel (DMD2's surrogate)."""
    target = (x - g).detach()
    return 0.5 * ((x - target) ** 2).mean()


def dmd_generator_loss_per_row(x: Tensor, g: Tensor) -> Tensor:
    """(B,) 0.5 * mean_d (x - sg(x - g))^2 per sample; its mean over rows is `dmd_generator_loss`."""
    target = (x - g).detach()
    return 0.5 * ((x - target) ** 2).flatten(1).mean(dim=1)


def flow_matching_loss(v_pred: Tensor, x0: Tensor, noise: Tensor, weight: Tensor | None = None) -> Tensor:
    """Fake-score loss: mean_b w_b * mean_d (v - (noise - x0))^2.  weight: (B,) or None."""
    per = ((v_pred - (noise - x0)) ** 2).flatten(1).mean(dim=1)  # (B,)
    return (per * weight).mean() if weight is not None else per.mean()


def ambient_target(x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """AC-DMD target for the fake score at x_t = a x_s + b n (METHODS.md 3.3):
    v* = -x_s/(1-s) + [(t + (1-t) s^2/(1-s)^2) / b] n.  Unbiased for E[eps - x0 | x_t] when
    x_s ~ the marginal at s; equals n - x0 at s = 0.  x_s, noise: (B, ...); s, t: (B,)."""
    _, b = renoise_coefficients(s, t)
    b = b.to(x_s)
    s, t = s.to(x_s), t.to(x_s)
    coef = (t + (1 - t) * s ** 2 / (1 - s) ** 2) / b
    return -x_s / _bcast(1 - s, x_s) + _bcast(coef, x_s) * noise


def ambient_weight(s: Tensor, t: Tensor, kind: Literal["official", "none"] = "official") -> Tensor:
    """Per-sample weight of the ambient loss: min(1, 10 b^2) (official configs) or 1."""
    _, b = renoise_coefficients(s, t)
    return torch.clamp(10 * b ** 2, max=1.0) if kind == "official" else torch.ones_like(b)


def consistency_loss(h: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor, v_t: Tensor,
                     t_next: Tensor, eta: float, noise1: Tensor, noise2: Tensor) -> Tensor:
    """AC-DMD consistency regulariser (METHODS.md 3.4).

    h(x, t) = x - t v_phi(x, t) is the fake score's x0-prediction. From (x_t, t) two independent
    CPS moves to t_next with the detached velocity v_t give x'_1, x'_2;
    L = mean[(h(x'_1,t') - h(x_t,t)) * (h(x'_2,t') - h(x_t,t))], an unbiased estimate of the
    squared drift of the x0-prediction (a true denoiser is a martingale along the sampler).
    Gradient flows into all three h evaluations."""
    v_t = v_t.detach()
    x1 = cps_step(x_t, t, v_t, t_next, eta, noise1).detach()
    x2 = cps_step(x_t, t, v_t, t_next, eta, noise2).detach()
    h0 = h(x_t, t)
    return ((h(x1, t_next) - h0) * (h(x2, t_next) - h0)).mean()


def shared_noise_cps_pair(x_t: Tensor, t: Tensor, v_real: Tensor, v_fake: Tensor, s: Tensor, eta: float,
                          noise: Tensor) -> tuple[Tensor, Tensor]:
    """Map teacher and fake predictions at (x_t, t) back to level s by one CPS transition each with
    the SAME noise (AC-DMD 3.5), so their difference carries no sampling noise."""
    return (cps_step(x_t, t, v_real, s, eta, noise), cps_step(x_t, t, v_fake, s, eta, noise))
