"""Pixel pipelines: how a scorer turns images in [0, 1] into its model's input.

The official scorers disagree on this, and so do the official trainers, so each pipeline is
data (`Pipeline`) and each reward names the ones it offers in two config fields:
`pixels` for images without gradients (GRPO scoring, evaluation suites) and `pixels_grad` for
images that carry them (reward back-propagation: `images.requires_grad`).

The choices, by name (which reward offers which is in its `pipelines` table):
- "reference": the official benchmark scorer's own pipeline. Images are rounded to uint8 first
  (`(x * 255).round()`, as RTDMD's scorers and a saved PNG do), then
    * clipscore, pickscore: PIL through transformers' `CLIPImageProcessor` (bicubic resize of
      the shorter side, centre crop with FLOOR offsets `(H - crop) // 2`);
    * aesthetic (OpenAI `clip.load` preprocess) and imagereward (its `_transform`): torchvision
      `Resize(BICUBIC)` + `CenterCrop` on the PIL image (ROUNDED offsets `round((H - crop) / 2)`);
    * hpsv2 / hpsv21: HPSv2's `preprocess_val` = `ToTensor` then a tensor bicubic (antialiased)
      resize of the longer side and zero padding, no clamp.
  Not differentiable: it refuses images that carry gradients.
- "clip_processor": uint8 -> PIL -> `CLIPImageProcessor` for the transformers-CLIP rewards; the
  reference of clipscore and pickscore, and what RTDMD's aesthetic scorer feeds its CLIP.
- "differentiable": float images through torch ops that approximate the reference: antialiased
  bicubic resize (PyTorch's antialiased bicubic follows PIL's filter), a clamp to [0, 1] (PIL
  saturates the overshoot at 0 and 255), the reference's crop rounding. Differs from the
  reference by the missing uint8 quantisation and interpolation rounding (~1/255 per pixel).
  For hpsv2 it is the reference transform itself without the uint8 rounding.
- "rtdmd_tensor": RTDMD's own tensor transform for the scorer (Harahan/RTDMD at 6c3cb03):
    * clipscore (rtdmd/rewards/clip_scorer.py, GRPO and back-prop) and pickscore (back-prop,
      rtdmd/trainers/bp_mixin.py via `get_image_transform`): torchvision `Resize(size)` on the
      float tensor (BILINEAR, antialiased), `CenterCrop` (rounded offsets), `Normalize`, no clamp;
    * hpsv2 (rtdmd/rewards/hpsv2_scorer.py `preprocess_val`): same as "differentiable";
    * imagereward (bp_mixin `_preprocess_bp_images`, its ImageReward back-prop fallback):
      `F.interpolate` straight to 224x224 (aspect not kept, no crop), bicubic, no antialias.
- "rtdmd_tensor_uint8" (clipscore, pickscore): the images rounded to uint8 first, then RTDMD's
  tensor transform: RTDMD's GRPO scoring of CLIPScore (rtdmd/rewards/multi_scorer.py rounds the
  decoded images to uint8 before `clip_score`, whose ClipScorer then runs the bilinear transform).

One difference from every official pipeline is kept on purpose: HPSv2's `ResizeMaxSize` skips
the padding when the longer side already equals the target (its ViT then fails on a non-square
input); here such images are padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rtdmd_bench.errors import UserError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Names per reward family (config field types; the tables below give their meaning).
HFClipPixels = Literal["reference", "clip_processor", "differentiable", "rtdmd_tensor", "rtdmd_tensor_uint8"]
AestheticPixels = Literal["reference", "clip_processor", "differentiable"]
TowerPixels = Literal["reference", "differentiable", "rtdmd_tensor"]  # hpsv2 / hpsv21, imagereward
GradPixels = Literal["differentiable", "rtdmd_tensor"]
AestheticGradPixels = Literal["differentiable"]


@dataclass(frozen=True)
class PixelSpec:
    """A model's input geometry and normalisation (from its processor or transform)."""

    size: int  # resize target: shorter side (crop pipelines) or longer side (pad pipelines)
    crop: int  # side of the square model input
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD


