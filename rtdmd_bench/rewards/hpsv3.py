"""HPSv3 reward (MizzenAI/HPSv3, "Towards Wide-Spectrum Human Preference Score"): Qwen2-VL-7B-Instruct
with HPSv3's head; score = mu (~10-16 on RTDMD's tables), as the `hpsv3` package's
`HPSv3RewardInferencer.reward(...)[:, 0]` and RTDMD's `HPSv3Scorer`.

Pipeline per image (hpsv3 1.0.0, `inference.py::prepare_batch` and its copy of qwen-vl-utils):
[0, 1] image -> uint8 `(x * 255).round()` (RTDMD's scorer adapter) -> PIL RGB -> bicubic PIL resize
to HPSv3's pixel budget (`budget_size`: 448 x 448 for 512- and 1024-px squares) -> the Qwen2-VL
processor -> the model of rtdmd_bench/rewards/hpsv3_model.py (sequential positions, `<|Reward|>`
read-out, bf16 backbone, float32 head). Not differentiable (RTDMD never back-propagates through it).

The model and its files: rtdmd_bench/rewards/hpsv3_model.py (memory figures in its docstring);
the tiny random stand-in of the same classes: rtdmd_bench/rewards/tiny.py (`tiny-hpsv3`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.rewards.clip_based import batched, placed
from rtdmd_bench.rewards.hpsv3_model import (
    PIXEL_BUDGET, HPSv3Model, Rotary, base_spec, checkpoint_spec, find_template, load_hpsv3,
)
from rtdmd_bench.rewards.loading import cached_model, folder_of, release_models, resolve_files
from rtdmd_bench.rewards.pixels import to_uint8

FACTOR = 28  # Qwen2-VL: 14-px patches merged 2 x 2
MAX_RATIO = 200


def budget_size(h: int, w: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """(h, w) the image is resized to (HPSv3's qwen-vl-utils `smart_resize`): each side rounded to
    a multiple of `factor`; if the area is then above `max_pixels`, both sides scaled by
    sqrt(h w / max_pixels) and floored to multiples, if below `min_pixels` scaled up and ceiled.
    With HPSv3's budget (min = max = 448^2) 512 and 1024 give 448; float flooring makes 768 give 420."""
    if max(h, w) / min(h, w) > MAX_RATIO:
        raise UserError(f"HPSv3 takes aspect ratios up to {MAX_RATIO}; got a {h}x{w} image")
    nh, nw = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if nh * nw > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        nh, nw = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif nh * nw < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        nh, nw = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return nh, nw


def budget_images(u8: Tensor, min_pixels: int, max_pixels: int) -> list:
    """(B, 3, H, W) uint8 -> PIL RGB images at the budget size, resized with PIL bicubic (the
    package's `fetch_image`; PIL returns a copy when the size is already right)."""
    from PIL import Image

    h, w = budget_size(u8.shape[-2], u8.shape[-1], min_pixels, max_pixels)
    arrays = u8.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
            for a in arrays]


