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
from typing import Any

from rtdmd_bench.core import schedules
from rtdmd_bench.core.generator_critic import DMDConfig, GeneratorCritic
from rtdmd_bench.interfaces import Batch, RewardSet


@dataclass
class Config(DMDConfig):
    """DMD2 is the shared DMD configuration with its defaults (rtdmd_bench/core/generator_critic.py)."""


class DMD2:
    """Plain DMD2 baseline (paper + official code)."""

    Config = Config
    name = "dmd2"
    source = "paper (Yin et al. 2024, DMD2) + official code tianweiy/DMD2; GAN term omitted"
    stages = ("dmd",)

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        self.cfg, self.base, self.meter = cfg, base, meter
        self.nets = GeneratorCritic(cfg, base)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        gen, prompts = batch.random(), batch.local(batch.prompts)
        cond = self.base.encode(prompts)
        n = len(prompts)
        logs: dict[str, float] = {}
        if step % cfg.num_fake_per_gen == 0:
            x0, k = self.nets.backward_simulation(cond, n, gen, grad=True)
            loss_g = self.nets.dm_loss(x0, schedules.uniform_sigma(n, gen, cfg.t_min, cfg.t_max), cond, k, gen)
            logs["gen/grad_norm"] = self.nets.generator_step(loss_g, step, "loss_dm")
            logs["loss_dm"] = float(loss_g.detach())
        else:
            x0, k = self.nets.backward_simulation(cond, n, gen, grad=False)
        loss_f = self.nets.fake_score_loss(x0, cond, k, gen)
        self.nets.fake_step(loss_f, step)
        logs["loss_fake"] = float(loss_f.detach())
        return logs

    def generator(self) -> Any:
        return self.nets.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return self.nets.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state)