@dataclass(frozen=True)
class Pipeline:
    """One way from [0, 1] images to model input, as data (see the module docstring)."""

    name: str  # for messages
    source: Literal["pil", "tensor"]  # pil: per image PIL.Image.resize on uint8 (no gradients)
    quantise: bool  # round to uint8 first
    geometry: Literal["shorter_side_crop", "longer_side_pad", "squash"]
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    antialias: bool = True  # tensor resizes only (PIL always filters when downscaling)
    crop_offset: Literal["floor", "round"] = "round"  # floor: transformers; round: torchvision
    clamp: bool = False  # clamp the resized tensor to [0, 1]

    @property
    def differentiable(self) -> bool:
        return self.source == "tensor" and not self.quantise


CLIP_PROCESSOR = Pipeline("uint8 -> PIL -> CLIPImageProcessor", "pil", True, "shorter_side_crop",
                          crop_offset="floor")
TORCHVISION_PIL = Pipeline("uint8 -> PIL -> torchvision Resize(BICUBIC) + CenterCrop", "pil", True,
                           "shorter_side_crop", crop_offset="round")
HPS_REFERENCE = Pipeline("uint8 -> HPSv2 preprocess_val (bicubic longer side, zero pad)", "tensor", True,
                         "longer_side_pad")
HPS_FLOAT = Pipeline("HPSv2 preprocess_val on float images", "tensor", False, "longer_side_pad")
BICUBIC_FLOOR = Pipeline("tensor bicubic + clamp + floor crop", "tensor", False, "shorter_side_crop",
                         crop_offset="floor", clamp=True)
BICUBIC_ROUND = Pipeline("tensor bicubic + clamp + rounded crop", "tensor", False, "shorter_side_crop",
                         crop_offset="round", clamp=True)
RTDMD_BILINEAR = Pipeline("RTDMD torchvision Resize (bilinear) + CenterCrop", "tensor", False,
                          "shorter_side_crop", interpolation="bilinear", crop_offset="round")
RTDMD_BILINEAR_UINT8 = Pipeline("uint8 -> RTDMD torchvision Resize (bilinear) + CenterCrop", "tensor", True,
                                "shorter_side_crop", interpolation="bilinear", crop_offset="round")
RTDMD_SQUASH = Pipeline("RTDMD F.interpolate to crop x crop (bicubic, no antialias)", "tensor", False,
                        "squash", antialias=False)

HF_CLIP_PIPELINES = {"reference": CLIP_PROCESSOR, "clip_processor": CLIP_PROCESSOR,
                     "differentiable": BICUBIC_FLOOR, "rtdmd_tensor": RTDMD_BILINEAR,
                     "rtdmd_tensor_uint8": RTDMD_BILINEAR_UINT8}
AESTHETIC_PIPELINES = {"reference": TORCHVISION_PIL, "clip_processor": CLIP_PROCESSOR,
                       "differentiable": BICUBIC_ROUND}
HPS_PIPELINES = {"reference": HPS_REFERENCE, "differentiable": HPS_FLOAT, "rtdmd_tensor": HPS_FLOAT}
IMAGEREWARD_PIPELINES = {"reference": TORCHVISION_PIL, "differentiable": BICUBIC_ROUND,
                         "rtdmd_tensor": RTDMD_SQUASH}

_MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def check_choices(reward: str, table: dict[str, Pipeline], pixels: str, pixels_grad: str) -> None:
    """Config check at construction: both names exist, the grad one is differentiable."""
    valid = ", ".join(table)
    if pixels not in table:
        raise UserError(f"reward.{reward}.pixels={pixels!r} is not a pixel pipeline of {reward}; valid: {valid}")
    grad_ok = [n for n, p in table.items() if p.differentiable]
    if pixels_grad not in grad_ok:
        raise UserError(f"reward.{reward}.pixels_grad={pixels_grad!r} must be a differentiable pipeline of "
                        f"{reward}: {', '.join(grad_ok)}")


def choose(table: dict[str, Pipeline], images: Tensor, pixels: str, pixels_grad: str) -> Pipeline:
    """`pixels_grad` for images that carry gradients (back-propagation), else `pixels`."""
    return table[pixels_grad if images.requires_grad else pixels]


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> uint8, as RTDMD's scorers round: (x * 255).round().clamp(0, 255)."""
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)


