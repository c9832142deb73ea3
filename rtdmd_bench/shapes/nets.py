"""The `shapes` networks: the prompt tokenizer, the flow teacher and the learned reward proxy.

- `tokenize`: prompt -> (L,) word ids over the benchmark's fixed vocabulary (0 = padding; the
  empty prompt, all padding, is the null prompt of classifier-free guidance).
- `ShapesFlowNet`: a prompt-conditioned flow-matching velocity model on object-slot latents
  (the digits `FlowNet`'s adaLN residual MLP, conditioned on a learned embedding of the word
  sequence instead of a class), with the same zero-initialised sampler-step embedding for the
  student / fake score.
- `ProxyNet`: a small CNN + prompt embedding predicting the evaluator's partial credit: the
  differentiable `shapes-proxy` reward; its image features carry the suite's FID, FID-T, diversity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.digits.nets import AdaLNBlock, sigma_embedding
from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import NonNegative, NonNegativeInt, PositiveInt, Unit
from rtdmd_bench.shapes.scenes import all_rows
from rtdmd_bench.shapes.slots import LATENT_SHAPE

MAX_WORDS = 12  # the longest prompt ("a photo of a red circle and a blue square") has 10


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """"<pad>" then every word of every benchmark prompt, sorted: the tokenizer's ids."""
    return ("<pad>",) + tuple(sorted({w for r in all_rows() for w in r["prompt"].split()}))


def tokenize(prompts: Sequence[str]) -> Tensor:
    """(B, MAX_WORDS) long word ids, padded with 0; "" gives all padding (the CFG null prompt).
    A word outside the vocabulary raises UserError naming it."""
    if isinstance(prompts, str):
        raise UserError("shapes: expected a list of prompts, got a single string")
    index = {w: i for i, w in enumerate(vocabulary())}
    out = torch.zeros(len(prompts), MAX_WORDS, dtype=torch.long)
    for b, p in enumerate(prompts):
        words = str(p).lower().split()
        unknown = [w for w in words if w not in index]
        if unknown or len(words) > MAX_WORDS:
            raise UserError(f"shapes: cannot encode prompt {p!r} ({'unknown words ' + ', '.join(unknown) if unknown else 'too long'}); "
                            "prompts follow GenEval's templates, e.g. 'a photo of a red circle and a blue square'")
        out[b, :len(words)] = torch.tensor([index[w] for w in words], dtype=torch.long)
    return out


class PromptEmbedding(nn.Module):
    """(B, L) word ids -> (B, dim): a word embedding per position, concatenated, then linear (so
    word order, hence which colour binds to which shape, is visible to the network)."""

    def __init__(self, dim: int, word_dim: int = 32) -> None:
        super().__init__()
        self.words = nn.Embedding(len(vocabulary()), word_dim)
        self.proj = nn.Linear(MAX_WORDS * word_dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, L) -> (B, dim)
        return self.proj(self.words(tokens).flatten(1))


@dataclass
class TeacherConfig:
    """Architecture and training of the shapes flow teacher (hashed into its cache key)."""

    hidden: PositiveInt = 256
    """Width of the residual MLP."""
    blocks: PositiveInt = 3
    """Number of adaLN residual blocks."""
    step_slots: PositiveInt = 16
    """Size of the sampler-step embedding table used by student / fake (max steps + 1 slots)."""
    train_steps: NonNegativeInt = 2000
    """Optimiser steps of flow-matching training (about 2 minutes on a loaded 2-core CPU)."""
    batch_size: PositiveInt = 128
    """Training batch size."""
    dataset_size: PositiveInt = 20000
    """Scenes in the (fixed, deterministic) training set; each for a prompt of any tag."""
    lr: NonNegative = 1e-3
    """AdamW learning rate (cosine-decayed to 0)."""
    prompt_dropout: Unit = 0.1
    """Probability a training prompt is replaced by the null prompt (CFG training)."""
    ema: Unit = 0.999
    """EMA decay of the weights that are cached."""
    seed: int = 0
    """Seed of initialisation, data, order, noise and sigmas: training is deterministic."""


