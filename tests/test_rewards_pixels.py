"""Pixel pipelines of the CLIP-family rewards and ImageReward (rtdmd_bench/rewards/pixels.py)
against independent references: transformers' PIL `CLIPImageProcessor`, torchvision's PIL and
tensor transforms written as the official scorers and RTDMD write them, on random square and
non-square images; gradients through the differentiable choices, refusal in the others; the
reward-level choice by `images.requires_grad`; the real-base recipes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TV
from transformers.image_transforms import center_crop as hf_center_crop
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from rtdmd_bench import registry
from rtdmd_bench.config import resolve_config
from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import pixels as px

MEAN, STD = px.OPENAI_CLIP_MEAN, px.OPENAI_CLIP_STD
SPEC = px.PixelSpec(size=32, crop=32)
# 48x64 / 64x48: the crop offset is even (same under floor and round); 48x53 / 53x48: the resized
# longer side is 35, (35 - 32) / 2 = 1.5 -> floor 1, round 2 (the case of issue #10 item 9).
SHAPES = [(48, 64), (64, 48), (48, 53), (53, 48), (32, 32), (40, 71)]
BICUBIC = T.InterpolationMode.BICUBIC


def rand_images(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def pil_images(x: torch.Tensor) -> list[Image.Image]:
    """uint8 PIL images as a PNG would hold them (numpy's round half to even, like torch's)."""
    arr = np.clip(np.round(x.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def hf_processor(pils: list[Image.Image]) -> torch.Tensor:
    """transformers' CLIPImageProcessor, PIL backend (the slow processor of transformers 4.x)."""
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return torch.as_tensor(np.asarray(proc(images=pils, return_tensors="np")["pixel_values"]))


