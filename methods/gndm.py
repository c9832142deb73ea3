"""GNDM / GNDMR: distribution matching as a reward, optimised with group-normalised PPO.

Source: SUITE DEFINITION. The GNDM paper's method section could not be read; this is the
suite's reconstruction from its abstract, METHODS.md section 7. Every open choice is a switch.

Per iteration: one fake-score flow-matching step on full-rollout generator samples (the fake
score models the generator's final outputs, as in DMD); every `num_fake_per_gen`-th iteration
one generator update:
1. Rollout of `group_size` samples per prompt (no grad), storing the CPS transitions.
2. R_dm(x0) = mean_m w(t_m) (||v_fake - (eps_m - x0)||^2 - ||v_real - (eps_m - x0)||^2) / D over
   M draws (t_m, eps_m) shared by the whole group (common random numbers, so the group's
   differences are not noise); E_theta[R_dm] ~ -KL(p_theta || p_teacher).
3. A = w_dm A_dm + sum_k w_k c_k A_k, each A group-normalised (r - group mean)/(group std + 1e-6);
   the external sum only with `external_rewards` (GNDMR), c_k = 1 or, with `adaptive`, the scale
   that keeps A_k's running magnitude at `adaptive_fraction` x A_dm's (guarded against rewards
   constant within every group: `adaptive_guard`, docs/gndmr_scale_guard.md).
4. `num_inner_epochs` optimiser steps of PPO-clip on the stochastic steps, importance ratios
   against the rollout's behaviour log-probs.

GNDMR is this class with `external_rewards=True` (a configuration, not a copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rtdmd_bench.core import dmd, optim, rewards_terms, rl, sampling, schedules
from rtdmd_bench.core.generator_critic import GeneratorCriticConfig, GeneratorCritic
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.core.rewards_terms import AdaptiveGuard
from rtdmd_bench.core.sampling import LogProbMode
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet
from rtdmd_bench.ranges import AdamBeta, GroupSize, NonNegative, Positive, PositiveInt, Unit


@dataclass
class Config(GeneratorCriticConfig):
    eta: Unit = 0.9
    """CPS stochasticity eta of the rollouts (METHODS.md section 1)."""
    lr_generator: NonNegative = 3e-6
    """AdamW learning rate of the generator (RTDMD stage-2 official, the suite's RL default)."""
    lr_fake: NonNegative = 3e-5
    """AdamW learning rate of the fake score (AC-DMD official fake-score rate)."""
    betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    """AdamW betas (RTDMD official)."""
    weight_decay: NonNegative = 1e-4
    """AdamW weight decay (RTDMD stage-2 official)."""
    grad_clip: NonNegative = 1.0
    """Gradient-norm clip for both networks (RTDMD official)."""
    cfg: float | None = None
    """Teacher guidance scale in R_dm; None = the base's default."""
    fake_step_conditioning: bool = False
    """Ablation: give the fake score the sampler step index of the output it models (here always
    the last step, since R_dm scores final samples); off by default as in the papers."""
    group_size: GroupSize = 16
    """Samples per prompt in a group (RTDMD official SD3-M group size)."""
    num_dm_draws: PositiveInt = 4
    """M, the (t_m, eps_m) draws of the R_dm estimate, shared within a group."""
    dm_weighting: Literal["uniform", "elbo"] = "uniform"
    """w(t) of R_dm: 1, or (1-t)/t (the ELBO weight: R_dm ~ log p_teacher - log p_fake)."""
    num_inner_epochs: PositiveInt = 2
    """Optimiser steps of PPO-clip reusing each rollout batch (METHODS.md section 7: 2)."""
    log_prob: LogProbMode = "exact"
    """CPS transition log-prob mode (METHODS.md section 1)."""
    clip_eps: Positive = 1e-4
    """PPO ratio clip (Flow-GRPO default clip_range 1e-4)."""
    adv_clip: Positive = 5.0
    """Advantages clipped to +-adv_clip (Flow-GRPO and RTDMD: 5)."""
    external_rewards: bool = False
    """Add the run's external rewards to the advantage (GNDMR)."""
    w_dm: NonNegative = 1.0
    """Weight of A_dm; the external advantages are weighted by the RewardSet's weights."""
    adaptive: bool = True
    """GNDMR: rescale each external advantage so its running magnitude is `adaptive_fraction` x
    that of A_dm (False: c_k = 1)."""
    adaptive_fraction: NonNegative = 0.5
    """Target ratio of an external advantage's running magnitude to A_dm's (suite's choice)."""
    adaptive_momentum: Unit = 0.9
    """EMA momentum of the running magnitudes."""
    adaptive_guard: AdaptiveGuard = "floor"
    """Guard of the adaptive scale against rewards without within-group signal (docs/gndmr_scale_guard.md):
    "floor" (suite default): a batch where an external advantage's mean |A_k| is below `adaptive_floor` x
    A_dm's does not update that reward's running magnitude, and the scale's denominator is at least
    `adaptive_floor` x A_dm's running magnitude (scale <= adaptive_fraction / adaptive_floor = 5);
    "none": the unguarded EMA of METHODS.md section 7, whose scale reaches ~1e7 after a run of
    batches where the reward is constant within every group."""
    adaptive_floor: Positive = 0.1
    """With adaptive_guard="floor": the degenerate-batch threshold and the denominator floor, both as
    a fraction of A_dm's magnitude (suite's choice; 0.1 never binds on toy2d's continuous reward)."""


class GNDM:
    """Group-normalised distribution-matching reward R_dm + PPO (suite definition, section 7)."""

    Config = Config
    name = "gndm"
    source = ("suite definition: the GNDM paper's method section could not be read; reconstructed from "
              "the abstract, METHODS.md section 7")
    stages = ("gndm",)
    # The suite's smoke, resume and two-process tests run every registered method for a few steps on
    # batches of 4 to 16 samples with these overrides (tests/test_every_method.py).
    smoke_test_overrides = ("method.group_size=2",)  # whole groups on each of two processes

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        if cfg.external_rewards and not rewards:
            raise UserError(f"{self.name} with external_rewards needs --rewards NAME[=WEIGHT],... "
                            "(or --set method.external_rewards=false for GNDM)")
        if cfg.group_size < 2 or cfg.num_inner_epochs < 1 or cfg.num_dm_draws < 1:
            raise UserError("gndm needs group_size >= 2, num_inner_epochs >= 1 and num_dm_draws >= 1; got "
                            f"{cfg.group_size}, {cfg.num_inner_epochs}, {cfg.num_dm_draws}")
        self.cfg, self.base, self.rewards, self.meter = cfg, base, rewards, meter
        self.nets = GeneratorCritic(cfg, base)
        self.last_step = cfg.num_steps - 1  # the fake score models final samples
        self.running: dict[str, float] = {}  # GNDMR running advantage magnitudes (state)

    def _fake_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return self.nets.fake_velocity(x, t, cond, self.last_step)  # R_dm scores final samples

    def _rollout(self, cond: Any, n: int, gen: BatchRandom) -> sampling.Rollout:
        noise = gen.randn((n, *self.base.latent_shape))
        with torch.no_grad():
            return sampling.rollout(sampling.base_velocity(self.base, "student", cond), noise, self.nets.sigmas,
                                    self.cfg.eta, lambda j: gen.randn(noise.shape))

    def dm_reward(self, x0: torch.Tensor, prompts: list[str], gen: BatchRandom) -> torch.Tensor:
        """(B,) R_dm of samples x0 (B, ...) of `prompts` (B,), in consecutive groups of
        `group_size` (no grad)."""
        cfg, (b, shape) = self.cfg, (x0.shape[0], x0.shape[1:])
        m, groups = cfg.num_dm_draws, b // cfg.group_size
        # Common random numbers: one (t_m, eps_m) per group and draw, repeated over its members.
        t = cfg.t_min + (cfg.t_max - cfg.t_min) * gen.rand((m, groups), dim=1)  # groups are dim 1
        eps = gen.randn((m, groups, *shape), dim=1)
        t = t.repeat_interleave(cfg.group_size, dim=1)  # (M, B)
        eps = eps.repeat_interleave(cfg.group_size, dim=1)  # (M, B, ...)
        x_t = sampling.add_noise(x0.unsqueeze(0).expand(m, *x0.shape).reshape(m * b, *shape),
                                 eps.reshape(m * b, *shape), t.reshape(-1))
        cond_m = self.base.encode(list(prompts) * m)  # draw-major, matching x_t
        with torch.no_grad():
            v_real = self.base.velocity("teacher", x_t, t.reshape(-1), cond_m, cfg=self.nets.guidance)
            v_fake = self._fake_velocity(x_t, t.reshape(-1), cond_m)
        weight = rewards_terms.dm_reward_weight(t, cfg.dm_weighting)
        return rewards_terms.dm_reward(x0, eps, v_real.view(m, b, *shape), v_fake.view(m, b, *shape), weight)

    def advantages(self, x0: torch.Tensor, prompts: list[str], gen: BatchRandom
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """(b,) this rank's rows of the combined advantage A = w_dm A_dm + sum_k w_k c_k A_k and logs (updates the
        adaptive running magnitudes)."""
        cfg, k, shard = self.cfg, self.cfg.group_size, gen.shard
        r_dm = shard.gather(self.dm_reward(x0, prompts, gen))  # (B,) every rank's samples
        a_dm = rl.group_advantages(r_dm, k, std="group")
        logs = {"r_dm": float(r_dm.mean())}
        adv = cfg.w_dm * a_dm
        if cfg.external_rewards:
            with torch.no_grad():
                scores = {n: shard.gather(s) for n, s in self.rewards.each(self.base.decode(x0), prompts).items()}
            ext = {n: rl.group_advantages(s, k, std="group") for n, s in scores.items()}
            scales = {n: 1.0 for n in ext}
            if cfg.adaptive:
                scales, self.running = rewards_terms.adaptive_scales(
                    a_dm, ext, self.running, cfg.adaptive_momentum, cfg.adaptive_fraction,
                    guard=cfg.adaptive_guard, floor=cfg.adaptive_floor)
            adv = adv + sum(self.rewards.weights[n] * scales[n] * a for n, a in ext.items())
            logs |= {f"reward/{n}": float(s.mean()) for n, s in scores.items()}
            logs |= {f"scale/{n}": c for n, c in scales.items()}
        return shard.local(adv), logs  # computed on the global batch by every rank: adaptive state agrees

    def _generator_update(self, prompts: list[str], gen: BatchRandom, step: int
                          ) -> tuple[torch.Tensor, dict[str, float]]:
        """Group rollout of `prompts` (B K,), advantages, `num_inner_epochs` PPO steps; returns
        the rollout's final samples and logs."""
        cfg = self.cfg
        cond = self.base.encode(prompts)
        r = self._rollout(cond, len(prompts), gen)
        x0 = r.xs[-1]
        adv, logs = self.advantages(x0, prompts, gen)
        steps = rewards_terms.stochastic_steps(self.nets.sigmas)
        old = rewards_terms.rollout_log_probs(r, steps, cfg.log_prob)
        velocity = sampling.base_velocity(self.base, "student", cond)
        for epoch in range(cfg.num_inner_epochs):
            new = rewards_terms.policy_log_probs(velocity, r, self.nets.sigmas, cfg.eta, steps, cfg.log_prob)
            loss = rewards_terms.ppo_over_steps(new, old, adv, cfg.clip_eps, cfg.adv_clip)
            logs["gen/grad_norm"] = optim.optimizer_step(self.nets.opt_g, loss, self.nets.student_params, cfg.grad_clip,
                                                         step, "loss_ppo")
            self.nets.ema.update()
            logs[f"loss_ppo/epoch{epoch}"] = float(loss.detach())
            # The fraction of transitions outside the trust region tells whether reuse is useful.
            logs[f"clip_fraction/epoch{epoch}"] = float(torch.stack(
                [((lp.detach() - o).exp() - 1).abs().gt(cfg.clip_eps).float().mean() for lp, o in zip(new, old)]).mean())
        return x0, logs

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        if cfg.external_rewards:  # GNDMR optimises the rewards every step: their prompt set (RTDMD stage 2's)
            batch = batch.for_rewards()
        gen = batch.random()
        logs: dict[str, float] = {}
        if step % cfg.num_fake_per_gen == 0:
            # B // K prompts, K samples each; this rank's whole groups
            prompts = batch.local(rl.grouped_prompts(batch.prompts, cfg.group_size), cfg.group_size)
            x0, logs = self._generator_update(prompts, gen, step)
        else:
            prompts = batch.local(batch.prompts)
            x0 = self._rollout(self.base.encode(prompts), len(prompts), gen).xs[-1]
        # Fake score: flow matching on the generator's final samples (tracks p_theta).
        cond = self.base.encode(prompts)
        x0 = x0.detach()
        t = schedules.uniform_sigma(x0.shape[0], gen, cfg.t_min, cfg.t_max)
        noise = gen.randn(x0.shape)
        v = self._fake_velocity(sampling.add_noise(x0, noise, t), t, cond)
        loss_f = dmd.flow_matching_loss(v, x0, noise)
        optim.optimizer_step(self.nets.opt_f, loss_f, self.nets.fake_params, cfg.grad_clip, step, "loss_fake")
        logs["loss_fake"] = float(loss_f.detach())
        return logs

    def generator(self) -> Any:
        return self.nets.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        running = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.running.items()}
        return {**self.nets.state_dict(),
                "adaptive_running": running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state)
        self.running = {k: float(v) for k, v in state.get("adaptive_running", {}).items()}


@dataclass
class GNDMRConfig(Config):
    external_rewards: bool = True
    """Add the run's external rewards to the advantage (GNDMR: on)."""


class GNDMR(GNDM):
    """GNDM configured with external rewards and adaptive combination (suite definition, section 7)."""

    Config = GNDMRConfig
    name = "gndmr"
    source = ("suite definition: the GNDM paper's method section could not be read; reconstructed from "
              "the abstract, METHODS.md section 7 (GNDM with external rewards, adaptive combination)")
    stages = ("gndmr",)
