"""RTDMD: reward-tilted distribution matching, stage 1 (AC-DMD) then stage 2 in one run.

Source: official code Harahan/RTDMD (`rtdmd_trainer.py`, `grpo_trainer.py`, `bp_mixin.py`,
`ac_dmd_mixin.py`; `configs/rtdmd/*.yaml` for the stage-2 defaults) as summarised in METHODS.md
sections 3-4; the RTDMD paper's abstract for the objective. The budget split between the two
stages (`stage1_fraction`) is a suite choice: the official recipe runs them as two jobs.

Target p*(x) ∝ p_teacher(x) exp(r(x)/beta), so KL(p_theta || p*) = KL(p_theta || p_teacher)
- E_theta[r]/beta + const: a DM term plus reward maximisation. Stage 2, one generator optimiser
step per epoch (METHODS.md 4): K samples per prompt by 4-step CPS rollouts without CFG; SubGRPO
(PPO-clip on a subset S of m stochastic steps, group-shared noise on the other steps, per-reward
group advantages re-standardised, zero-advantage samples dropped); one AC-DMD fake-score step on
the final samples; on the deterministic last step lambda_dm L_ACDMD(x0_hat) + lambda_r mean(relu(
tau - sum_k w_k r_k(decode(x0_hat)))) over the differentiable rewards (the hybrid policy gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rtdmd_bench.core import acdmd_terms as ac
from rtdmd_bench.core import optim, rl, sampling
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.core.parallel import BatchRandom, Shard
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet


@dataclass
class Config:
    stage1: ac.ACDMDConfig = field(default_factory=ac.ACDMDConfig)
    """Stage 1 (AC-DMD) hyper-parameters, official cold-start defaults; eta and num_steps also
    define the stage-2 rollouts (official: the same 4-step CPS sampler, eta 0.9)."""
    stage1_fraction: float = 0.5
    """Fraction of the FLOP budget spent in stage 1 before switching to stage 2 (suite choice,
    recorded in results). 0 = stage 2 only, from the base's initial student."""
    group_size: int = 16
    """K >= 2 samples per prompt, one GRPO group (official SD3-M: 16; SD3.5/FLUX.2: 24)."""
    subset_size: int = 2
    """SubGRPO: stochastic steps trained by PPO per epoch (official 2; N-1 = plain GRPO)."""
    reward_term: Literal["hybrid", "grpo", "backprop"] = "hybrid"
    """Ablation: PPO on the subset + reward backprop on the last step (official), or one of them."""
    consistency: bool = True
    """Ablation: the consistency regulariser in the stage-2 fake-score step (official: on; stage 1
    has its own switch, stage1.consistency)."""
    dm_term: Literal["acdmd", "dmd"] = "acdmd"
    """Ablation: the last-step DM term is AC-DMD (official) or plain DMD (plain flow-matching fake
    score without consistency, logit-normal DM levels as the official loss_type "dmd")."""
    dm_t_dist: Literal["official", "uniform", "logit_normal"] = "official"
    """Last-step DM noise levels; official = uniform in the AC sub-interval for acdmd, logit-normal
    (0, 1) in [t_min, t_max] for dmd."""
    log_prob: sampling.LogProbMode = "cps_simplified"
    """Ablation: CPS transition log-prob in the PPO ratio (official: cps_simplified)."""
    lr: float = 3e-6
    """Stage-2 generator AdamW learning rate (official 3e-6)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Stage-2 generator AdamW betas (official 0.9, 0.999)."""
    weight_decay: float = 1e-4
    """Stage-2 generator AdamW weight decay (official 1e-4)."""
    grad_clip: float = 1.0
    """Stage-2 gradient-norm clip of both networks (official 1)."""
    lr_fake: float = 3e-5
    """Stage-2 fake-score AdamW learning rate (official 3e-5; betas and decay as in stage 1)."""
    clip_eps: float = 1e-5
    """PPO ratio clip epsilon (official clip_range 1e-5)."""
    adv_clip: float = 5.0
    """Advantages are clipped to +-this in the PPO term (official adv_clip_max 5)."""
    lambda_dm: float = 1e-3
    """Weight of the last-step DM term (official last_step_loss.weight 1e-3)."""
    lambda_r: float = 1e-4
    """Weight of the hinge reward-backprop term (official bp_grad_scale 1e-4)."""
    tau: float = 3.0
    """Hinge margin: loss relu(tau - sum_k w_k r_k) (official bp_reward_margin 3)."""
    reward_weighting: Literal["official", "beta"] = "official"
    """official: lambda_r as given (beta is then implicit: ~ lambda_dm/lambda_r up to the DM term's
    normalisation). beta: lambda_r = lambda_dm / (beta D), D = latent size, the weight at which the
    loss gradient is lambda_dm times that of KL(p||p_teacher) - E[r]/beta (exact only with
    stage1.dm_normalize=none and the DM term's implicit time weighting)."""
    cfg: float | None = None
    """Teacher guidance scale in the last-step DM term; None = the base's default (official SD3-M 7)."""
    ema_decay: float = 0.9
    """Stage-2 parameter EMA decay, warmed up as min((1+n)/(10+n), decay) (official 0.9)."""
    ema_interval: int = 8
    """Stage-2 EMA update every this many optimiser steps (official ema_update_interval 8)."""


