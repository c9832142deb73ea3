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
from typing import Any, Iterator

import torch

from rtdmd_bench.core import acdmd_terms as ac
from rtdmd_bench.core import optim, rl, sampling
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.core.reward_tilted import (
    Chunk, Masked, RewardTiltedConfig, grpo_advantages, stage2_ema_update, stage2_prompts,
)
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet
from rtdmd_bench.ranges import Unit


@dataclass
class Config(RewardTiltedConfig):
    """Stage-2 fields (RewardTiltedConfig, official configs/rtdmd/sd3m.yaml) plus stage 1 and the split."""

    stage1: ac.ACDMDConfig = field(default_factory=ac.ACDMDConfig)
    """Stage 1 (AC-DMD) hyper-parameters, official cold-start defaults; eta and num_steps also
    define the stage-2 rollouts (official: the same 4-step CPS sampler, eta 0.9)."""
    stage1_fraction: Unit = 0.5
    """Fraction of the FLOP budget spent in stage 1 before switching to stage 2 (suite choice,
    recorded in results). 0 = stage 2 only, from the base's initial student."""


class RTDMD:
    """RTDMD: AC-DMD stage 1, then the hybrid SubGRPO + reward-backprop stage 2 (official code)."""

    Config = Config
    name = "rtdmd"
    source = ("official code Harahan/RTDMD (rtdmd_trainer.py, grpo_trainer.py, bp_mixin.py, "
              "ac_dmd_mixin.py; configs/cold_start, configs/rtdmd) as summarised in METHODS.md "
              "sections 3-4; RTDMD paper abstract; stage1_fraction is a suite choice")
    stages = ("acdmd", "reward-tilted")
    micro_batching = True  # train.micro_batches: each optimiser step accumulates the micro-batches
    # The suite's smoke, resume and two-process tests run every registered method for a few steps on
    # batches of 4 to 16 samples with these overrides (tests/test_every_method.py): stage 2 within
    # a few steps, whole groups on each of two processes, a stage-1 generator step within two steps.
    smoke_test_overrides = ("method.stage1_fraction=0.3", "method.group_size=2", "method.stage1.num_fake_per_gen=2")

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
        with fresh optimisers and EMA. On LoRA bases the stage-1 adapters are frozen into the model
        and fresh ones trained (official merge_before_training; `stage2_adapters`)."""
        cfg, st = self.cfg, self.state
        self.switch_step, self.stage2_updates = step, 0
        with torch.no_grad():
            for p, s in zip(st.student, st.ema.shadow):
                p.copy_(s)
        restarted = cfg.stage2_adapters == "restart" and all(
            [self.base.restart_adapter(role) for role in ("student", "fake")])
        # Only a restart changes what trains; otherwise keep the stage-1 parameter lists.
        student, fake = ((self.base.trainable("student"), self.base.trainable("fake")) if restarted
                         else (st.student, st.fake))
        self.state = ac.TrainState(student, fake, optim.adamw(student, cfg.lr, cfg.betas, cfg.weight_decay),
                                   optim.adamw(fake, cfg.lr_fake, cfg.stage1.betas, cfg.stage1.weight_decay),
                                   EMA(student, cfg.ema_decay))

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self._maybe_switch(step)
        if self.switch_step is None:
            chunks = batch.chunks()  # micro-batches: together exactly the rows and draws of the whole step
            logs = ac.stage1_step(self.base, self.cfg.stage1, self.state, self.sigmas,
                                  [c.local(c.prompts) for c in chunks], [c.random() for c in chunks], step)
            return {**logs, "stage": 1.0}
        return {**self._stage2_step(batch, step), "stage": 2.0}

    # ---------------------------------------------------------------- stage 2
    def group_rollout(self, prompts: list[str], cond: Any, subset: list[int], seed: int,
                      gen: BatchRandom) -> sampling.Rollout:
        """No-grad N-step CPS rollout of B = len(prompts) samples. Steps in `subset` draw independent
        noise; the other stochastic steps use noise shared by every sample of a prompt, seeded from
        (prompt, step, seed) so every rank and micro-batch agrees (SubGRPO)."""
        shape = (len(prompts), *self.base.latent_shape)
        shared = self.cfg.reward_term != "backprop"  # groups matter only for the PPO advantages

        def noise_fn(j: int) -> torch.Tensor:
            if j in subset or not shared:
                return gen.randn(shape)
            return rl.group_shared_noise(self.base.latent_shape, prompts, j, seed)

        velocity = sampling.base_velocity(self.base, "student", cond)
        with torch.no_grad():
            return sampling.rollout(velocity, gen.randn(shape), self.sigmas,
                                    self.cfg.stage1.eta, noise_fn)

    def advantages(self, work: list[Chunk], prompts: list[str], batch: Batch
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Every micro-batch's scores, gathered over ranks, to RTDMD's advantages of the GLOBAL
        batch and the kept samples (core/reward_tilted.grpo_advantages): (A (N,), keep (N,),
        mean weighted reward). `prompts` (N,) are the global rows."""
        with torch.no_grad():
            parts = [self.rewards.each(self.base.decode(w.rollout.xs[-1]), w.prompts) for w in work]
        scores = {k: batch.shard.gather(torch.cat([p[k] for p in parts])) for k in parts[0]}
        a, keep = grpo_advantages(scores, prompts, self.rewards.weights, self.cfg, self.cfg.stage1.num_steps,
                                  batch.seed)
        return a, keep, float(sum(self.rewards.weights[k] * v.float().mean() for k, v in scores.items()))

    def _fake_step2(self, work: list[Chunk], step: int) -> dict[str, float]:
        cfg, logs = self.cfg, []

        def losses() -> Iterator[torch.Tensor]:
            for w in work:
                loss, extra = ac.final_sample_fake_loss(self.base, cfg.stage1, w.rollout.xs[-1], w.cond, w.gen,
                                                        cfg.consistency, plain=cfg.dm_term == "dmd")
                logs.append(extra)
                yield loss

        loss, _ = optim.accumulated_step(self.state.opt_f, losses(), len(work), self.state.fake, cfg.grad_clip,
                                         step, "loss_fake")
        return {"loss_fake": loss, **ac.mean_logs(logs)}

    def _last_step_dm_loss(self, x0_hat: torch.Tensor, cond: Any, gen: BatchRandom, mask: torch.Tensor | None,
                           kept: float | None) -> torch.Tensor:
        cfg = self.cfg
        acdmd = cfg.dm_term == "acdmd"
        dist = cfg.dm_t_dist if cfg.dm_t_dist != "official" else ("uniform" if acdmd else "logit_normal")
        offset = cfg.stage1.renoise_offset if acdmd else 0.0
        guidance = self.base.default_cfg if cfg.cfg is None else cfg.cfg
        return ac.final_sample_dm_loss(self.base, cfg.stage1, x0_hat, cond, gen, dist, offset, guidance, mask, kept)

    def reward_backprop_weight(self) -> float:
        if self.cfg.reward_weighting == "official":
            return self.cfg.lambda_r
        return self.cfg.lambda_dm / (self.rewards.beta * math.prod(self.base.latent_shape))

    def _student_step(self, r: sampling.Rollout, j: int, cond: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-run step j with grad: (v, CPS mean, CPS std) at (xs[j], sigma_j)."""
        sig, sig_next = (self.sigmas[i].expand(r.xs[j].shape[0]) for i in (j, j + 1))
        v = self.base.velocity("student", r.xs[j], sig, cond)
        return (v, *sampling.cps_mean_std(r.xs[j], sig, v, sig_next, self.cfg.stage1.eta))

    def _generator_loss(self, w: Chunk, subset: list[int], adv: torch.Tensor | None, keep: Masked,
                        keep_last: Masked) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch's generator loss: PPO-clip on the subset steps over the `keep` samples,
        then on the deterministic last step lambda_dm L_DM + lambda_r mean relu(tau - reward) over
        the `keep_last` samples; averaged over the trained steps (official accumulation divides
        every step's loss by their number). Masks are this micro-batch's rows, with the global
        kept count per rank (`rl.masked_mean`)."""
        cfg, r, terms, logs = self.cfg, w.rollout, [], {}
        (mask, kept), (mask_last, kept_last) = keep, keep_last
        for j in subset:
            _, mean, std = self._student_step(r, j, w.cond)
            lp = sampling.cps_log_prob(r.xs[j + 1], mean, std, cfg.log_prob)
            lp_old = sampling.cps_log_prob(r.xs[j + 1], r.means[j], r.stds[j], cfg.log_prob)
            terms.append(rl.ppo_clip_loss(lp, lp_old, adv, cfg.clip_eps, cfg.adv_clip, mask=mask, kept=kept))
        if subset:
            logs["loss_ppo"] = float(sum(terms).detach())
        j = cfg.stage1.num_steps - 1
        v, _, _ = self._student_step(r, j, w.cond)
        x0_hat = sampling.x0_from_velocity(r.xs[j], self.sigmas[j].expand(v.shape[0]), v)
        loss_dm = self._last_step_dm_loss(x0_hat, w.cond, w.gen, mask_last, kept_last)
        terms.append(cfg.lambda_dm * loss_dm)
        logs["loss_dm"] = float(loss_dm.detach())
        if cfg.reward_term != "grpo":
            reward = self.rewards.total(self.base.decode(x0_hat), w.prompts, differentiable_only=True)
            loss_bp = rl.masked_mean(torch.relu(cfg.tau - reward), mask_last, kept_last)
            terms.append(self.reward_backprop_weight() * loss_bp)
            logs["loss_bp"], logs["bp_reward_mean"] = float(loss_bp.detach()), float(reward.detach().mean())
        return sum(terms) / (len(subset) + 1), logs

    def _stage2_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        prompts = stage2_prompts(lambda n: batch.draw("reward", n), cfg.group_size,
                                 cfg.stage2_batch_size or len(batch.prompts))  # (N,) global rows, K per prompt
        use_ppo = cfg.reward_term != "backprop"
        subset = rl.choose_subset(cfg.stage1.num_steps - 1, cfg.subset_size, batch.seed) if use_ppo else []
        work = []
        for c in batch.chunks():  # no-grad rollouts of every micro-batch first: advantages are global
            p, gen = c.local(prompts), c.random()
            cond = self.base.encode(p)
            work.append(Chunk(p, cond, gen, c.shard, self.group_rollout(p, cond, subset, batch.seed, gen)))
        logs = self._fake_step2(work, step)  # official order: fake before generator
        adv = keep = kept = None
        if use_ppo:
            adv, keep, logs["reward_mean"] = self.advantages(work, prompts, batch)
            logs["adv_kept_frac"] = float(keep.float().mean())
            kept = rl.kept_per_rank(keep, work[0].shard.world)
        # The official filter removes dropped samples from the whole update, the last step
        # included; the strict (former) rule only masked the PPO term.
        last = (keep, kept) if cfg.drop_rule == "official" else (None, None)
        chunk_logs: list[dict[str, float]] = []

        def losses() -> Iterator[torch.Tensor]:
            for w in work:
                def loc(t: torch.Tensor | None, w: Chunk = w) -> torch.Tensor | None:
                    return None if t is None else w.shard.local(t)

                loss, extra = self._generator_loss(w, subset, loc(adv), (loc(keep), kept), (loc(last[0]), last[1]))
                chunk_logs.append(extra)
                yield loss

        logs["loss_generator"], logs["gen/grad_norm"] = optim.accumulated_step(
            self.state.opt_g, losses(), len(work), self.state.student, cfg.grad_clip, step, "loss_generator")
        logs.update(ac.mean_logs(chunk_logs))
        self.stage2_updates += 1
        stage2_ema_update(self.state.ema, self.stage2_updates, cfg)
        return logs

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
