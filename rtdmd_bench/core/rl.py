"""Policy-gradient pieces shared by RTDMD stage 2, DMD+RL (grpo), GNDM (METHODS.md 4, 5, 7)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, std: str = "batch", eps: float = 1e-6) -> Tensor:
    """(B,) -> (B,): (r - group mean) / std, groups are consecutive blocks of `group_size`.

    std="batch": the std of the whole batch (RTDMD's global std); "group": per-group std."""
    if rewards.numel() % group_size:
        raise ValueError(f"batch {rewards.numel()} is not a multiple of group size {group_size}")
    r = rewards.view(-1, group_size)  # (G, K)
    centred = r - r.mean(dim=1, keepdim=True)
    scale = r.std(dim=1, keepdim=True) if std == "group" else rewards.std()
    return (centred / (scale + eps)).reshape(-1)


def kept_per_rank(keep: Tensor, world: int) -> float:
    """The global kept count / world size (`ppo_clip_loss`'s `kept` for one rank)."""
    return float(keep.float().sum()) / world


def combine_advantages(advantages: dict[str, Tensor], weights: dict[str, float], eps: float = 1e-6
                       ) -> tuple[Tensor, Tensor]:
    """Weighted sum of per-reward advantages, re-standardised over the batch.

    Returns (A (B,), keep (B,) bool). `keep` drops samples whose weighted advantage is exactly
    zero BEFORE re-standardisation (every member of their group scored the same: no signal)."""
    total = sum(weights[k] * a for k, a in advantages.items())
    keep = total.abs() > 1e-12
    restd = (total - total.mean()) / (total.std() + eps) if total.numel() > 1 else total
    return restd, keep


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_eps: float,
                  adv_clip: float | None = None, mask: Tensor | None = None,
                  kept: float | None = None) -> Tensor:
    """PPO-clip: mean over kept samples of -min(A rho, A clip(rho, 1-e, 1+e)), rho = exp(lp - lp_old).

    `kept` divides the masked sum instead of mask.sum(): with data parallelism, the global kept
    count / world size, so that the mean of the ranks' losses is the global masked mean."""
    adv = advantages if adv_clip is None else advantages.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_prob - old_log_prob)
    per = -torch.minimum(adv * ratio, adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))  # (B,)
    return masked_mean(per, mask, kept)


def choose_subset(num_stochastic: int, size: int, seed: int) -> list[int]:
    """SubGRPO: a sorted subset of `size` of the stochastic steps 0..num_stochastic-1, drawn from
    an RNG seeded only by `seed` (the epoch seed shared by every rank)."""
    if not 1 <= size <= num_stochastic:
        raise ValueError(f"subset size {size} must be in [1, {num_stochastic}]")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_stochastic, generator=g)[:size].tolist())


def grouped_prompts(prompts: Sequence[str], group_size: int) -> list[str]:
    """Prompt-major groups with the batch's sample count: the first max(1, B // K) prompts, each
    repeated K times, so `train.batch_size` means samples per step for every method."""
    distinct = list(prompts[: max(1, len(prompts) // group_size)])
    return [p for p in distinct for _ in range(group_size)]


def stable_seed(*parts: object) -> int:
    """A seed from text parts that is identical across processes (unlike Python's hash)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:7], "little")


def group_shared_noise(shape: Sequence[int], prompts: Sequence[str], step: int, epoch: int,
                       device: torch.device | str = "cpu") -> Tensor:
    """(B, *shape) noise seeded per row from (prompt, step, epoch): identical for every sample of
    a prompt wherever its rows live (any rank, any micro-batch), different across prompts (the
    official `_make_shared_noise` seeds each sample from its prompt's hash, step and epoch)."""
    cache: dict[str, Tensor] = {}
    for p in prompts:
        if p not in cache:
            gen = torch.Generator().manual_seed(stable_seed(p, step, epoch))
            cache[p] = torch.randn(tuple(shape), generator=gen)
    return torch.stack([cache[p] for p in prompts]).to(device)


def masked_mean(per_row: Tensor, mask: Tensor | None, kept: float | None = None) -> Tensor:
    """(B,) -> scalar: the mean over rows where `mask`; `kept` divides the masked sum instead of
    mask.sum() (data parallelism / micro-batches: the global kept count / the number of ranks, so
    that averaging the ranks' values gives the global masked mean). No mask: the plain mean."""
    if mask is None:
        return per_row.mean()
    m = mask.to(per_row.dtype)
    count = m.sum() if kept is None else torch.as_tensor(float(kept))
    return (per_row * m).sum() / count.clamp_min(1.0)