class HPSv3:
    """HPSv3 (MizzenAI/HPSv3 on Qwen2-VL-7B-Instruct), score = mu; re-implemented on transformers 5
    (the `hpsv3` package pins transformers 4.45). Non-differentiable."""

    @dataclass
    class Config:
        hub_id: str = "MizzenAI/HPSv3"
        """Hugging Face repo of the HPSv3 weights."""
        checkpoint: str = "HPSv3.safetensors"
        """The weights file (every tensor: Qwen2-VL backbone, lm_head, rm_head; read with safetensors)."""
        local_path: str = ""
        """Local folder holding the checkpoint, or the file (else $RTDMD_BENCH_HPSV3_PATH, else the hub)."""
        base_id: str = "Qwen/Qwen2-VL-7B-Instruct"
        """Repo of the architecture config, tokenizer, chat template and image processor (HPSv3_7B.yaml's
        model_name_or_path); its weights are not downloaded."""
        base_path: str = ""
        """Local folder with those files (else $RTDMD_BENCH_QWEN2VL_PATH, else the hub)."""
        template_path: str = ""
        """The hpsv3 1.0.0 package's prompt template source: its dataset/data_collator_qwen.py, its wheel,
        or a folder holding either (else $RTDMD_BENCH_HPSV3_TEMPLATE_PATH, else an installed `hpsv3`
        package). Checked by SHA-256; the project does not ship the text."""
        models: Literal["official", "stand-in"] = "official"
        """"official": the weights above; "stand-in": the tiny random model of the same classes
        (tests/CI), named tiny-hpsv3[stand-in]."""
        dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
        """Backbone dtype (HPSv3: bf16, its training precision); the head always runs in float32."""
        rotary: Rotary = "hpsv3"
        """Rotary numerics. "hpsv3" (default, official): inverse frequencies cast to `dtype` with the
        model (the package's model.to(torch.bfloat16), buffers included) and vision rotary angles and
        cos/sin computed in that dtype, as transformers 4.45/4.57 do: looks accidental, but HPSv3 was
        trained so. "float32": transformers 5's float32 rotary. The same when dtype=float32."""
        min_pixels: PositiveInt = PIXEL_BUDGET
        """Smallest image area after resizing (HPSv3: 256 x 28 x 28 = 448^2; smaller images are upscaled)."""
        max_pixels: PositiveInt = PIXEL_BUDGET
        """Largest image area after resizing (HPSv3: 256 x 28 x 28 = 448^2 -> 256 visual tokens)."""
        batch_size: PositiveInt = 8
        """Images per forward pass (~0.15 GB of activations each in bf16; scores do not depend on it)."""
        stand_in_seed: int = 0
        """Seed of the stand-in's random weights (models="stand-in" only)."""

    name = "hpsv3"
    differentiable = False

    def __init__(self, cfg: "HPSv3.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        c = self.cfg
        if c.min_pixels < 1 or c.max_pixels < c.min_pixels:
            raise UserError(f"reward.hpsv3: need 1 <= min_pixels <= max_pixels; got {c.min_pixels}, {c.max_pixels}")
        if c.models == "stand-in":
            self.name = "tiny-hpsv3[stand-in]"
        self.model()  # load now: missing weights fail at construction, like the other rewards

    def cache_key(self) -> tuple[str, tuple]:
        """(kind, settings) of the cached model: only what changes the loaded weights."""
        c = self.cfg
        if c.models == "stand-in":
            return "tiny-hpsv3", (c.stand_in_seed, c.dtype, c.rotary)
        return "hpsv3", (c.hub_id, c.checkpoint, c.local_path, c.base_id, c.base_path, c.template_path,
                         c.dtype, c.rotary)

    def model(self) -> HPSv3Model:
        """The model, from the per-process cache (built on first use; `release()` frees it and a
        later call loads it again). No reference is kept here, so releasing frees the memory."""
        kind, key = self.cache_key()
        return cached_model(kind, key, self._build)

    def release(self) -> int:
        """Drop this reward's model from the process cache (and CUDA's cached blocks)."""
        kind, key = self.cache_key()
        return release_models(kind, key)

    def _build(self) -> HPSv3Model:
        c = self.cfg
        if c.models == "stand-in":
            from rtdmd_bench.rewards.tiny import tiny_hpsv3

            return tiny_hpsv3(c.stand_in_seed, c.dtype, c.rotary)
        checkpoint, base_folder, template = weight_files(c)
        return load_hpsv3(checkpoint, base_folder, template, c.dtype, c.rotary)

    @torch.no_grad()
    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:  # (B,) mu, float32
        model, images = placed(self.model(), images)
        pil = budget_images(to_uint8(images), self.cfg.min_pixels, self.cfg.max_pixels)
        return model(**model.inputs(pil, prompts))[:, 0].to(images.device)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)


def weight_files(c: HPSv3.Config) -> tuple[Path, Path, Any]:
    """(HPSv3 checkpoint file, Qwen2-VL config/processor folder, prompt template) of the official
    model, resolved without loading anything (a suite checks them before generating); ONE
    UserError names everything missing."""
    template, missing_template = find_template(c.template_path)
    try:
        ckpt, base = resolve_files([(checkpoint_spec(c.hub_id, c.checkpoint), c.local_path, c.hub_id),
                                    (base_spec(c.base_id), c.base_path, c.base_id)])
    except UserError as err:  # one error naming everything missing
        raise UserError(f"{err}\nAlso missing:\n{missing_template}" if missing_template else str(err)) from None
    if template is None:
        raise UserError(f"reward 'hpsv3' cannot load its prompt template; missing:\n{missing_template}")
    return ckpt[c.checkpoint], folder_of(base), template
