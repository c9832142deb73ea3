"""Pure 2-D Gaussian-mixture maths for the `toy2d` base and the `toy-tilt` suite.

Everything here is closed form (METHODS.md section 8):
- `Mixture`: weights (K,), means (K, 2), covariances (K, 2, 2); log density, sampling,
  responsibilities, and the noised marginal of the flow `x_sigma = (1-sigma) x0 + sigma eps`.
- `mixture_velocity`: the exact flow velocity E[eps - x0 | x_sigma] of a mixture teacher.
- `tilt_mixture`: the mixture p(x) exp((-x^T A x / 2 + b^T x) / beta), normalised, which is
  again a Gaussian mixture (the exact reward-tilted target for quadratic/linear rewards).
- `GridTarget`: the tilted target on a fine grid when the reward has no closed form.

Computations run in float64: they define ground truth, and the tilted normalisers involve
exponentials of O(|a|^2 / beta^2) that lose digits in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from rtdmd_bench.errors import UserError

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------- 2x2 linear algebra
def det2(m: Tensor) -> Tensor:
    """(..., 2, 2) -> (...,) determinant."""
    return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]


def inv2(m: Tensor) -> Tensor:
    """(..., 2, 2) -> (..., 2, 2) inverse by the adjugate (batched, differentiable, cheap)."""
    adj = torch.stack([torch.stack([m[..., 1, 1], -m[..., 0, 1]], -1),
                       torch.stack([-m[..., 1, 0], m[..., 0, 0]], -1)], -2)
    return adj / det2(m)[..., None, None]


def matvec(m: Tensor, v: Tensor) -> Tensor:
    """(..., 2, 2) @ (..., 2) -> (..., 2)."""
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def gaussian_log_prob(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x; mean, cov) for 2-D points. x (N, 2), mean (K, 2), cov (K, 2, 2) -> (N, K)."""
    d = x[:, None, :] - mean[None]  # (N, K, 2)
    prec = inv2(cov)  # (K, 2, 2)
    maha = torch.einsum("nki,kij,nkj->nk", d, prec, d)
    return -0.5 * maha - 0.5 * torch.log(det2(cov))[None] - LOG_2PI


