"""Analytic rewards on the 2-D points of the `toy2d` base.

Both are differentiable torch functions of the sample (prompts are ignored). The toy-tilt
suite builds the exact tilted target p* ∝ p_teacher exp(r/beta) (METHODS.md section 8) from
`quadratic_form()`: when a reward is exactly r(x) = -x^T A x / 2 + b^T x + const it returns
(A, b), and the target is a Gaussian mixture in closed form; otherwise it returns None and
the suite falls back, visibly labelled `numerical-grid`, to quadrature on a grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rtdmd_bench.errors import UserError


def _vector(values: tuple[float, ...], field: str) -> Tensor:
    if len(values) != 2:
        raise UserError(f"{field} must have 2 entries (a 2-D vector), got {len(values)}: {values}")
    return torch.tensor(values, dtype=torch.float64)


def _check_points(images: Tensor, name: str) -> None:
    if images.ndim != 2 or images.shape[-1] != 2:
        raise UserError(f"reward {name!r} scores 2-D points (B, 2) from the toy2d base; got shape "
                        f"{tuple(images.shape)}: use it only with --base toy2d or toy2d-hard")


class QuadraticReward:
    """r(x) = -(x - c)^T Q (x - c) / 2: a bowl around c, bounded above by 0."""

    name = "toy-quadratic"
    differentiable = True

    @dataclass
    class Config:
        centre: tuple[float, ...] = (4.0, 0.0)
        """c, the point the reward prefers (default: on the ring, between the two right modes)."""
        q: tuple[float, ...] = (0.5, 0.5)
        """Q: 2 entries = its diagonal, 4 = the full matrix row-major (symmetrised); Q >= 0."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or self.Config()
        self.centre = _vector(self.cfg.centre, "toy-quadratic centre")
        if len(self.cfg.q) == 2:
            q = torch.diag(torch.tensor(self.cfg.q, dtype=torch.float64))
        elif len(self.cfg.q) == 4:
            q = torch.tensor(self.cfg.q, dtype=torch.float64).reshape(2, 2)
        else:
            raise UserError(f"toy-quadratic q must have 2 (diagonal) or 4 (full 2x2) entries, got {self.cfg.q}")
        self.q = 0.5 * (q + q.T)
        if float(torch.linalg.eigvalsh(self.q).min()) < 0:
            raise UserError(f"toy-quadratic q={self.cfg.q} is not positive semi-definite; the reward "
                            "must be bounded above (use non-negative eigenvalues)")

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B, 2) -> (B,)
        _check_points(images, self.name)
        d = images - self.centre.to(images)  # (B, 2)
        return -0.5 * (d @ self.q.to(images) * d).sum(-1)

    def quadratic_form(self) -> tuple[Tensor, Tensor]:
        """(A, b) with r(x) = -x^T A x / 2 + b^T x + const: A = Q, b = Q c."""
        return self.q.clone(), self.q @ self.centre


class CappedLinearReward:
    """r(x) = min(a^T x, cap): a linear preference with a ceiling, so it is bounded above.

    The cap makes the tilt non-Gaussian, so the toy-tilt target is computed on a grid."""

    name = "toy-linear"
    differentiable = True

    @dataclass
    class Config:
        a: tuple[float, ...] = (1.0, 0.0)
        """The direction (and strength) of the preference, a 2-D vector."""
        cap: float = 3.0
        """Ceiling of a^T x; must be finite (an uncapped linear reward is unbounded)."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or self.Config()
        self.a = _vector(self.cfg.a, "toy-linear a")
        if not torch.isfinite(torch.tensor(self.cfg.cap)):
            raise UserError("toy-linear cap must be finite; for an exact Gaussian tilt use "
                            "toy-quadratic instead")

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B, 2) -> (B,)
        _check_points(images, self.name)
        return torch.clamp(images @ self.a.to(images), max=self.cfg.cap)

    def quadratic_form(self) -> None:
        """Not a quadratic: the cap has no closed-form tilt."""
        return None
