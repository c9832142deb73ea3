"""GRPO advantages and the zero-advantage drop, as RTDMD's stage 2 computes them (METHODS.md 4.3).

Source: Harahan/RTDMD `GRPOTrainer._grpo_compute_advantages` (rtdmd/trainers/grpo_trainer.py) with
`PerPromptStatTracker(global_std=True)` (rtdmd/trainers/grpo_utils.py), the official configs'
`weight_advantages: true`, `per_prompt_stat_tracking: true`, `per_prompt_global_std: true`.

Per reward k (scores r, one per sample of the step's global batch):
    A_k = (r - mean of r over the samples with the same prompt) / (std of r over the batch + eps)
with numpy's POPULATION std (ddof = 0) and eps = 1e-4; then
    A = sum_k w_k A_k,   A <- (A - mean A) / (std A + eps)      (population std again).
A sample is dropped from the generator update only when its re-standardised advantage is
exactly 0.0 (in float32, as the official mask reads it); a group whose samples all scored the
same comes out near 1e-17 and is kept. The kept samples are then padded with dropped ones up to
a multiple of `num_batches_per_epoch` (the official sub-batch count), or, when nothing is kept,
`num_batches_per_epoch` random samples are kept; padded samples carry advantage 0, so they add
nothing to the PPO sum but count in its mean, and they take part in the last-step terms.

Bit-faithfulness: whether an advantage is exactly 0 depends on rounding, so the arithmetic below
follows the official numpy calls step by step (float64, rewards tiled over the T trained
timesteps into (N, T) arrays, per-prompt means over the flattened history, global std over axis
0). The official code then keeps every sample's advantage per timestep; the T columns are equal,
so one column is returned.

The suite's former form (`std="unbiased"`, eps 1e-6, drop |A| <= 1e-12 BEFORE re-standardising)
remains available through the callers' config switches.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor

StdKind = Literal["population", "unbiased"]
DropRule = Literal["official", "strict"]


def per_prompt_advantages(rewards: np.ndarray, prompts: Sequence[str], std: StdKind = "population",
                          eps: float = 1e-4) -> np.ndarray:
    """One reward's advantages (N, T) from its tiled scores (N, T) float64: centred by the mean of
    the samples sharing a prompt, divided by the batch std + eps (official PerPromptStatTracker
    with global_std=True and a fresh history)."""
    ddof = 0 if std == "population" else 1
    prompts_arr = np.array(list(prompts))
    scale = np.std(rewards, axis=0, keepdims=True, ddof=ddof) + eps  # (1, T)
    out = np.zeros_like(rewards)
    for prompt in np.unique(prompts_arr):
        rows = rewards[prompts_arr == prompt]  # (n, T)
        history = np.array(rows.flatten().tolist())  # the tracker's flat list of n * T values
        out[prompts_arr == prompt] = (rows - np.mean(history, axis=0, keepdims=True)) / scale
    return out


def weighted_advantages(scores: dict[str, Tensor], prompts: Sequence[str], weights: dict[str, float],
                        num_timesteps: int = 1, std: StdKind = "population", eps: float = 1e-4
                        ) -> tuple[Tensor, Tensor]:
    """(A (N,) float32 re-standardised, A_raw (N,) float64 weighted sum before re-standardising).

    scores: reward name -> (N,) scores of the global batch, in the order the weights were given
    (the official sum runs in `reward_fn` order); prompts: (N,) the prompt of each sample."""
    n = len(prompts)
    total: np.ndarray | int = 0  # Python's sum() starts at 0 in the official code
    for name, w in weights.items():
        if name not in scores:
            continue
        r = scores[name].detach().double().cpu().numpy().reshape(n)
        tiled = np.tile(r[:, None], (1, num_timesteps))  # (N, T), as the trainer tiles rewards
        total = total + w * per_prompt_advantages(tiled, prompts, std, eps)
    if isinstance(total, int):
        raise ValueError("no scores for the weighted rewards")
    if std == "population":  # official: mean and std over every element of the (N, T) array
        restd = (total - total.mean()) / (total.std() + eps)
    else:  # the suite's former torch form: the sample std over the N samples
        restd = (total - total[:, 0].mean()) / (total[:, 0].std(ddof=1) + eps)
    return torch.as_tensor(restd, dtype=torch.float32)[:, 0], torch.as_tensor(total[:, 0])


def keep_mask(advantages: Tensor, raw: Tensor | None = None, rule: DropRule = "official") -> Tensor:
    """(N,) bool: the samples the generator update uses, before padding.

    official: the float32 re-standardised advantage is not exactly 0; strict (the suite's former
    rule): the weighted advantage before re-standardising is not within 1e-12 of 0."""
    if rule == "official":
        return advantages.float() != 0
    if raw is None:
        raise ValueError("the strict drop rule needs the advantages before re-standardising")
    return raw.abs() > 1e-12


def pad_kept(keep: Tensor, multiple: int, generator: torch.Generator) -> Tensor:
    """(N,) bool -> (N,) bool: the official padding. If nothing is kept, `multiple` random samples
    are (all of them if fewer); then, while the kept count is not a multiple of `multiple` and
    enough dropped samples exist, that many random dropped samples are added back."""
    keep = keep.clone()
    if multiple <= 1:
        return keep
    if not bool(keep.any()) and keep.numel():
        idx = torch.randperm(keep.numel(), generator=generator)[: min(keep.numel(), multiple)]
        keep[idx] = True
    count = int(keep.sum())
    if count % multiple:
        dropped = torch.nonzero(~keep).flatten()
        need = multiple - count % multiple
        if len(dropped) >= need:
            keep[dropped[torch.randperm(len(dropped), generator=generator)[:need]]] = True
    return keep
