"""The digits networks (both tiny; trained by `training`, cached by `cache`).

- `FlowNet`: a class-conditional flow-matching velocity model (METHODS.md section 1:
  x_sigma = (1-sigma) x0 + sigma eps, target eps - x0) with a null class for CFG and an
  optional sampler-step embedding for the student / fake score (fake_step_conditioning).
- `DigitClassifier`: a small CNN whose log-probabilities are the `digit-correct` reward and
  whose penultimate features carry the suite's FID / FID-T / diversity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdmd_bench.digits.data import IMAGE_SHAPE, NULL_CLASS, NUM_CLASSES
from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import NonNegative, NonNegativeInt, PositiveInt, Unit


@dataclass
class TeacherConfig:
    """Architecture and training of the digits flow teacher (hashed into its cache key)."""

    hidden: PositiveInt = 256
    """Width of the residual MLP."""
    blocks: PositiveInt = 3
    """Number of adaLN residual blocks."""
    step_slots: PositiveInt = 16
    """Size of the sampler-step embedding table used by student / fake (max steps + 1 slots)."""
    train_steps: NonNegativeInt = 2000
    """Optimiser steps of flow-matching training."""
    batch_size: PositiveInt = 128
    """Training batch size."""
    lr: NonNegative = 1e-3
    """AdamW learning rate (cosine-decayed to 0)."""
    label_dropout: Unit = 0.15
    """Probability a training label is replaced by the null class (CFG training)."""
    ema: Unit = 0.999
    """EMA decay of the weights that are cached (EMA weights sample cleaner digits)."""
    seed: int = 0
    """Seed of initialisation, data order, noise and sigmas: training is deterministic."""


@dataclass
class ClassifierConfig:
    """Architecture and training of the digits CNN classifier (hashed into its cache key)."""

    channels: PositiveInt = 32
    """Channels of the conv layers (the first layer has half)."""
    feature_dim: PositiveInt = 64
    """Width of the penultimate layer: the dimension of the suite's FID features."""
    epochs: NonNegativeInt = 30
    """Passes over the training split."""
    batch_size: PositiveInt = 64
    """Training batch size."""
    lr: NonNegative = 2e-3
    """AdamW learning rate (cosine-decayed to 0)."""
    weight_decay: NonNegative = 1e-4
    """AdamW weight decay."""
    noise_std: NonNegative = 0.1
    """Std of Gaussian pixel noise added in training, so generated (slightly noisy) digits
    are classified as robustly as real ones."""
    seed: int = 0
    """Seed of initialisation, data order and augmentation noise."""


def sigma_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of sigma*1000 (the diffusion-timestep convention). (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
    args = sigma.float()[:, None] * 1000.0 * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class AdaLNBlock(nn.Module):
    """h + MLP(LayerNorm(h) * (1 + scale(e)) + shift(e)): conditioning by modulation (DiT)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(hidden, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, h: Tensor, e: Tensor) -> Tensor:  # (B, H), (B, H) -> (B, H)
        scale, shift = self.modulation(F.silu(e)).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class FlowNet(nn.Module):
    """Class-conditional velocity model on flattened 8x8 digits.

    `label` is 0..9 or NULL_CLASS (unconditional). `step` (student / fake score only) indexes
    a step embedding that is zero-initialised and added to the conditioning, so a copy of the
    teacher equals the teacher exactly, with or without a step, until it is trained; step None
    adds nothing (the teacher never sees a step)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        h, d = cfg.hidden, math.prod(IMAGE_SHAPE)
        self.inp = nn.Linear(d, h)
        self.sigma_mlp = nn.Sequential(nn.Linear(64, h), nn.SiLU(), nn.Linear(h, h))
        self.label = nn.Embedding(NUM_CLASSES + 1, h)
        self.step = nn.Embedding(cfg.step_slots, h)
        nn.init.zeros_(self.step.weight)
        self.blocks = nn.ModuleList(AdaLNBlock(h) for _ in range(cfg.blocks))
        self.out = nn.Sequential(nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, d))

    def forward(self, x: Tensor, sigma: Tensor, label: Tensor, step: Tensor | None = None) -> Tensor:
        # x (B, 1, 8, 8), sigma (B,), label (B,) long, step (B,) long | None -> (B, 1, 8, 8)
        e = self.sigma_mlp(sigma_embedding(sigma, 64)) + self.label(label)  # (B, H)
        if step is not None:
            if step.min() < 0 or step.max() >= self.step.num_embeddings:
                raise UserError(f"digits: sampler step index {step.tolist()} outside 0.."
                                f"{self.step.num_embeddings - 1}; raise base.teacher.step_slots")
            e = e + self.step(step)
        h = self.inp(x.flatten(1))  # (B, H)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h).view_as(x)


class DigitClassifier(nn.Module):
    """Small CNN on (B, 1, 8, 8) images in [-1, 1]: 8x8 -> 4x4 -> 2x2 -> features -> 10 logits."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c // 2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c // 2, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c, 4, 4)
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c, 2, 2)
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * c, cfg.feature_dim), nn.ReLU())
        self.head = nn.Linear(cfg.feature_dim, NUM_CLASSES)
        self.feature_dim = cfg.feature_dim

    def features(self, x: Tensor) -> Tensor:  # (B, 1, 8, 8) -> (B, feature_dim), penultimate
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 8, 8) -> (B, 10) logits
        return self.head(self.features(x))


def guided_velocity(net: FlowNet, x: Tensor, sigma: Tensor, label: Tensor, cfg_scale: float | None,
                    step: Tensor | None = None) -> Tensor:
    """CFG (METHODS.md section 1): v = v_uncond + w (v_cond - v_uncond); None = conditional only.

    Conditional and null-class passes run as one batch of 2B."""
    if cfg_scale is None:
        return net(x, sigma, label, step)
    null = torch.full_like(label, NULL_CLASS)
    both = net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([label, null]),
               None if step is None else torch.cat([step, step]))
    v_cond, v_uncond = both.chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)
