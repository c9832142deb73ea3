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
from typing import Any, Iterator

import torch

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
    micro_batching = True  # train.micro_batches: each optimiser step accumulates the micro-batches

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        self.cfg, self.base, self.meter = cfg, base, meter
        self.nets = GeneratorCritic(cfg, base)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg, chunks = self.cfg, batch.chunks()
        gens = [c.random() for c in chunks]  # each micro-batch's draws continue across both phases
        conds = [(self.base.encode(p), len(p)) for p in (c.local(c.prompts) for c in chunks)]
        logs: dict[str, float] = {}
        samples: list[tuple[torch.Tensor, int]] = []  # (x0 detached, step index) per micro-batch
        if step % cfg.num_fake_per_gen == 0:
            def generator_losses() -> Iterator[torch.Tensor]:
                for gen, (cond, n) in zip(gens, conds):
                    x0, k = self.nets.backward_simulation(cond, n, gen, grad=True)
                    samples.append((x0.detach(), k))
                    yield self.nets.dm_loss(x0, schedules.uniform_sigma(n, gen, cfg.t_min, cfg.t_max), cond, k, gen)

            logs["loss_dm"], logs["gen/grad_norm"] = self.nets.generator_step(generator_losses(), len(chunks),
                                                                            step, "loss_dm")
        else:
            samples = [self.nets.backward_simulation(cond, n, gen, grad=False) for gen, (cond, n) in zip(gens, conds)]
        logs["loss_fake"] = self.nets.fake_step(
            (self.nets.fake_score_loss(x0, cond, k, gen) for (x0, k), gen, (cond, _) in zip(samples, gens, conds)),
            len(chunks), step)
        return logs

    def generator(self) -> Any:
        return self.nets.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return self.nets.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state)