def to_uint8_bf16(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> uint8 as RTDMD's evaluation rounds its bf16 decode: the image is a
    bf16 tensor, so x * 255 is rounded to bf16 before round-half-even. From the fp32 value
    img / 2 + 0.5 this equals RTDMD's bf16 arithmetic; it differs from `to_uint8` by one level on
    about a quarter of the pixels of a typical image."""
    return (images.detach().to(torch.bfloat16) * 255).round().clamp(0, 255).to(torch.uint8)


def shorter_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """Output (h, w) of torchvision `Resize(int)` and CLIPImageProcessor's shortest_edge: the
    shorter side becomes `size`, the longer one int(size * long / short) (truncated)."""
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def longer_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """HPSv2 `ResizeMaxSize`: scale = size / max(h, w), each side round(side * scale)."""
    scale = size / float(max(h, w))
    return round(h * scale), round(w * scale)


def crop_offsets(h: int, w: int, crop: int, offset: Literal["floor", "round"]) -> tuple[int, int]:
    """(top, left) of a centre crop: transformers floors (H - crop) / 2, torchvision rounds it
    (Python's round: half to even). They differ when (H - crop) % 4 == 3."""
    if h < crop or w < crop:
        raise ValueError(f"cannot centre-crop {h}x{w} to {crop}")
    if offset == "floor":
        return (h - crop) // 2, (w - crop) // 2
    return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def center_crop(images: Tensor, crop: int, offset: Literal["floor", "round"]) -> Tensor:
    """(..., H, W) -> (..., crop, crop)."""
    top, left = crop_offsets(images.shape[-2], images.shape[-1], crop, offset)
    return images[..., top:top + crop, left:left + crop]


def pil_resize(u8: Tensor, hw: tuple[int, int], interpolation: str) -> Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, h, w) uint8 with PIL's `Image.resize` (what both
    CLIPImageProcessor's PIL backend and torchvision's PIL transforms call)."""
    from PIL import Image

    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    h, w = hw
    out = [np.asarray(Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).resize((w, h), resample))
           for img in u8]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def tensor_geometry(x: Tensor, spec: PixelSpec, pipe: Pipeline) -> Tensor:
    """Float (B, 3, H, W) -> (B, 3, crop, crop) with torch ops (differentiable)."""
    h, w = x.shape[-2:]
    mode = _MODES[pipe.interpolation]
    if pipe.geometry == "squash":
        return TF.resize(x, [spec.crop, spec.crop], interpolation=mode, antialias=pipe.antialias)
    if pipe.geometry == "longer_side_pad":
        nh, nw = longer_side_hw(h, w, spec.size)
        if (nh, nw) != (h, w):
            x = TF.resize(x, [nh, nw], interpolation=mode, antialias=pipe.antialias)
        ph, pw = spec.size - nh, spec.size - nw  # left/top get the floor half, as ResizeMaxSize
        x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0.0)
        return x.clamp(0.0, 1.0) if pipe.clamp else x
    nh, nw = shorter_side_hw(h, w, spec.size)
    if (nh, nw) != (h, w):
        x = TF.resize(x, [nh, nw], interpolation=mode, antialias=pipe.antialias)
    x = center_crop(x, spec.crop, pipe.crop_offset)
    return x.clamp(0.0, 1.0) if pipe.clamp else x


def model_pixels(images: Tensor, spec: PixelSpec, pipe: Pipeline) -> Tensor:
    """[0, 1] images (B, 3, H, W) -> normalised model input (B, 3, crop, crop), float32 on the
    images' device (callers cast to the model dtype)."""
    if images.requires_grad and not pipe.differentiable:
        raise UserError(f"pixel pipeline {pipe.name!r} is not differentiable (it rounds to uint8"
                        f"{' and resizes in PIL' if pipe.source == 'pil' else ''}) but the images carry "
                        "gradients: set the reward's `pixels_grad` to a differentiable pipeline")
    if pipe.source == "pil":
        if pipe.geometry != "shorter_side_crop":
            raise ValueError(f"PIL pipelines resize the shorter side and crop; got {pipe.geometry}")
        u8 = to_uint8(images)
        small = pil_resize(u8, shorter_side_hw(*u8.shape[-2:], spec.size), pipe.interpolation)
        x = center_crop(small, spec.crop, pipe.crop_offset).to(images.device).float() / 255
    else:
        x = to_uint8(images).float() / 255 if pipe.quantise else images.float()
        x = tensor_geometry(x.to(images.device), spec, pipe)
    return TF.normalize(x, list(spec.mean), list(spec.std))