class ShapesFlowNet(nn.Module):
    """Prompt-conditioned velocity model on (4, 12) object-slot latents (rtdmd_bench/shapes/slots.py):
    the digits FlowNet's adaLN residual MLP, conditioned on sigma and the prompt's word sequence.

    `step` (student / fake score only) indexes a zero-initialised embedding added to the
    conditioning, so a copy of the teacher equals the teacher until trained; None adds nothing."""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        h, d = cfg.hidden, math.prod(LATENT_SHAPE)
        self.inp = nn.Linear(d, h)
        self.sigma_mlp = nn.Sequential(nn.Linear(64, h), nn.SiLU(), nn.Linear(h, h))
        self.prompt = PromptEmbedding(h)
        self.step = nn.Embedding(cfg.step_slots, h)
        nn.init.zeros_(self.step.weight)
        self.blocks = nn.ModuleList(AdaLNBlock(h) for _ in range(cfg.blocks))
        self.out = nn.Sequential(nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, d))

    def forward(self, x: Tensor, sigma: Tensor, tokens: Tensor, step: Tensor | None = None) -> Tensor:
        # x (B, 4, 12), sigma (B,), tokens (B, L) long, step (B,) long | None -> v (B, 4, 12)
        e = self.sigma_mlp(sigma_embedding(sigma, 64)) + self.prompt(tokens)  # (B, H)
        if step is not None:
            if step.min() < 0 or step.max() >= self.step.num_embeddings:
                raise UserError(f"shapes: sampler step index {step.tolist()} outside 0.."
                                f"{self.step.num_embeddings - 1}; raise base.teacher.step_slots")
            e = e + self.step(step)
        h = self.inp(x.flatten(1))  # (B, H)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h).view_as(x)


def guided_velocity(net: ShapesFlowNet, x: Tensor, sigma: Tensor, tokens: Tensor, cfg_scale: float | None,
                    step: Tensor | None = None) -> Tensor:
    """CFG (METHODS.md section 1): v = v_uncond + w (v_cond - v_uncond) against the empty prompt;
    None = conditional only. Both passes run as one batch of 2B."""
    if cfg_scale is None:
        return net(x, sigma, tokens, step)
    both = net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([tokens, torch.zeros_like(tokens)]),
               None if step is None else torch.cat([step, step]))
    v_cond, v_uncond = both.chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@dataclass
class ProxyConfig:
    """Architecture and training of the learned partial-credit proxy (hashed into its cache key)."""

    channels: PositiveInt = 32
    """Channels of the conv layers (the first has half)."""
    feature_dim: PositiveInt = 64
    """Width of the image features: the dimension of the suite's FID features."""
    train_steps: NonNegativeInt = 1500
    """Optimiser steps."""
    batch_size: PositiveInt = 128
    """Training batch size."""
    dataset_size: PositiveInt = 10000
    """Renders in the fixed training set (each scored against its own and other prompts)."""
    lr: NonNegative = 2e-3
    """AdamW learning rate (cosine-decayed to 0)."""
    held_out_size: PositiveInt = 1000
    """Held-out renders (seeds from 10000) on which the proxy's error is measured and recorded."""
    noise_std: NonNegative = 0.15
    """Largest std of the Gaussian pixel noise added in training (uniform in [0, this] per image),
    so the proxy reads generated (noisy) images as it reads renders."""
    seed: int = 0
    """Seed of initialisation, data and noise."""


class ProxyNet(nn.Module):
    """(B, 3, 24, 24) images in [0, 1] and (B, L) word ids -> (B,) predicted partial credit in (0, 1)."""

    def __init__(self, cfg: ProxyConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.conv = nn.Sequential(
            nn.Conv2d(3, c // 2, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c // 2, c, 3, padding=1, stride=2), nn.SiLU(),  # (B, c, 12, 12)
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.SiLU(),  # (B, 2c, 6, 6)
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 36, cfg.feature_dim), nn.SiLU())
        self.prompt = PromptEmbedding(cfg.feature_dim)
        self.head = nn.Sequential(nn.Linear(3 * cfg.feature_dim, 128), nn.SiLU(), nn.Linear(128, 1))
        self.feature_dim = cfg.feature_dim

    def features(self, images: Tensor) -> Tensor:  # (B, 3, 24, 24) in [0, 1] -> (B, feature_dim)
        return self.fc(self.conv(images * 2 - 1))

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:  # -> (B,) in (0, 1)
        f, g = self.features(images), self.prompt(tokens)
        return torch.sigmoid(self.head(torch.cat([f, g, f * g], dim=1)).squeeze(1))
