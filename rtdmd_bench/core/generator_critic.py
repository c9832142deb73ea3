"""The trainable state every DMD-family method shares (METHODS.md section 2): a few-step generator
(student) and a fake score (critic), their AdamW optimisers, the generator EMA, the student's
schedule and the teacher's guidance scale, plus DMD2's backward-simulation sampler.

Composed by methods (`self.nets = GeneratorCritic(cfg, base)`), never inherited from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
from torch import Tensor

from rtdmd_bench.core import dmd, optim, sampling, schedules
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.ranges import AdamBeta, NonNegative, PositiveInt, Unit


@dataclass
class GeneratorCriticConfig:
    num_steps: PositiveInt = 4
    """Student sampling steps N (timesteps 1000, 750, 500, 250 before the base's shift)."""
    eta: Unit = 0.9
    """CPS stochasticity eta of the student's rollouts (METHODS.md section 1)."""
    lr_generator: NonNegative = 5e-7
    """AdamW learning rate of the generator (DMD2 official SDXL: 5e-7)."""
    lr_fake: NonNegative = 5e-7
    """AdamW learning rate of the fake score (DMD2 official: same as the generator)."""
    betas: tuple[AdamBeta, AdamBeta] = (0.0, 0.999)
    """AdamW betas (DMD2 official: 0, 0.999)."""
    weight_decay: NonNegative = 0.01
    """AdamW weight decay (DMD2 official: 0.01)."""
    grad_clip: NonNegative = 10.0
    """Gradient-norm clip for both networks (DMD2 official: 10)."""
    num_fake_per_gen: PositiveInt = 5
    """Two-time-scale update rule: fake-score steps per generator step (DMD2: 5)."""
    ema_decay: Unit = 0.99
    """Generator EMA decay; evaluation uses the EMA weights."""
    cfg: float | None = None
    """Teacher guidance scale in the DM term; None = the base's default."""
    fake_step_conditioning: bool = False
    """Ablation: give the fake score the index of the sampler step whose output it models (off in
    the papers; on toy2d it stops one fake score from learning the mix of every step's outputs)."""
    t_min: Unit = 0.02
    """Lowest DM / fake-score noise level."""
    t_max: Unit = 0.98
    """Highest DM / fake-score noise level."""


@dataclass
class DMDConfig(GeneratorCriticConfig):
    dm_normalize: Literal["mean_abs", "none"] = "mean_abs"
    """Per-sample normalisation of the DMD gradient (METHODS.md section 2)."""
    backward_simulation: bool = True
    """Random-stop rollout (k ~ U{1..N}, gradient through step k only); False always runs all N."""


class GeneratorCritic:
    """Student + fake score with their optimisers and the generator EMA."""

    def __init__(self, cfg: GeneratorCriticConfig, base: Any) -> None:
        self.cfg, self.base = cfg, base
        self.student_params = base.trainable("student")
        self.fake_params = base.trainable("fake")
        self.opt_g = optim.adamw(self.student_params, cfg.lr_generator, cfg.betas, cfg.weight_decay)
        self.opt_f = optim.adamw(self.fake_params, cfg.lr_fake, cfg.betas, cfg.weight_decay)
        self.ema = EMA(self.student_params, cfg.ema_decay)
        self.sigmas = base.sigmas(cfg.num_steps)  # (N + 1,)
        self.guidance = base.default_cfg if cfg.cfg is None else cfg.cfg

    def backward_simulation(self, cond: Any, n: int, gen: BatchRandom, grad: bool) -> tuple[Tensor, int]:
        """DMD2's backward simulation: k ~ U{1..N} steps (all N without it), gradient only through
        step k; returns (x0-prediction of step k (n, ...), step index k - 1)."""
        full = not getattr(self.cfg, "backward_simulation", True)
        k = self.cfg.num_steps if full else gen.integer(1, self.cfg.num_steps + 1)
        noise = gen.randn((n, *self.base.latent_shape))
        velocity = sampling.base_velocity(self.base, "student", cond)
        with torch.set_grad_enabled(grad):
            r = sampling.rollout(velocity, noise, self.sigmas, self.cfg.eta,
                                 lambda j: gen.randn(noise.shape), num_steps=k)
            return sampling.x0_of_last_step(r, self.sigmas), k - 1

    def fake_velocity(self, x: Tensor, t: Tensor, cond: Any, step_index: int) -> Tensor:
        """Fake score at (x, t); told the sampler step only under `fake_step_conditioning`."""
        step = torch.full((x.shape[0],), step_index, dtype=torch.long) if self.cfg.fake_step_conditioning else None
        return self.base.velocity("fake", x, t, cond, step=step)

    def dm_loss(self, x0: Tensor, t: Tensor, cond: Any, step_index: int, gen: BatchRandom) -> Tensor:
        """DMD2's generator loss at noise levels t (B,): teacher (CFG) and fake x0-predictions at
        x_t, g = normalised difference, loss 0.5 MSE(x0, sg(x0 - g))."""
        x_t = sampling.add_noise(x0.detach(), gen.randn(x0.shape), t)
        with torch.no_grad():
            x0_real = sampling.x0_from_velocity(x_t, t, self.base.velocity("teacher", x_t, t, cond, cfg=self.guidance))
            x0_fake = sampling.x0_from_velocity(x_t, t, self.fake_velocity(x_t, t, cond, step_index))
        g = dmd.dmd_gradient(x0.detach(), x0_fake, x0_real, getattr(self.cfg, "dm_normalize", "mean_abs"))
        return dmd.dmd_generator_loss(x0, g)

    def fake_score_loss(self, x0: Tensor, cond: Any, step_index: int, gen: BatchRandom) -> Tensor:
        """Flow matching of the fake score on (detached) generator samples at t ~ U(t_min, t_max):
        the fake score tracks p_theta."""
        x0 = x0.detach()
        t = schedules.uniform_sigma(x0.shape[0], gen, self.cfg.t_min, self.cfg.t_max)
        noise = gen.randn(x0.shape)
        v = self.fake_velocity(sampling.add_noise(x0, noise, t), t, cond, step_index)
        return dmd.flow_matching_loss(v, x0, noise)

    def generator_step(self, losses: Tensor | Iterable[Tensor], count: int, step: int, name: str
                       ) -> tuple[float, float]:
        """One guarded generator optimiser step on one loss or `count` micro-batch losses (lazy),
        then the EMA; returns (mean loss, gradient norm)."""
        losses = [losses] if isinstance(losses, Tensor) else losses
        out = optim.accumulated_step(self.opt_g, losses, count, self.student_params, self.cfg.grad_clip, step, name)
        self.ema.update()
        return out

    def fake_step(self, losses: Tensor | Iterable[Tensor], count: int, step: int, name: str = "loss_fake") -> float:
        """One fake-score optimiser step on one loss or `count` micro-batch losses; the mean loss."""
        losses = [losses] if isinstance(losses, Tensor) else losses
        return optim.accumulated_step(self.opt_f, losses, count, self.fake_params, self.cfg.grad_clip, step, name)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.base.state_dict("student"), "fake": self.base.state_dict("fake"),
                "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_f": self.opt_f.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict("student", state["student"])
        self.base.load_state_dict("fake", state["fake"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_f.load_state_dict(state["opt_f"])