def openai_clip_transform(pils: list[Image.Image]) -> torch.Tensor:
    """OpenAI clip's `_transform` / ImageReward's `_transform`, at 32 px."""
    tf = T.Compose([T.Resize(32, interpolation=BICUBIC), T.CenterCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.stack([tf(p) for p in pils])


def hps_preprocess_val(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """HPSv2's eval transform after ToTensor, written out per image as its transform.py does:
    ResizeMaxSize (round(side * scale), tensor bicubic, torchvision's default antialias, pad
    [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2] with 0), then Normalize."""
    out = []
    for img in images:
        h, w = img.shape[1:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            img = TV.resize(img, [nh, nw], BICUBIC)
            ph, pw = size - nh, size - nw
            img = TV.pad(img, padding=[pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
        out.append(TV.normalize(img, MEAN, STD))
    return torch.stack(out)


def floor_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    return x[..., top:top + crop, left:left + crop]


# ---- the exact (non-differentiable) references ---------------------------------------------

@pytest.mark.parametrize("hw", SHAPES)
def test_clip_processor_pipeline_equals_transformers_pil_processor(hw):
    x = rand_images(*hw)
    expected = hf_processor(pil_images(x))
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.CLIP_PROCESSOR), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", SHAPES)
def test_torchvision_pil_pipeline_equals_openai_clip_and_imagereward_transform(hw):
    x = rand_images(*hw)
    expected = openai_clip_transform(pil_images(x))
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.TORCHVISION_PIL), expected, atol=1e-6, rtol=0)


def test_non_square_crops_follow_each_references_offset():
    """48x53 separates transformers' floor offset from torchvision's rounded one."""
    x = rand_images(48, 53)
    pils = pil_images(x)
    assert not torch.allclose(hf_processor(pils), openai_clip_transform(pils), atol=1e-3)  # the shape matters
    for h in range(32, 48):
        t = torch.rand(3, h, h + 3)
        torch.testing.assert_close(px.center_crop(t, 32, "round"), TV.center_crop(t, [32, 32]))
        expected = torch.from_numpy(hf_center_crop(t.numpy(), (32, 32), input_data_format="channels_first"))
        torch.testing.assert_close(px.center_crop(t, 32, "floor"), expected)


@pytest.mark.parametrize("hw", [(48, 64), (64, 48), (50, 33), (32, 32), (20, 24)])
def test_hps_reference_equals_hpsv2_preprocess_val_on_uint8(hw):
    x = rand_images(*hw)
    to_tensor = torch.stack([TV.to_tensor(p) for p in pil_images(x)])
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.HPS_REFERENCE), hps_preprocess_val(to_tensor),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("pipe", [px.CLIP_PROCESSOR, px.TORCHVISION_PIL, px.HPS_REFERENCE], ids=lambda p: p.name)
def test_non_differentiable_pipelines_refuse_grad_carrying_images(pipe):
    x = rand_images(48, 64).requires_grad_(True)
    assert not pipe.differentiable
    with pytest.raises(UserError, match="not differentiable"):
        px.model_pixels(x, SPEC, pipe)


# ---- the differentiable choices ------------------------------------------------------------

def grad_of(pipe: px.Pipeline, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(px.model_pixels(x, SPEC, pipe).square().sum(), x)
    return grad


@pytest.mark.parametrize("hw", SHAPES)
def test_differentiable_clip_pipelines_equal_torchvision_tensor_ops_and_pass_gradients(hw):
    x = rand_images(*hw)
    resized = TV.resize(x, 32, BICUBIC, antialias=True).clamp(0, 1)
    floor = TV.normalize(floor_crop(resized, 32), MEAN, STD)
    rounded = TV.normalize(TV.center_crop(resized, [32, 32]), MEAN, STD)
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.BICUBIC_FLOOR), floor, atol=1e-6, rtol=0)
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.BICUBIC_ROUND), rounded, atol=1e-6, rtol=0)
    for pipe in (px.BICUBIC_FLOOR, px.BICUBIC_ROUND):
        grad = grad_of(pipe, x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("hw", [(300, 400), (512, 512), (180, 150)])
def test_differentiable_clip_pipeline_approximates_the_pil_reference(hw):
    """At the real 224 px: the float path misses only uint8 quantisation and PIL's rounding."""
    low = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(low, size=hw, mode="bilinear", align_corners=False)
    spec = px.PixelSpec(size=224, crop=224)
    proc = CLIPImageProcessorPil()  # shortest_edge 224, crop 224, OpenAI mean/std
    expected = torch.as_tensor(np.asarray(proc(images=pil_images(x), return_tensors="np")["pixel_values"]))
    diff = (px.model_pixels(x, spec, px.BICUBIC_FLOOR) - expected).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.08  # one uint8 step is 0.015 in normalised units


@pytest.mark.parametrize("hw", SHAPES)
def test_rtdmd_tensor_equals_rtdmd_get_image_transform(hw):
    """RTDMD's clip_scorer.get_image_transform for a CLIP processor: T.Resize(shortest_edge)
    (bilinear, antialiased), T.CenterCrop((h, w)), T.Normalize, applied to float tensors."""
    x = rand_images(*hw)
    rtdmd = T.Compose([T.Resize(32), T.CenterCrop((32, 32)), T.Normalize(mean=MEAN, std=STD)])
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.RTDMD_BILINEAR), rtdmd(x), atol=1e-6, rtol=0)
    assert grad_of(px.RTDMD_BILINEAR, x).abs().sum() > 0
    # RTDMD's GRPO scoring: multi_scorer rounds to uint8, /255, then the same transform.
    rounded = (x * 255).round().clamp(0, 255) / 255
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.RTDMD_BILINEAR_UINT8), rtdmd(rounded), atol=1e-6, rtol=0)
    assert px.HF_CLIP_PIPELINES["rtdmd_tensor_uint8"] is px.RTDMD_BILINEAR_UINT8


@pytest.mark.parametrize("hw", [(48, 64), (64, 48), (50, 33)])
def test_hps_float_pipeline_is_preprocess_val_on_floats_with_gradients(hw):
    x = rand_images(*hw)
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.HPS_FLOAT), hps_preprocess_val(x), atol=1e-6, rtol=0)
    assert px.HPS_PIPELINES["differentiable"] == px.HPS_PIPELINES["rtdmd_tensor"] == px.HPS_FLOAT
    assert grad_of(px.HPS_FLOAT, x).abs().sum() > 0


def test_rtdmd_squash_equals_rtdmd_imagereward_backprop_preprocess():
    """bp_mixin._preprocess_bp_images: F.interpolate to (224, 224) bicubic, no crop, then mean/std."""
    x = rand_images(48, 64)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False) - mean) / std
    torch.testing.assert_close(px.model_pixels(x, SPEC, px.RTDMD_SQUASH), expected, atol=1e-6, rtol=0)
    assert grad_of(px.RTDMD_SQUASH, x).abs().sum() > 0


