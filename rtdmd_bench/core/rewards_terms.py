"""Reward-side loss terms of the DMD + RL baselines (METHODS.md sections 5, 6, 7).

Pure functions (no network calls): the methods evaluate the networks and hand the tensors here.
- `annealed_beta_sigma`: DMDR-style timesteps, Beta(a, b) annealed linearly to U (section 5).
- `target_group_advantages`, `weighted_dmd_loss`: GDMD-style rewards on the DMD implicit
  targets T_k = sg(x0 - g_k) (section 6, suite definition).
- `dm_reward`, `dm_reward_weight`: GNDM's distribution-matching reward R_dm (section 7,
  suite definition), and `adaptive_scales` for GNDMR's combination with external rewards.
- `stochastic_steps`, `rollout_log_probs`, `policy_log_probs`, `ppo_over_steps`: the GRPO
  term on the stochastic CPS steps of a stored rollout (DMD+RL `grpo`, GNDM).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rtdmd_bench.core import rl, sampling
from rtdmd_bench.core.parallel import BatchRandom, Shard
from rtdmd_bench.core.sampling import LogProbMode, Rollout, VelocityFn


def annealed_beta_sigma(n: int, generator: torch.Generator | BatchRandom, start: tuple[float, float], progress: float,
                        lo: float = 0.02, hi: float = 0.98) -> Tensor:
    """(n,) sigma in [lo, hi] from Beta(a, b) whose parameters move linearly from `start` to (1, 1)
    (uniform) as `progress` goes 0 -> 1. With a > b early samples sit at high noise (DMDR's
    "dynamic renoise sampling": coarse structure first), later ones are uniform as in DMD2.

    torch's Beta sampler takes no Generator, so the draw runs in a forked global RNG seeded from
    `generator` (deterministic given the generator's state, and the global RNG is left untouched)."""
    p = min(max(float(progress), 0.0), 1.0)
    a = start[0] + (1.0 - start[0]) * p
    b = start[1] + (1.0 - start[1]) * p
    if isinstance(generator, BatchRandom):  # the rank's rows of the global batch's draws
        seed, shard = generator.integer(0, 2 ** 62), generator.shard
    else:
        seed, shard = int(torch.randint(0, 2 ** 62, (1,), generator=generator)), Shard()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u = shard.local(torch.distributions.Beta(torch.tensor(a), torch.tensor(b)).sample((n * shard.world,)))
    return lo + (hi - lo) * u


def target_group_advantages(rewards: Tensor, clip: float = 1.0, eps: float = 1e-6) -> Tensor:
    """(B, K) rewards of the K implicit targets of each sample -> (B, K) advantages
    clip((R_k - mean_k R) / (std_k R + eps), -clip, clip) (GDMD suite definition, section 6).

    std is the unbiased std over the K targets of one sample; K = 1 gives zeros."""
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return (centred / (rewards.std(dim=1, keepdim=True) + eps)).clamp(-clip, clip)


def weighted_dmd_loss(x0: Tensor, targets: Tensor, advantages: Tensor, lam: float) -> Tensor:
    """mean_{b,k} (1 + lam A_bk) * 0.5 * mean_d (x0_b - T_bk)^2 (GDMD, section 6).

    x0: (B, ...) with grad; targets: (K, B, ...) detached implicit targets sg(x0 - g_k);
    advantages: (B, K). With lam = 0 this is the mean over k of `dmd.dmd_generator_loss`, i.e.
    DMD with K targets. lam in [0, 1] and |A| <= 1 keep every weight >= 0."""
    per = 0.5 * ((x0.unsqueeze(0) - targets.detach()) ** 2).flatten(2).mean(dim=2)  # (K, B)
    weight = 1.0 + lam * advantages.detach().T  # (K, B)
    return (weight * per).mean()


def dm_reward_weight(t: Tensor, kind: Literal["uniform", "elbo"]) -> Tensor:
    """w(t) of R_dm. "uniform": 1. "elbo": (1-t)/t, the weight under which the velocity-MSE
    integral over t is the flow model's ELBO (log-SNR = 2 log((1-t)/t), eps-error = (1-t) x
    velocity error), so R_dm estimates log p_teacher - log p_fake up to the two ELBO gaps."""
    if kind == "uniform":
        return torch.ones_like(t)
    if kind == "elbo":
        return (1 - t) / t
    raise ValueError(f"unknown R_dm weighting {kind!r}; valid: uniform, elbo")


def dm_reward(x0: Tensor, noise: Tensor, v_real: Tensor, v_fake: Tensor, weight: Tensor) -> Tensor:
    """R_dm = mean_m w_m (||v_fake - (eps_m - x0)||^2 - ||v_real - (eps_m - x0)||^2) / D  -> (B,).

    x0: (B, ...) samples; noise, v_real, v_fake: (M, B, ...) the M draws' noises and the two
    models' velocities at x_t = (1-t_m) x0 + t_m eps_m; weight: (M, B) w(t_m). A sample the
    teacher denoises better than the fake score (the generator's own model) gets a higher reward:
    E_theta[R_dm] approximates -KL(p_theta || p_teacher) (GNDM suite definition, section 7)."""
    target = noise - x0.unsqueeze(0)  # (M, B, ...)
    err_fake = ((v_fake - target) ** 2).flatten(2).mean(dim=2)  # (M, B), mean = sum / D
    err_real = ((v_real - target) ** 2).flatten(2).mean(dim=2)
    return (weight * (err_fake - err_real)).mean(dim=0)


AdaptiveGuard = Literal["floor", "none"]


def adaptive_scales(a_dm: Tensor, external: dict[str, Tensor], running: dict[str, float],
                    momentum: float, fraction: float, eps: float = 1e-8,
                    guard: AdaptiveGuard = "none", floor: float = 0.1
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """GNDMR's adaptive combination (section 7, suite definition): the scale c_k of each external
    advantage A_k so that its running magnitude is `fraction` x the running magnitude of A_dm.

    Magnitude = batch mean |A|; running = EMA with `momentum` (first call: the batch value).
    guard="none": c_k = fraction run_dm / (run_k + eps). A reward constant within every group has
    A_k = 0, so run_k decays geometrically to 0 and c_k grows to ~fraction run_dm / eps (1e7).
    guard="floor" (docs/gndmr_scale_guard.md): a batch whose |A_k| magnitude is below
    `floor` x A_dm's (no within-group signal) leaves run_k unchanged, and the denominator is at
    least `floor` x run_dm, so c_k <= fraction / floor however little signal the reward carries.
    Returns (scales by reward name, updated running magnitudes incl. key "dm"); pure: `running`
    is not modified."""
    new = dict(running)
    batch = {"dm": float(a_dm.abs().mean())} | {k: float(a.abs().mean()) for k, a in external.items()}
    for k, m in batch.items():
        if guard == "floor" and k != "dm" and m < floor * batch["dm"]:
            continue  # a degenerate batch measures no magnitude: keep the last informative one
        new[k] = m if k not in running else momentum * running[k] + (1 - momentum) * m
    if guard == "floor":
        scales = {k: fraction * new["dm"] / max(new.get(k, 0.0), floor * new["dm"], eps) for k in external}
    else:
        scales = {k: fraction * new["dm"] / (new[k] + eps) for k in external}
    return scales, new


def stochastic_steps(sigmas: Tensor) -> list[int]:
    """Indices j of the sampler steps with sigma_{j+1} > 0 (the last step to 0 is deterministic)."""
    return [j for j in range(len(sigmas) - 1) if float(sigmas[j + 1]) > 0]


def rollout_log_probs(r: Rollout, steps: list[int], mode: LogProbMode) -> list[Tensor]:
    """Behaviour-policy log-probs log p_old(x_{j+1} | x_j), each (B,), from a stored rollout."""
    return [sampling.cps_log_prob(r.xs[j + 1], r.means[j], r.stds[j], mode).detach() for j in steps]


def policy_log_probs(velocity: VelocityFn, r: Rollout, sigmas: Tensor, eta: float, steps: list[int],
                     mode: LogProbMode) -> list[Tensor]:
    """Current-policy log-probs of the stored transitions x_j -> x_{j+1}, each (B,), with grad
    through `velocity` (one network call per step in `steps`)."""
    out = []
    for j in steps:
        x, b = r.xs[j].detach(), r.xs[j].shape[0]
        sig, sig_next = sigmas[j].expand(b).to(x), sigmas[j + 1].expand(b).to(x)
        v = velocity(x, sig, torch.full((b,), j, dtype=torch.long, device=x.device))
        mean, std = sampling.cps_mean_std(x, sig, v, sig_next, eta)
        out.append(sampling.cps_log_prob(r.xs[j + 1].detach(), mean, std, mode))
    return out


def ppo_over_steps(log_probs: list[Tensor], old_log_probs: list[Tensor], advantages: Tensor,
                   clip_eps: float, adv_clip: float | None, mask: Tensor | None = None,
                   kept: float | None = None) -> Tensor:
    """Mean over the given steps of `rl.ppo_clip_loss` (every step's transition shares the
    sample's advantage, as in Flow-GRPO)."""
    terms = [rl.ppo_clip_loss(lp, old, advantages, clip_eps, adv_clip, mask, kept)
             for lp, old in zip(log_probs, old_log_probs)]
    return torch.stack(terms).mean()
