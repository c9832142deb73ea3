"""DMD2: distribution matching distillation with a two-time-scale fake score.

Source: paper (Yin et al., "Improved Distribution Matching Distillation for Fast Image
Synthesis", NeurIPS 2024) and official code (tianweiy/DMD2); METHODS.md section 2.
Without GAN loss (the suite compares distribution matching terms; DMD2's GAN head is not part
of the RTDMD comparison).

Per iteration: one fake-score flow-matching step on (detached) generator samples; every
`num_fake_per_gen`-th iteration one generator step: backward simulation (k ~ U{1..N} steps,
gradient only through step k, its x0-prediction is the sample), noise to t, and the
normalised DMD gradient g = (x0_fake - x0_real) / mean|x0 - x0_real| (teacher with CFG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rtdmd_bench.core import dmd, optim, sampling, schedules
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.interfaces import Batch, RewardSet


@dataclass
class Config:
    num_steps: int = 4
    """Student sampling steps N (timesteps 1000, 750, 500, 250 before the base's shift)."""
    eta: float = 0.9
    """CPS stochasticity eta of the student's rollout (METHODS.md section 1)."""
    lr_generator: float = 5e-7
    """AdamW learning rate of the generator (DMD2 official SDXL: 5e-7)."""
    lr_fake: float = 5e-7
    """AdamW learning rate of the fake score (DMD2 official: same as the generator)."""
    betas: tuple[float, float] = (0.0, 0.999)
    """AdamW betas (DMD2 official: 0, 0.999)."""
    weight_decay: float = 0.01
    """AdamW weight decay (DMD2 official: 0.01)."""
    grad_clip: float = 10.0
    """Gradient-norm clip for both networks (DMD2 official: 10)."""
    num_fake_per_gen: int = 5
    """Two-time-scale update rule: fake-score steps per generator step (DMD2: 5)."""
    ema_decay: float = 0.99
    """Generator EMA decay; evaluation uses the EMA weights."""
    cfg: float | None = None
    """Teacher guidance scale in the DM gradient; None = the base's default."""
    dm_normalize: Literal["mean_abs", "none"] = "mean_abs"
    """Per-sample normalisation of the DMD gradient (METHODS.md section 2)."""
    fake_step_conditioning: bool = False
    """Ablation: give the fake score the index of the sampler step whose output it models (off in
    the papers; on toy2d it stops one fake score from learning the mix of every step's outputs)."""
    backward_simulation: bool = True
    """Random-stop rollout (k ~ U{1..N}); False always runs all N steps."""
    t_min: float = 0.02
    """Lowest DM / fake-score noise level."""
    t_max: float = 0.98
    """Highest DM / fake-score noise level."""


class DMD2:
    """Plain DMD2 baseline (paper + official code)."""

    Config = Config
    name = "dmd2"
    source = "paper (Yin et al. 2024, DMD2) + official code tianweiy/DMD2; GAN term omitted"
    stages = ("dmd",)

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        self.cfg, self.base, self.meter = cfg, base, meter
        self.student_params = base.trainable("student")
        self.fake_params = base.trainable("fake")
        self.opt_g = optim.adamw(self.student_params, cfg.lr_generator, cfg.betas, cfg.weight_decay)
        self.opt_f = optim.adamw(self.fake_params, cfg.lr_fake, cfg.betas, cfg.weight_decay)
        self.ema = EMA(self.student_params, cfg.ema_decay)
        self.sigmas = base.sigmas(cfg.num_steps)
        self.guidance = base.default_cfg if cfg.cfg is None else cfg.cfg

    def _generate(self, cond: Any, n: int, gen: torch.Generator, grad: bool) -> tuple[torch.Tensor, int]:
        """Backward simulation: k ~ U{1..N} steps, grad only through step k; returns (x0, k-1)."""
        k = int(torch.randint(1, self.cfg.num_steps + 1, (1,), generator=gen)) if self.cfg.backward_simulation \
            else self.cfg.num_steps
        noise = torch.randn((n, *self.base.latent_shape), generator=gen)
        velocity = sampling.base_velocity(self.base, "student", cond)
        with torch.set_grad_enabled(grad):
            r = sampling.rollout(velocity, noise, self.sigmas, self.cfg.eta,
                                 lambda j: torch.randn(noise.shape, generator=gen), num_steps=k)
            return sampling.x0_of_last_step(r, self.sigmas), k - 1

    def _fake_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Any, step_index: int) -> torch.Tensor:
        step = torch.full((x.shape[0],), step_index, dtype=torch.long) if self.cfg.fake_step_conditioning else None
        return self.base.velocity("fake", x, t, cond, step=step)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(batch.seed)
        cond = self.base.encode(batch.prompts)
        n = len(batch.prompts)
        logs: dict[str, float] = {}
        if step % cfg.num_fake_per_gen == 0:
            x0, k = self._generate(cond, n, gen, grad=True)
            t = schedules.uniform_sigma(n, gen, cfg.t_min, cfg.t_max)
            x_t = sampling.add_noise(x0.detach(), torch.randn(x0.shape, generator=gen), t)
            with torch.no_grad():
                x0_real = sampling.x0_from_velocity(x_t, t, self.base.velocity("teacher", x_t, t, cond, cfg=self.guidance))
                x0_fake = sampling.x0_from_velocity(x_t, t, self._fake_velocity(x_t, t, cond, k))
            g = dmd.dmd_gradient(x0.detach(), x0_fake, x0_real, cfg.dm_normalize)
            loss_g = dmd.dmd_generator_loss(x0, g)
            logs["gen/grad_norm"] = optim.optimizer_step(self.opt_g, loss_g, self.student_params, cfg.grad_clip, step, "loss_dm")
            self.ema.update()
            logs["loss_dm"] = float(loss_g.detach())
            x0_fake_train = x0.detach()
        else:
            x0_fake_train, k = self._generate(cond, n, gen, grad=False)
        # Fake score: flow matching on the generator's current samples (tracks p_theta).
        t = schedules.uniform_sigma(n, gen, cfg.t_min, cfg.t_max)
        noise = torch.randn(x0_fake_train.shape, generator=gen)
        v = self._fake_velocity(sampling.add_noise(x0_fake_train, noise, t), t, cond, k)
        loss_f = dmd.flow_matching_loss(v, x0_fake_train, noise)
        optim.optimizer_step(self.opt_f, loss_f, self.fake_params, cfg.grad_clip, step, "loss_fake")
        logs["loss_fake"] = float(loss_f.detach())
        return logs

    def generator(self) -> Any:
        return self.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.base.state_dict("student"), "fake": self.base.state_dict("fake"),
                "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_f": self.opt_f.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict("student", state["student"])
        self.base.load_state_dict("fake", state["fake"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_f.load_state_dict(state["opt_f"])