class RTDMD:
    """RTDMD: AC-DMD stage 1, then the hybrid SubGRPO + reward-backprop stage 2 (official code)."""

    Config = Config
    name = "rtdmd"
    source = ("official code Harahan/RTDMD (rtdmd_trainer.py, grpo_trainer.py, bp_mixin.py, "
              "ac_dmd_mixin.py; configs/cold_start, configs/rtdmd) as summarised in METHODS.md "
              "sections 3-4; RTDMD paper abstract; stage1_fraction is a suite choice")
    stages = ("acdmd", "reward-tilted")

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        self.cfg, self.base, self.rewards, self.meter = cfg, base, rewards, meter
        self._check(cfg, rewards, meter)
        self.state = ac.stage1_state(base, cfg.stage1)  # replaced by fresh optimisers/EMA at the switch
        self.sigmas = base.sigmas(cfg.stage1.num_steps)
        self.switch_step: int | None = None  # the step at which stage 2 began (saved for resume)
        self.stage2_updates = 0

    @staticmethod
    def _check(cfg: Config, rewards: RewardSet, meter: Any) -> None:
        if not 0.0 <= cfg.stage1_fraction <= 1.0:
            raise UserError(f"rtdmd stage1_fraction={cfg.stage1_fraction} must be in [0, 1]")
        if 0.0 < cfg.stage1_fraction < 1.0 and not math.isfinite(meter.budget_flops):
            raise UserError("rtdmd splits its FLOP budget between stages: give a finite --budget")
        if cfg.group_size < 2 or not 1 <= cfg.subset_size <= cfg.stage1.num_steps - 1:
            raise UserError(f"rtdmd group_size={cfg.group_size} must be >= 2 and subset_size="
                            f"{cfg.subset_size} in [1, {cfg.stage1.num_steps - 1}] (the stochastic steps)")
        if cfg.reward_term != "grpo" and not any(r.differentiable for r in rewards.rewards.values()):
            raise UserError("rtdmd reward_term hybrid/backprop needs a differentiable reward: pass "
                            "--rewards with one, or --set method.reward_term=grpo")
        if cfg.reward_term != "backprop" and not rewards:
            raise UserError("rtdmd needs rewards for its advantages: pass --rewards NAME[=WEIGHT]")

    def _maybe_switch(self, step: int) -> None:
        budget = self.meter.budget_flops
        used = self.meter.used / budget if math.isfinite(budget) else 0.0
        if self.switch_step is None and used >= self.cfg.stage1_fraction:
            self._enter_stage2(step)

    def _enter_stage2(self, step: int) -> None:
        """Stage 2 starts from the stage-1 EMA generator (official: generator_ema.pt) and fake score
        with fresh optimisers and EMA. On LoRA bases the official code merges the stage-1 LoRAs and
        starts fresh ones; here the same trainable parameters keep training (equivalent function)."""
        cfg, st = self.cfg, self.state
        self.switch_step, self.stage2_updates = step, 0
        with torch.no_grad():
            for p, s in zip(st.student, st.ema.shadow):
                p.copy_(s)
        self.state = ac.TrainState(st.student, st.fake, optim.adamw(st.student, cfg.lr, cfg.betas, cfg.weight_decay),
                                   optim.adamw(st.fake, cfg.lr_fake, cfg.stage1.betas, cfg.stage1.weight_decay),
                                   EMA(st.student, cfg.ema_decay))

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self._maybe_switch(step)
        if self.switch_step is None:
            logs = ac.stage1_step(self.base, self.cfg.stage1, self.state, self.sigmas, batch, step)
            return {**logs, "stage": 1.0}
        return {**self._stage2_step(batch, step), "stage": 2.0}

    # ---------------------------------------------------------------- stage 2
    def group_rollout(self, prompts: list[str], cond: Any, subset: list[int], seed: int,
                      gen: BatchRandom) -> sampling.Rollout:
        """No-grad N-step CPS rollout of B = len(prompts) samples (groups of K consecutive equal
        prompts). Steps in `subset` draw independent noise; the other stochastic steps use noise
        shared within each group, seeded from (prompt, step, seed) so every rank agrees (SubGRPO)."""
        shape = (len(prompts), *self.base.latent_shape)
        shared = self.cfg.reward_term != "backprop"  # groups matter only for the PPO advantages

        def noise_fn(j: int) -> torch.Tensor:
            if j in subset or not shared:
                return gen.randn(shape)
            return rl.group_shared_noise(self.base.latent_shape, prompts, self.cfg.group_size, j, seed)

        velocity = sampling.base_velocity(self.base, "student", cond)
        with torch.no_grad():
            return sampling.rollout(velocity, gen.randn(shape), self.sigmas,
                                    self.cfg.stage1.eta, noise_fn)

    def advantages(self, x0: torch.Tensor, prompts: list[str], shard: Shard
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-reward group advantages (batch std, official per-prompt tracking with global std),
        weighted sum, re-standardised; `keep` drops samples with zero advantage. Computed on every
        rank's scores (official: gathered), returns the GLOBAL (A (B,), keep (B,), mean weighted
        reward)."""
        with torch.no_grad():
            scores = {k: shard.gather(v) for k, v in self.rewards.each(self.base.decode(x0), prompts).items()}
        advs = {k: rl.group_advantages(v.float(), self.cfg.group_size, "batch") for k, v in scores.items()}
        a, keep = rl.combine_advantages(advs, self.rewards.weights)
        return a, keep, float(sum(self.rewards.weights[k] * v.float().mean() for k, v in scores.items()))

    def _fake_step2(self, x0: torch.Tensor, cond: Any, gen: BatchRandom, step: int) -> dict[str, float]:
        cfg = self.cfg
        loss, logs = ac.final_sample_fake_loss(self.base, cfg.stage1, x0, cond, gen, cfg.consistency,
                                               plain=cfg.dm_term == "dmd")
        optim.optimizer_step(self.state.opt_f, loss, self.state.fake, cfg.grad_clip, step, "loss_fake")
        return {"loss_fake": float(loss.detach()), **logs}

    def _last_step_dm_loss(self, x0_hat: torch.Tensor, cond: Any, gen: BatchRandom) -> torch.Tensor:
        cfg = self.cfg
        acdmd = cfg.dm_term == "acdmd"
        dist = cfg.dm_t_dist if cfg.dm_t_dist != "official" else ("uniform" if acdmd else "logit_normal")
        offset = cfg.stage1.renoise_offset if acdmd else 0.0
        guidance = self.base.default_cfg if cfg.cfg is None else cfg.cfg
        return ac.final_sample_dm_loss(self.base, cfg.stage1, x0_hat, cond, gen, dist, offset, guidance)

    def reward_backprop_weight(self) -> float:
        if self.cfg.reward_weighting == "official":
            return self.cfg.lambda_r
        return self.cfg.lambda_dm / (self.rewards.beta * math.prod(self.base.latent_shape))

    def _student_step(self, r: sampling.Rollout, j: int, cond: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-run step j with grad: (v, CPS mean, CPS std) at (xs[j], sigma_j)."""
        sig, sig_next = (self.sigmas[i].expand(r.xs[j].shape[0]) for i in (j, j + 1))
        v = self.base.velocity("student", r.xs[j], sig, cond)
        return (v, *sampling.cps_mean_std(r.xs[j], sig, v, sig_next, self.cfg.stage1.eta))

    def _stage2_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg, n_steps = self.cfg, self.cfg.stage1.num_steps
        # B // K prompts, K samples each; this rank's whole groups
        prompts = batch.local(rl.grouped_prompts(batch.prompts, cfg.group_size), cfg.group_size)
        cond, gen = self.base.encode(prompts), batch.random()
        use_ppo, use_bp = cfg.reward_term != "backprop", cfg.reward_term != "grpo"
        subset = rl.choose_subset(n_steps - 1, cfg.subset_size, batch.seed) if use_ppo else []
        r = self.group_rollout(prompts, cond, subset, batch.seed, gen)
        logs = self._fake_step2(r.xs[-1], cond, gen, step)  # official order: fake before generator
        terms: list[torch.Tensor] = []
        if use_ppo:
            a_all, keep_all, logs["reward_mean"] = self.advantages(r.xs[-1], prompts, batch.shard)
            logs["adv_kept_frac"] = float(keep_all.float().mean())
            a, keep = batch.shard.local(a_all), batch.shard.local(keep_all)
            kept = rl.kept_per_rank(keep_all, batch.shard.world)
            for j in subset:
                _, mean, std = self._student_step(r, j, cond)
                lp = sampling.cps_log_prob(r.xs[j + 1], mean, std, cfg.log_prob)
                lp_old = sampling.cps_log_prob(r.xs[j + 1], r.means[j], r.stds[j], cfg.log_prob)
                terms.append(rl.ppo_clip_loss(lp, lp_old, a, cfg.clip_eps, cfg.adv_clip, mask=keep, kept=kept))
            logs["loss_ppo"] = float(sum(terms).detach())
        # Deterministic last step: x0_hat from the current network.
        j = n_steps - 1
        v, _, _ = self._student_step(r, j, cond)
        x0_hat = sampling.x0_from_velocity(r.xs[j], self.sigmas[j].expand(v.shape[0]), v)
        loss_dm = self._last_step_dm_loss(x0_hat, cond, gen)
        terms.append(cfg.lambda_dm * loss_dm)
        logs["loss_dm"] = float(loss_dm.detach())
        if use_bp:
            reward = self.rewards.total(self.base.decode(x0_hat), prompts, differentiable_only=True)
            loss_bp = torch.relu(cfg.tau - reward).mean()
            terms.append(self.reward_backprop_weight() * loss_bp)
            logs["loss_bp"], logs["bp_reward_mean"] = float(loss_bp.detach()), float(reward.detach().mean())
        # Official accumulation divides every step's loss by the number of trained steps.
        loss = sum(terms) / (len(subset) + 1)
        logs["gen/grad_norm"] = optim.optimizer_step(self.state.opt_g, loss, self.state.student,
                                                     cfg.grad_clip, step, "loss_generator")
        logs["loss_generator"] = float(loss.detach())
        self._stage2_ema()
        return logs

    def _stage2_ema(self) -> None:
        """Official EMAModuleWrapper: update when (n + 1) % interval == 0 (n = optimiser steps done),
        with warm-up decay min((1 + n)/(10 + n), ema_decay)."""
        self.stage2_updates += 1
        n = self.stage2_updates
        if (n + 1) % self.cfg.ema_interval == 0:
            self.state.ema.decay = min((1 + n) / (10 + n), self.cfg.ema_decay)
            self.state.ema.update()

    def generator(self) -> Any:
        return self.state.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return {**self.state.state_dict(self.base), "switch_step": self.switch_step,
                "stage2_updates": self.stage2_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["switch_step"] is not None:  # rebuild the stage-2 optimisers/EMA before loading them
            self._enter_stage2(int(state["switch_step"]))
            self.stage2_updates = int(state["stage2_updates"])
        self.state.load_state_dict(self.base, state)