# ---- the rewards: choice by requires_grad, every choice on every stand-in --------------------

def build(name: str, **overrides):
    cls = registry.resolve("rewards", name)
    return cls(replace(cls.Config(), **overrides))


def test_reward_uses_pixels_without_grad_and_pixels_grad_with_it():
    reward = build("tiny-clipscore", pixels="rtdmd_tensor", pixels_grad="differentiable")
    enc = reward.encoder
    x, prompts = rand_images(48, 53), ["a cat", "a dog"]

    def expected(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            img = F.normalize(enc.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            tok = enc.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
            txt = F.normalize(enc.model.get_text_features(**tok).pooler_output, dim=-1)
        return (img * txt).sum(-1)

    rtdmd = T.Compose([T.Resize(32), T.CenterCrop((32, 32)), T.Normalize(mean=MEAN, std=STD)])(x)
    torch.testing.assert_close(reward(x, prompts), expected(rtdmd), atol=1e-5, rtol=0)
    resized = TV.resize(x, 32, BICUBIC, antialias=True).clamp(0, 1)
    bicubic = TV.normalize(floor_crop(resized, 32), MEAN, STD)
    with_grad = reward(x.clone().requires_grad_(True), prompts)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), expected(bicubic), atol=1e-5, rtol=0)


STAND_INS = ["tiny-clipscore", "tiny-pickscore", "tiny-hpsv2", "tiny-hpsv21", "tiny-aesthetic", "tiny-imagereward"]


@pytest.mark.parametrize("name", STAND_INS)
def test_every_stand_in_runs_every_pixel_choice(name):
    cls = registry.resolve("rewards", name)
    x, prompts = rand_images(48, 64), ["a cat", "two dogs"]
    for choice, pipe in cls.pipelines.items():
        scores = build(name, pixels=choice)(x, prompts)
        assert scores.shape == (2,) and torch.isfinite(scores).all(), choice
        if pipe.differentiable:
            xg = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(build(name, pixels_grad=choice)(xg, prompts).sum(), xg)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0, choice


def test_pixel_choices_are_checked_when_the_reward_is_built():
    with pytest.raises(UserError, match="pixels_grad='reference' must be a differentiable"):
        build("tiny-clipscore", pixels_grad="reference")
    with pytest.raises(UserError, match="valid: reference, clip_processor, differentiable$"):
        build("tiny-aesthetic", pixels="rtdmd_tensor")


def test_defaults_are_the_official_scorers_pipelines():
    expected = {"clipscore": px.CLIP_PROCESSOR, "pickscore": px.CLIP_PROCESSOR, "hpsv2": px.HPS_REFERENCE,
                "hpsv21": px.HPS_REFERENCE, "aesthetic": px.TORCHVISION_PIL, "imagereward": px.TORCHVISION_PIL}
    for name, pipe in expected.items():
        cls = registry.resolve("rewards", name)
        cfg = cls.Config()
        assert cls.pipelines[cfg.pixels] == pipe and cfg.pixels_grad == "differentiable", name
        tiny = registry.resolve("rewards", "tiny-" + name).Config()
        assert (tiny.pixels, tiny.pixels_grad) == (cfg.pixels, cfg.pixels_grad), name


RECIPE_BASES = ["sd3", "sd35m", "sd35l", "flux2-4b", "flux2-9b", "flux1-dev"]


@pytest.mark.parametrize("base", RECIPE_BASES)
def test_real_base_recipes_use_rtdmds_training_pipelines(base):
    """RTDMD at 6c3cb03: GRPO scores clipscore through ClipScorer's tensor transform, pickscore
    through its PIL processor, hpsv2 through preprocess_val on uint8 pixels; back-propagation
    uses the tensor transforms (bp_mixin)."""
    want = {"clipscore": ("rtdmd_tensor_uint8", "rtdmd_tensor"), "pickscore": ("reference", "rtdmd_tensor"),
            "hpsv21": ("reference", "rtdmd_tensor")}
    for method in ("rtdmd", "dmd-rl", "gdmd", "gndmr"):
        rewards = resolve_config(method, base).rewards
        for name, (pixels, pixels_grad) in want.items():
            assert (rewards[name].pixels, rewards[name].pixels_grad) == (pixels, pixels_grad), (method, name)
