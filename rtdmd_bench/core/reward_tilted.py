"""RTDMD's stage 2 ("reward-tilted"): its hyper-parameters and the pieces of one stage-2 step that
are pure bookkeeping (METHODS.md section 4). `methods/rtdmd.py` composes them with the AC-DMD
terms (core/acdmd_terms.py) and the GRPO advantages (core/advantages.py).

Sources: official code Harahan/RTDMD (grpo_trainer.py, rtdmd_trainer.py, bp_mixin.py,
utils/ema.py) and configs/rtdmd/*.yaml (the defaults below are the SD3-M ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from rtdmd_bench.core import rl, sampling
from rtdmd_bench.core.advantages import DropRule, StdKind, keep_mask, pad_kept, weighted_advantages
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.core.parallel import BatchRandom, Shard
from rtdmd_bench.ranges import AdamBeta, GroupSize, NonNegative, NonNegativeInt, Positive, PositiveInt, Unit


@dataclass
class RewardTiltedConfig:
    """Stage-2 hyper-parameters; defaults are the official configs/rtdmd/sd3m.yaml."""

    group_size: GroupSize = 16
    """K >= 2 samples per prompt, one GRPO group (official SD3-M: 16; SD3.5/FLUX.2: 24)."""
    stage2_batch_size: NonNegativeInt = 0
    """Samples per stage-2 step (0 = train.batch_size): stage2_batch_size // group_size prompts
    drawn from the run's reward prompt set, group_size samples each. Official SD3-M on 8 GPUs:
    num_batches_per_epoch 16 x sample_batch_size 2 x 8 = 256 (16 prompts x 16)."""
    subset_size: PositiveInt = 2
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
    lr: NonNegative = 3e-6
    """Stage-2 generator AdamW learning rate (official 3e-6)."""
    betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    """Stage-2 generator AdamW betas (official 0.9, 0.999)."""
    weight_decay: NonNegative = 1e-4
    """Stage-2 generator AdamW weight decay (official 1e-4)."""
    grad_clip: NonNegative = 1.0
    """Stage-2 gradient-norm clip of both networks (official 1)."""
    lr_fake: NonNegative = 3e-5
    """Stage-2 fake-score AdamW learning rate (official 3e-5; betas and decay as in stage 1)."""
    clip_eps: Positive = 1e-5
    """PPO ratio clip epsilon (official clip_range 1e-5)."""
    adv_clip: Positive = 5.0
    """Advantages are clipped to +-this in the PPO term (official adv_clip_max 5)."""
    lambda_dm: NonNegative = 1e-3
    """Weight of the last-step DM term (official last_step_loss.weight 1e-3)."""
    lambda_r: NonNegative = 1e-4
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
    ema_decay: Unit = 0.9
    """Stage-2 parameter EMA decay, warmed up as min((1+n)/(10+n), decay) (official 0.9)."""
    ema_interval: PositiveInt = 8
    """Stage-2 EMA update every this many optimiser steps (official ema_update_interval 8)."""
    num_batches_per_epoch: PositiveInt = 16
    """Official gradient-accumulation micro-batches per stage-2 optimiser step (16 in every official
    config). It fixes two official behaviours, not how the suite splits work for memory
    (train.micro_batches does that): how often the EMA wrapper is stepped per optimiser step (see
    ema_pattern) and the multiple to which the kept samples are padded (see drop_rule)."""
    ema_pattern: Literal["official", "single"] = "official"
    """official: the official EMA wrapper is stepped after each of the num_batches_per_epoch
    micro-batches while its counter advances once per optimiser step, so at every ema_interval-th
    step the unchanged parameters are averaged in num_batches_per_epoch times (effective decay
    0.9^16 ~ 0.19; it looks accidental but is what produced the published models). single: one
    update with ema_decay (an EMA over ~10 x ema_interval steps)."""
    adv_std: StdKind = "population"
    """Std of the advantage normalisations (per reward and the re-standardisation of the weighted
    sum): population = numpy's np.std (ddof 0), official; unbiased = torch's std (ddof 1), the
    suite's former choice."""
    adv_eps: Positive = 1e-4
    """Added to those stds (official 1e-4; the suite's former 1e-6)."""
    drop_rule: DropRule = "official"
    """Samples left out of the generator update: official = re-standardised advantage exactly 0.0
    (a group whose samples all scored the same comes out ~1e-17 and is KEPT), then padding with
    dropped samples to a multiple of num_batches_per_epoch; the last-step terms also use only the
    kept samples. strict = the suite's former rule: |weighted advantage| <= 1e-12 BEFORE
    re-standardising (constant groups dropped), no padding, last-step terms on every sample."""
    stage2_adapters: Literal["restart", "continue"] = "restart"
    """LoRA bases at the stage switch: restart = the stage-1 adapters are frozen into the model and
    fresh Gaussian-init adapters are trained (official merge_before_training + new LoRA: the same
    function, a different optimisation); continue = keep training the stage-1 adapters. Bases
    that train whole networks (toy2d, digits) have no adapter to restart: both continue."""


Masked = tuple["torch.Tensor | None", "float | None"]  # (row mask, global kept count per rank)


@dataclass
class Chunk:
    """One micro-batch of a stage-2 step: its rows' prompts, conditioning, randomness, shard and
    no-grad rollout."""

    prompts: list[str]
    cond: Any
    gen: BatchRandom
    shard: Shard
    rollout: sampling.Rollout


def stage2_prompts(draw: Any, group_size: int, samples: int) -> list[str]:
    """The step's global rows: max(1, samples // K) prompts from `draw(n)` (the reward prompt set),
    each repeated K = group_size times (a group)."""
    return [p for p in draw(max(1, samples // group_size)) for _ in range(group_size)]


def grpo_advantages(scores: dict[str, Tensor], prompts: list[str], weights: dict[str, float],
                    cfg: RewardTiltedConfig, num_steps: int, seed: int) -> tuple[Tensor, Tensor]:
    """(A (N,), keep (N,) bool) of the global batch: RTDMD's per-prompt advantages with the
    configured std and eps, then the drop rule (official: exact zeros dropped, padding drawn from
    a generator of its own seeded by the step seed, the same on every rank)."""
    a, raw = weighted_advantages(scores, prompts, weights, num_steps, cfg.adv_std, cfg.adv_eps)
    keep = keep_mask(a, raw, cfg.drop_rule)
    if cfg.drop_rule == "official":
        keep = pad_kept(keep, cfg.num_batches_per_epoch, torch.Generator().manual_seed(rl.stable_seed("pad", seed)))
    return a, keep


def stage2_ema_update(ema: EMA, updates_done: int, cfg: RewardTiltedConfig) -> None:
    """Official EMAModuleWrapper after optimiser step n = updates_done: update when
    (n + 1) % ema_interval == 0 with warm-up decay min((1 + n)/(10 + n), ema_decay), repeated
    num_batches_per_epoch times under the official pattern. (The official repeats come 1 at the
    step and the rest at the start of the next epoch, before the parameters change again: the
    same result, except for a run evaluated or ended right after such a step, which the official
    schedule of 1000 steps with evaluations every 50 never does.)"""
    n = updates_done
    if (n + 1) % cfg.ema_interval == 0:
        ema.decay = min((1 + n) / (10 + n), cfg.ema_decay)
        ema.update(cfg.num_batches_per_epoch if cfg.ema_pattern == "official" else 1)