# ---------------------------------------------------------------- the mixture
@dataclass
class Mixture:
    """A 2-D Gaussian mixture; tensors are float64."""

    weights: Tensor  # (K,) sums to 1
    means: Tensor  # (K, 2)
    covs: Tensor  # (K, 2, 2) symmetric positive definite

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        k = self.weights.shape[0]
        if self.means.shape != (k, 2) or self.covs.shape != (k, 2, 2):
            raise ValueError(f"mixture shapes disagree: weights {tuple(self.weights.shape)}, "
                             f"means {tuple(self.means.shape)}, covs {tuple(self.covs.shape)}")
        self.chol = torch.linalg.cholesky(self.covs)  # (K, 2, 2), reused by every `sample`

    @property
    def num_components(self) -> int:
        return int(self.weights.shape[0])

    def component_log_prob(self, x: Tensor) -> Tensor:
        """(N, 2) -> (N, K): log pi_k + log N(x; mu_k, Sigma_k)."""
        x = x.to(torch.float64)
        return torch.log(self.weights)[None] + gaussian_log_prob(x, self.means, self.covs)

    def log_prob(self, x: Tensor) -> Tensor:
        """(N, 2) -> (N,) log density."""
        return torch.logsumexp(self.component_log_prob(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """(N, 2) -> (N, K) posterior component probabilities."""
        return torch.softmax(self.component_log_prob(x), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, 2) exact samples (float64): component by its weight, then mu + L z."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.means[comp] + matvec(self.chol[comp], z)

    def noised(self, sigma: float) -> "Mixture":
        """Marginal of x_sigma = (1-sigma) x0 + sigma eps: means (1-s) mu, covs (1-s)^2 S + s^2 I."""
        eye = torch.eye(2, dtype=torch.float64)
        return Mixture(self.weights, (1 - sigma) * self.means,
                       (1 - sigma) ** 2 * self.covs + sigma ** 2 * eye)

    def subset(self, idx: list[int], base_weights: Tensor | None = None) -> "Mixture":
        """The components `idx`, weights renormalised."""
        w = (self.weights if base_weights is None else base_weights)[idx]
        return Mixture(w / w.sum(), self.means[idx], self.covs[idx])

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covs.tolist()}


# ---------------------------------------------------------------- exact velocity
def mixture_velocity(mix: Mixture, x: Tensor, sigma: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """Exact E[eps - x0 | x_sigma = x] for x0 ~ mix. x (B, 2), sigma (B,) -> (B, 2), float64.

    `log_weights` (B, K) optionally replaces log(mix.weights) per sample (-inf drops a component):
    one batched call serves samples of different prompts with a cost independent of which
    prompts they are (so the compute meter's per-shape cost is exact).

    Per component k (x0 ~ N(mu, S), eps ~ N(0, I)), (x0, eps, x) are jointly Gaussian with
    Cov(x) = C = (1-s)^2 S + s^2 I, so with d = x - (1-s) mu:
        E[eps | x, k] = s C^-1 d,   E[x0 | x, k] = mu + (1-s) S C^-1 d,
        E[v | x, k]   = (s I - (1-s) S) C^-1 d - mu.
    This equals the textbook (x - E[x0|x]) / sigma (METHODS.md section 8) but never divides
    by sigma: C is positive definite on all of [0, 1] (C = S at sigma = 0, I at sigma = 1),
    so no clamping is needed near sigma -> 0. The mixture velocity weights the component
    velocities by the posterior responsibilities under the noised mixture."""
    x = x.to(torch.float64)
    s = sigma.to(torch.float64).reshape(-1)[:, None, None, None]  # (B, 1, 1, 1)
    eye = torch.eye(2, dtype=torch.float64)
    cov = mix.covs[None]  # (1, K, 2, 2)
    c = (1 - s) ** 2 * cov + s ** 2 * eye  # (B, K, 2, 2)
    c_inv = inv2(c)
    d = x[:, None, :] - (1 - s[..., 0]) * mix.means[None]  # (B, K, 2)
    c_inv_d = matvec(c_inv, d)  # (B, K, 2)
    maha = (d * c_inv_d).sum(-1)  # (B, K)
    log_w = torch.log(mix.weights)[None] if log_weights is None else log_weights.to(torch.float64)
    log_post = log_w - 0.5 * maha - 0.5 * torch.log(det2(c))
    resp = torch.softmax(log_post, dim=-1)  # (B, K)
    v_k = matvec(s * eye - (1 - s) * cov, c_inv_d) - mix.means[None]  # (B, K, 2)
    return (resp[..., None] * v_k).sum(1)


# ---------------------------------------------------------------- exact tilt
def tilt_mixture(mix: Mixture, a_mat: Tensor, b_vec: Tensor, beta: float) -> Mixture:
    """Normalised p(x) exp(r(x)/beta) for r(x) = -x^T A x / 2 + b^T x (+ const).

    Per component N(mu, S) with precision P = S^-1:
      precision  P' = P + A/beta,  natural mean h' = P mu + b/beta,  mean m' = P'^-1 h',
      normaliser Z_k = int N(x; mu, S) exp(-x^T A x/(2 beta) + b^T x/beta) dx
                 = |S|^-1/2 |P'|^-1/2 exp(h'^T m'/2 - mu^T P mu/2),
      weight     pi'_k ∝ pi_k Z_k.
    For A = 0 this gives m' = mu + S b/beta and log Z_k = b^T mu/beta + b^T S b/(2 beta^2)
    (METHODS.md section 8, linear case)."""
    a_mat = torch.as_tensor(a_mat, dtype=torch.float64)
    b_vec = torch.as_tensor(b_vec, dtype=torch.float64)
    a_mat = 0.5 * (a_mat + a_mat.T)
    prec = inv2(mix.covs)  # (K, 2, 2)
    prec_t = prec + a_mat[None] / beta
    if not bool((torch.linalg.eigvalsh(prec_t) > 0).all()):
        raise UserError("the reward tilt makes a component non-normalisable (Sigma^-1 + A/beta is "
                        "not positive definite): use a quadratic reward with Q >= 0 or a larger beta")
    h = matvec(prec, mix.means) + b_vec[None] / beta  # (K, 2)
    cov_t = inv2(prec_t)
    mean_t = matvec(cov_t, h)
    log_z = (-0.5 * torch.log(det2(mix.covs)) - 0.5 * torch.log(det2(prec_t))
             + 0.5 * (h * mean_t).sum(-1) - 0.5 * (mix.means * matvec(prec, mix.means)).sum(-1))
    log_w = torch.log(mix.weights) + log_z
    return Mixture(torch.softmax(log_w, 0), mean_t, 0.5 * (cov_t + cov_t.transpose(-1, -2)))


# ---------------------------------------------------------------- numerical target
class GridTarget:
    """p*(x) ∝ p(x) exp(r(x)/beta) for any reward, normalised by quadrature on a fine grid.

    `log_prob` is the exact unnormalised log density minus the quadrature log normaliser (no
    interpolation); `sample` picks grid cells by their mass and jitters uniformly within the
    cell (error at most half a cell, far below the mixture std at the default resolution).
    Component weights for mode-mass metrics are the tilted masses of the teacher components,
    int pi_k N_k(x) exp(r/beta) dx / Z, whose responsibilities equal the teacher's."""

    label = "numerical-grid"

    def __init__(self, teacher: Mixture, log_tilt: Callable[[Tensor], Tensor], lo: Tensor,
                 hi: Tensor, resolution: int) -> None:
        self.teacher, self.log_tilt = teacher, log_tilt
        self.lo, self.hi, self.resolution = lo.to(torch.float64), hi.to(torch.float64), resolution
        self.cell = (self.hi - self.lo) / resolution  # (2,) cell widths
        centres = self.grid_centres()  # (R*R, 2)
        comp = teacher.component_log_prob(centres) + log_tilt(centres)[:, None]  # (R*R, K)
        log_area = torch.log(self.cell).sum()
        self.log_norm = float(torch.logsumexp(comp.flatten(), 0) + log_area)
        self.weights = torch.softmax(torch.logsumexp(comp, 0), 0)  # (K,)
        self.cell_probs = torch.softmax(torch.logsumexp(comp, 1), 0)  # (R*R,)

    def grid_centres(self) -> Tensor:
        r = self.resolution
        ax = [self.lo[i] + (torch.arange(r, dtype=torch.float64) + 0.5) * self.cell[i] for i in range(2)]
        gx, gy = torch.meshgrid(ax[0], ax[1], indexing="ij")
        return torch.stack([gx.flatten(), gy.flatten()], -1)

    def log_prob(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64)
        return self.teacher.log_prob(x) + self.log_tilt(x) - self.log_norm

    def responsibilities(self, x: Tensor) -> Tensor:
        return self.teacher.responsibilities(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.multinomial(self.cell_probs, n, replacement=True, generator=generator)
        jitter = torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5
        return self.grid_centres()[idx] + jitter * self.cell

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "grid_lo": self.lo.tolist(), "grid_hi": self.hi.tolist(),
                "resolution": self.resolution, "log_normaliser": self.log_norm,
                "component_weights": self.weights.tolist()}
