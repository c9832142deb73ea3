"""Object-slot latents and their differentiable renderer: the `shapes` base's latent space and "VAE".

A latent is (SLOTS, FEATURES) = (4, 12): per slot [presence, x, y, size, 5 colour logits, 3 shape
logits], values about +-1 (a scene encodes as presence +1 / -1, one-hot +1 / -1 logits, positions
(c - 12) / 12, size (r - 3.3) / 0.3). `decode_slots` draws every slot softly (a sigmoid of its signed
distance, width TAU pixels; softmax-weighted colour and shape; presence as opacity) over black, so
rewards can be back-propagated to the latents, as through a real base's VAE decoder.

Why slots and not pixels: a small MLP flow on 24x24x3 pixels, and an MLP + conv head, trained for
minutes on this CPU, still sampled noise (its 256-wide bottleneck cannot carry the per-pixel noise
that the velocity needs); on 48 slot numbers the digits-style MLP learns in minutes and still makes
the compositional mistakes (counts, bindings, relations) the benchmark is about.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from torch import Tensor

from rtdmd_bench.shapes.scenes import COLOURS, IMAGE_SIZE, PALETTE, SHAPES, SceneObject

SLOTS = 4
FEATURES = 4 + len(COLOURS) + len(SHAPES)
LATENT_SHAPE = (SLOTS, FEATURES)
TAU = 0.1
"""Edge softness of the renderer in pixels (a pixel centre 0.5 px inside an edge is 99% covered; at
0.25 the detector misread 5% of decoded scenes, at 0.1 none of 300)."""
SHARPNESS = 6.0
"""Presence, colour and shape logits are multiplied by this before sigmoid / softmax, so +-1 codes
decode to (almost) pure opacity, colour and shape."""
RADIUS_MID, RADIUS_HALF = 3.3, 0.3


def encode_scene(scene: Sequence[SceneObject], rng: random.Random) -> Tensor:
    """(SLOTS, FEATURES) code of a scene of at most SLOTS objects, in slots of random order (the
    flow learns a permutation-symmetric distribution); absent slots have presence -1, all else -1 / 0."""
    if len(scene) > SLOTS:
        raise ValueError(f"a scene of {len(scene)} objects does not fit {SLOTS} slots")
    z = torch.full(LATENT_SHAPE, -1.0)
    z[:, 1:4] = 0.0
    for slot, obj in zip(rng.sample(range(SLOTS), len(scene)), scene):
        z[slot, 0] = 1.0
        z[slot, 1] = (obj.cx - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2)
        z[slot, 2] = (obj.cy - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2)
        z[slot, 3] = (obj.r - RADIUS_MID) / RADIUS_HALF
        z[slot, 4 + COLOURS.index(obj.colour)] = 1.0
        z[slot, 4 + len(COLOURS) + SHAPES.index(obj.shape)] = 1.0
    return z


def shape_coverage(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Soft coverage in [0, 1] of circle, square, triangle (the renderer's geometry, scenes.object_mask)
    at pixel offsets dx, dy (..., H, W) from a centre, radius r (..., 1, 1) -> (..., 3, H, W)."""
    circle = torch.sigmoid((r - torch.sqrt(dx * dx + dy * dy + 1e-12)) / TAU)
    square = torch.sigmoid((0.85 * r - dx.abs()) / TAU) * torch.sigmoid((0.85 * r - dy.abs()) / TAU)
    # Triangle, apex up at dy = -r, base at dy = r of half-width 1.15 r: inside when dy <= r and
    # |dx| <= 0.575 (dy + r); each side's distance is its line's normalised residual.
    norm = math.sqrt(1 + 0.575 ** 2)
    side = (0.575 * (dy + r) - dx.abs()) / norm
    triangle = torch.sigmoid((r - dy) / TAU) * torch.sigmoid(side / TAU)
    return torch.stack([circle, square, triangle], dim=-3)


def decode_slots(z: Tensor) -> Tensor:
    """(B, SLOTS, FEATURES) latents -> (B, 3, 24, 24) images in [0, 1], differentiably."""
    b = z.shape[0]
    y, x = torch.meshgrid(torch.arange(IMAGE_SIZE, dtype=z.dtype, device=z.device) + 0.5,
                          torch.arange(IMAGE_SIZE, dtype=z.dtype, device=z.device) + 0.5, indexing="ij")  # (H, W)
    opacity = torch.sigmoid(SHARPNESS * z[..., 0])  # (B, S)
    cx = IMAGE_SIZE / 2 * (1 + z[..., 1])  # (B, S)
    cy = IMAGE_SIZE / 2 * (1 + z[..., 2])
    r = (RADIUS_MID + RADIUS_HALF * z[..., 3]).clamp(1.5, 6.0)
    colour_w = torch.softmax(SHARPNESS * z[..., 4:4 + len(COLOURS)], dim=-1)  # (B, S, C)
    shape_w = torch.softmax(SHARPNESS * z[..., 4 + len(COLOURS):], dim=-1)  # (B, S, 3)
    palette = torch.tensor([PALETTE[c] for c in COLOURS], dtype=z.dtype, device=z.device)  # (C, 3)
    rgb = colour_w @ palette  # (B, S, 3)
    dx = x - cx[..., None, None]  # (B, S, H, W)
    dy = y - cy[..., None, None]
    cover = (shape_coverage(dx, dy, r[..., None, None]) * shape_w[..., None, None]).sum(-3)  # (B, S, H, W)
    alpha = opacity[..., None, None] * cover  # (B, S, H, W)
    image = torch.einsum("bshw,bsc->bchw", alpha, rgb)  # (B, 3, H, W)
    return image.clamp(0, 1).view(b, 3, IMAGE_SIZE, IMAGE_SIZE)
