"""DMD + RL: the naive "simple summation" baseline (DMDR-like), L = L_DMD + lambda * L_RL.

Source: METHODS.md section 5, after DMDR (Jiang et al., "Distribution Matching Distillation
Meets Reinforcement Learning", arXiv 2511.13649) and ReFL/DRaFT for the backprop form; the DM
term is DMD2 (Yin et al. 2024). The suite's own composition: the paper's exact recipe (its
reward models, schedules) is not reproduced.

Per iteration, as DMD2: one fake-score flow-matching step; every `num_fake_per_gen`-th
iteration one generator step on the SUM of
- the DMD2 term on a backward-simulated sample x0 (k ~ U{1..N} steps, grad through step k), and
- lambda x the RL term, by `rl_form`:
  `backprop`: -mean_b sum_k w_k r_k(decode(x0)) through the generator (differentiable rewards);
  `grpo`: PPO-clip on the stochastic CPS steps of a separate no-grad rollout of groups of
  `group_size` samples per prompt, with per-reward group advantages (all rewards).

lambda and beta: the tilted target p* ∝ p_teacher exp(r/beta) has
KL(p_theta || p*) = KL(p_theta || p_teacher) - E[r]/beta + const, so with
`reward_weighting="beta"` lambda = 1/beta: the reward weighs 1/beta relative to the DM term.
The relation is nominal, not exact: per sample the DM surrogate's gradient is g/D (mean over the
D dimensions), and even unnormalised (`dm_normalize="none"`) g = x0_fake - x0_real equals
t^2/(1-t)^2 x the gradient of KL(p_theta,t || p_teacher,t) w.r.t. x0 (Tweedie:
E[x0|x_t] = (x_t + t^2 score)/(1-t)), while DMD2's default divides g by a per-sample scale. So
p* is not the exact fixed point for any single lambda; how far each method lands from p* is what
the toy benchmark measures.

DMDR extras, as options: Beta-distributed DM timesteps annealed to uniform (`dm_timesteps`).
Not implemented: DMDR's dynamic real-score LoRA scale, because it needs a base that exposes an
adapter scale on the teacher, and methods never branch on the base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rtdmd_bench.core import optim, rewards_terms, rl, sampling, schedules
from rtdmd_bench.core.advantages import keep_mask, weighted_advantages
from rtdmd_bench.core.generator_critic import DMDConfig, GeneratorCritic
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.core.sampling import LogProbMode
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet
from rtdmd_bench.ranges import GroupSize, NonNegative, NonNegativeInt, Positive


@dataclass
class Config(DMDConfig):
    rl_form: Literal["backprop", "grpo"] = "backprop"
    """RL term: reward back-propagation through the generator (DMDR/ReFL/DRaFT) or PPO-clip with
    group advantages on the stochastic steps (METHODS.md section 5)."""
    reward_weighting: Literal["beta", "explicit"] = "beta"
    """lambda = 1/beta of the run's RewardSet ("beta", the tilted-KL weighting, see the module
    docstring) or `rl_weight` ("explicit")."""
    rl_weight: NonNegative = 1.0
    """lambda when reward_weighting="explicit"."""
    group_size: GroupSize = 16
    """grpo: samples per prompt in a group (RTDMD official SD3-M group size)."""
    log_prob: LogProbMode = "exact"
    """grpo: CPS transition log-prob mode (METHODS.md section 1)."""
    clip_eps: Positive = 1e-4
    """grpo: PPO ratio clip (Flow-GRPO default clip_range 1e-4)."""
    adv_clip: Positive = 5.0
    """grpo: advantages clipped to +-adv_clip (Flow-GRPO and RTDMD: 5)."""
    adv_std: Literal["batch", "group"] = "batch"
    """grpo: "batch" = RTDMD's advantages exactly (per-prompt means, numpy population std of the
    batch + 1e-4, re-standardised, only exact zeros dropped; core/advantages.py); "group" = the
    per-group (unbiased) std + 1e-6 with groups of constant reward dropped."""
    dm_timesteps: Literal["uniform", "beta_annealed"] = "uniform"
    """DM-term noise levels: U(t_min, t_max) as DMD2, or DMDR's dynamic renoise sampling
    (Beta(beta_start) annealed linearly to uniform over `beta_anneal_steps` iterations)."""
    beta_start: tuple[Positive, Positive] = (2.0, 1.0)
    """Initial Beta(a, b) of `beta_annealed` (a > b favours high noise; the suite's choice, the
    paper's values were not available)."""
    beta_anneal_steps: NonNegativeInt = 1000
    """Iterations over which `beta_annealed` reaches the uniform distribution."""


class DMDRL:
    """Naive DMD + RL sum (DMDR-like), RL form backprop | grpo."""

    Config = Config
    name = "dmd-rl"
    source = ("paper-inspired baseline: DMD2 (Yin et al. 2024) + reward term as in DMDR (Jiang et al., "
              "arXiv 2511.13649) / ReFL / DRaFT; composition per METHODS.md section 5 (suite's own); "
              "DMDR's dynamic real-score LoRA scale not implemented")
    stages = ("dmd-rl",)
    # The suite's smoke, resume and two-process tests run every registered method for a few steps on
    # batches of 4 to 16 samples with these overrides (tests/test_every_method.py).
    smoke_test_overrides = ("method.group_size=2",)  # rl_form=grpo: whole groups on each of two processes

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        if not rewards:
            raise UserError("dmd-rl needs at least one reward: pass --rewards NAME[=WEIGHT],...")
        if cfg.rl_form == "backprop" and not any(r.differentiable for r in rewards.rewards.values()):
            raise UserError("dmd-rl rl_form=backprop needs a differentiable reward; add one to --rewards "
                            "or use --set method.rl_form=grpo")
        self.cfg, self.base, self.rewards, self.meter = cfg, base, rewards, meter
        self.nets = GeneratorCritic(cfg, base)
        self.rl_weight = 1.0 / rewards.beta if cfg.reward_weighting == "beta" else cfg.rl_weight

    def _dm_sigma(self, n: int, gen: BatchRandom, step: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.dm_timesteps == "uniform":
            return schedules.uniform_sigma(n, gen, cfg.t_min, cfg.t_max)
        progress = step / max(cfg.beta_anneal_steps, 1)
        return rewards_terms.annealed_beta_sigma(n, gen, cfg.beta_start, progress, cfg.t_min, cfg.t_max)

    def _dm_loss(self, x0: torch.Tensor, k: int, cond: Any, gen: BatchRandom, step: int) -> torch.Tensor:
        """DMD2 generator term on x0 (B, ...) with grad, at this method's DM noise levels."""
        return self.nets.dm_loss(x0, self._dm_sigma(x0.shape[0], gen, step), cond, k, gen)

    def _backprop_loss(self, x0: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """-mean_b sum_k w_k r_k(decode(x0)) over the differentiable rewards (grad into x0)."""
        r = self.rewards.total(self.base.decode(x0), prompts, differentiable_only=True)  # (B,)
        return -r.mean(), {"reward": float(r.detach().mean())}

    def _grpo_loss(self, batch: Batch, gen: BatchRandom) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO-clip on the stochastic steps of a fresh group rollout (on-policy: ratio 1 at the
        update, so the clip only matters for the gradient's support, as in Flow-GRPO's first step)."""
        cfg, k = self.cfg, self.cfg.group_size
        global_prompts = rl.grouped_prompts(batch.prompts, k)  # (B,)
        group_prompts = batch.local(global_prompts, k)  # (b,) this rank's groups
        cond = self.base.encode(group_prompts)
        velocity = sampling.base_velocity(self.base, "student", cond)
        noise = gen.randn((len(group_prompts), *self.base.latent_shape))
        with torch.no_grad():
            r = sampling.rollout(velocity, noise, self.nets.sigmas, cfg.eta,
                                 lambda j: gen.randn(noise.shape))
            scores = self.rewards.each(self.base.decode(r.xs[-1]), group_prompts)  # name -> (b,)
        scores = {name: batch.shard.gather(s) for name, s in scores.items()}  # (B,): batch std is global
        if cfg.adv_std == "batch":  # RTDMD's form exactly (core/advantages.py), its exact-zero drop
            adv, raw = weighted_advantages(scores, global_prompts, self.rewards.weights, cfg.num_steps)
            keep_all = keep_mask(adv, raw, "official")
        else:
            advs = {name: rl.group_advantages(s, k, std="group") for name, s in scores.items()}
            adv, keep_all = rl.combine_advantages(advs, self.rewards.weights)
        adv, keep = batch.shard.local(adv), batch.shard.local(keep_all)
        steps = rewards_terms.stochastic_steps(self.nets.sigmas)
        old = rewards_terms.rollout_log_probs(r, steps, cfg.log_prob)
        new = rewards_terms.policy_log_probs(velocity, r, self.nets.sigmas, cfg.eta, steps, cfg.log_prob)
        loss = rewards_terms.ppo_over_steps(new, old, adv, cfg.clip_eps, cfg.adv_clip, keep,
                                            rl.kept_per_rank(keep_all, batch.shard.world))
        total = sum(self.rewards.weights[n] * s for n, s in scores.items())
        return loss, {"reward": float(total.mean()), "kept_fraction": float(keep_all.float().mean())}

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        batch = batch.for_rewards()  # every step optimises the rewards: their prompt set (RTDMD stage 2's)
        gen, prompts = batch.random(), batch.local(batch.prompts)
        cond = self.base.encode(prompts)
        n = len(prompts)
        logs: dict[str, float] = {}
        if step % cfg.num_fake_per_gen == 0:
            x0, k = self.nets.backward_simulation(cond, n, gen, grad=True)
            loss_dm = self._dm_loss(x0, k, cond, gen, step)
            if cfg.rl_form == "backprop":
                loss_rl, rl_logs = self._backprop_loss(x0, prompts)
            else:
                loss_rl, rl_logs = self._grpo_loss(batch, gen)
            optim.check_finite(step, loss_dm=loss_dm, loss_rl=loss_rl)
            loss = loss_dm + self.rl_weight * loss_rl
            logs["gen/grad_norm"] = self.nets.generator_step(loss, 1, step, "loss_generator")[1]
            logs |= {"loss_dm": float(loss_dm.detach()), "loss_rl": float(loss_rl.detach())} | {f"rl/{a}": v for a, v in rl_logs.items()}
        else:
            x0, k = self.nets.backward_simulation(cond, n, gen, grad=False)
        loss_f = self.nets.fake_score_loss(x0, cond, k, gen)
        self.nets.fake_step(loss_f, 1, step)
        logs["loss_fake"] = float(loss_f.detach())
        return logs

    def generator(self) -> Any:
        return self.nets.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return self.nets.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state)
