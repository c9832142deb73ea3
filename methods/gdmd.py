"""GDMD-style gradient rewards: rewards score the DMD *update*, not the raw sample.

Source: SUITE DEFINITION. The GDMD paper ("Guiding Distribution Matching Distillation with
Gradient-Based Reinforcement Learning", arXiv 2604.19009) could not be read beyond its abstract;
this is the suite's reconstruction from the abstract, METHODS.md section 6. Every choice the
abstract leaves open is a config switch.

Per iteration, as DMD2: one fake-score flow-matching step; every `num_fake_per_gen`-th
iteration one generator step. For each backward-simulated generator sample x0, draw K
(t_k, n_k) and form the DMD2 implicit targets T_k = sg(x0 - g_k) (g_k the normalised DMD
gradient at (t_k, n_k)); score R_k = r(decode(T_k)); advantages inside the target group
A_k = clip((R_k - mean_k R) / (std_k R + 1e-6), -1, 1); loss
mean_k (1 + lambda A_k) * 0.5 ||x0 - T_k||^2 (lambda in [0, 1]; lambda = 0 is DMD2 with K targets).
`vary` selects what differs between the K targets: timestep, noise, both (the default, K
independent draws), or `fake_snapshot`: one shared (t, n), target k uses the fake score of k
snapshots ago (snapshots every `snapshot_every` iterations; the K-1 newest are kept in the
method's state and swapped into the base's fake role for their target, then the live weights are
restored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rtdmd_bench.core import dmd, rewards_terms, sampling
from rtdmd_bench.core.generator_critic import DMDConfig, GeneratorCritic
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet
from rtdmd_bench.ranges import Positive, PositiveInt, Unit


@dataclass
class Config(DMDConfig):
    num_targets: PositiveInt = 4
    """K, implicit targets per generator sample (suite definition)."""
    lam: Unit = 0.5
    """lambda in [0, 1], strength of the reward weighting (0 = DMD2 with K targets; suite's choice)."""
    vary: Literal["both", "timestep", "noise", "fake_snapshot"] = "both"
    """What differs between a sample's K targets: independent (t_k, n_k) ("both"), only t_k with
    one shared noise, only n_k at one shared timestep, or only the fake score (current weights
    and the K-1 newest snapshots) at one shared (t, n) (METHODS.md section 6)."""
    snapshot_every: PositiveInt = 25
    """fake_snapshot: iterations between fake-score snapshots (suite's choice)."""
    adv_clip: Positive = 1.0
    """Target-group advantages are clipped to +-adv_clip (METHODS.md section 6: 1)."""


class GDMD:
    """GDMD-style reward-weighted DMD targets (suite definition, METHODS.md section 6)."""

    Config = Config
    name = "gdmd"
    source = ("suite definition: the GDMD paper's method section could not be read; reconstructed from "
              "the abstract (arXiv 2604.19009), METHODS.md section 6")
    stages = ("gdmd",)

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        if not 0.0 <= cfg.lam <= 1.0:
            raise UserError(f"gdmd lam must be in [0, 1] (weights 1 + lam A stay >= 0), got {cfg.lam}")
        if cfg.num_targets < 1:
            raise UserError(f"gdmd num_targets must be >= 1, got {cfg.num_targets}")
        if cfg.lam > 0 and not rewards:
            raise UserError("gdmd with lam > 0 needs a reward: pass --rewards NAME[=WEIGHT],... "
                            "(or --set method.lam=0 for DMD2 with K targets)")
        self.cfg, self.base, self.rewards, self.meter = cfg, base, rewards, meter
        self.nets = GeneratorCritic(cfg, base)
        self.snapshots: list[dict[str, torch.Tensor]] = []  # fake-score weights, oldest first

    def _fake_x0(self, x_t: torch.Tensor, t: torch.Tensor, prompts: list[str], step_index: int) -> torch.Tensor:
        """(K B, ...) fake-score x0-predictions at the k-major (x_t, t); under fake_snapshot the k-th
        block uses the weights of k snapshots ago (the oldest kept one when there are fewer)."""
        kk, n = self.cfg.num_targets, len(prompts)
        if self.cfg.vary != "fake_snapshot":
            cond = self.base.encode(list(prompts) * kk)
            return sampling.x0_from_velocity(x_t, t, self.nets.fake_velocity(x_t, t, cond, step_index))
        cond = self.base.encode(prompts)
        live = {name: v.detach().clone() for name, v in self.base.state_dict("fake").items()}
        weights = [live] + self.snapshots[::-1]  # newest first
        out = []
        try:
            for k in range(kk):
                if k:
                    self.base.load_state_dict("fake", weights[min(k, len(weights) - 1)])
                xk, tk = x_t[k * n:(k + 1) * n], t[k * n:(k + 1) * n]
                out.append(sampling.x0_from_velocity(xk, tk, self.nets.fake_velocity(xk, tk, cond, step_index)))
        finally:
            self.base.load_state_dict("fake", live)
        return torch.cat(out)

    def _target_draws(self, x0: torch.Tensor, gen: BatchRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (K, B), noise (K, B, ...)) with the `vary` switch deciding what is shared over k."""
        cfg, (n, shape) = self.cfg, (x0.shape[0], x0.shape[1:])
        kt = cfg.num_targets if cfg.vary in ("both", "timestep") else 1  # fake_snapshot: shared
        kn = cfg.num_targets if cfg.vary in ("both", "noise") else 1
        t = cfg.t_min + (cfg.t_max - cfg.t_min) * gen.rand((kt, n), dim=1)  # rows are dim 1
        noise = gen.randn((kn, n, *shape), dim=1)
        return t.expand(cfg.num_targets, n), noise.expand(cfg.num_targets, n, *shape)

    def implicit_targets(self, x0: torch.Tensor, k: int, prompts: list[str], gen: BatchRandom
                         ) -> torch.Tensor:
        """(K, B, ...) DMD2 implicit targets T_k = sg(x0 - g_k), one batched teacher call."""
        kk, n = self.cfg.num_targets, x0.shape[0]
        t, noise = self._target_draws(x0, gen)
        x0_rep = x0.detach().unsqueeze(0).expand(kk, *x0.shape).reshape(kk * n, *x0.shape[1:])  # (K B, ...)
        t_flat = t.reshape(-1)
        x_t = sampling.add_noise(x0_rep, noise.reshape(x0_rep.shape), t_flat)
        cond = self.base.encode(list(prompts) * kk)  # k-major, matching x0_rep
        with torch.no_grad():
            v_real = self.base.velocity("teacher", x_t, t_flat, cond, cfg=self.nets.guidance)
            x0_real = sampling.x0_from_velocity(x_t, t_flat, v_real)
            x0_fake = self._fake_x0(x_t, t_flat, prompts, k)
        g = dmd.dmd_gradient(x0_rep, x0_fake, x0_real, self.cfg.dm_normalize)
        return (x0_rep - g).view(kk, *x0.shape).detach()

    def _generator_loss(self, x0: torch.Tensor, k: int, prompts: list[str], gen: BatchRandom
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, kk = self.cfg, self.cfg.num_targets
        targets = self.implicit_targets(x0, k, prompts, gen)  # (K, B, ...)
        if cfg.lam == 0:
            adv, logs = torch.zeros(x0.shape[0], kk), {}
        else:
            with torch.no_grad():
                flat = targets.reshape(-1, *x0.shape[1:])
                rewards = self.rewards.total(self.base.decode(flat), list(prompts) * kk).view(kk, -1).T  # (B, K)
            adv = rewards_terms.target_group_advantages(rewards, cfg.adv_clip)
            logs = {"target_reward": float(rewards.mean()), "target_reward_spread": float(rewards.std(dim=1).mean())}
        return rewards_terms.weighted_dmd_loss(x0, targets, adv, cfg.lam), logs

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        batch = batch.for_rewards()  # every step scores the rewards: their prompt set (RTDMD stage 2's)
        gen, prompts = batch.random(), batch.local(batch.prompts)
        cond = self.base.encode(prompts)
        n = len(prompts)
        logs: dict[str, float] = {}
        if step % cfg.num_fake_per_gen == 0:
            x0, k = self.nets.backward_simulation(cond, n, gen, grad=True)
            loss_g, term_logs = self._generator_loss(x0, k, prompts, gen)
            logs["gen/grad_norm"] = self.nets.generator_step(loss_g, 1, step, "loss_gdmd")[1]
            logs |= {"loss_gdmd": float(loss_g.detach())} | {f"gdmd/{a}": v for a, v in term_logs.items()}
        else:
            x0, k = self.nets.backward_simulation(cond, n, gen, grad=False)
        loss_f = self.nets.fake_score_loss(x0, cond, k, gen)
        if cfg.vary == "fake_snapshot" and (step + 1) % cfg.snapshot_every == 0:
            # Taken BEFORE this fake step, so even the newest snapshot differs from the live weights.
            snap = {name: w.detach().clone() for name, w in self.base.state_dict("fake").items()}
            self.snapshots = (self.snapshots + [snap])[-(cfg.num_targets - 1):] if cfg.num_targets > 1 else []
        self.nets.fake_step(loss_f, 1, step)
        logs["loss_fake"] = float(loss_f.detach())
        return logs

    def generator(self) -> Any:
        return self.nets.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return {**self.nets.state_dict(),
                "fake_snapshots": list(self.snapshots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state)
        self.snapshots = [dict(s) for s in state.get("fake_snapshots", [])]
