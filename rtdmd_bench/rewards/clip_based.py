"""CLIP-family rewards: CLIPScore, HPSv2 / HPSv2.1, PickScore, LAION aesthetic v2.

All four score images given as torch tensors in [0, 1], (B, 3, H, W). How the pixels reach the
model is a named pipeline per reward (`pixels` for images without gradients, `pixels_grad` for
images that carry them): the official scorer's exact PIL/uint8 path, a differentiable torch
approximation of it, or RTDMD's tensor transforms; see rtdmd_bench.rewards.pixels. The models and
their weight loaders are in rtdmd_bench.rewards.clip_models. Protocols: ../shared/PROTOCOLS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import Positive, PositiveInt
from rtdmd_bench.rewards.clip_models import (
    HF_WEIGHTS, TOKENIZER_FILES, ClipKey, HFClip, OpenClip, clip_spec, load_aesthetic_mlp, load_hf_clip, load_hps,
)
from rtdmd_bench.rewards.loading import WeightSpec, cached_model, folder_of, resolve_files
from rtdmd_bench.rewards.pixels import (  # noqa: F401  (OPENAI_CLIP_*: re-exported)
    AESTHETIC_PIPELINES, HF_CLIP_PIPELINES, HPS_PIPELINES, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
    AestheticGradPixels, AestheticPixels, GradPixels, HFClipPixels, Pipeline, PixelSpec, TowerPixels,
    check_choices, choose, model_pixels,
)

# ---------------------------------------------------------------------------------------
# Shared call path: validation, device/dtype, internal batching.

def check_inputs(images: Tensor, prompts: Sequence[str]) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"rewards take images (B, 3, H, W) in [0, 1]; got {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")


def batched(score: Callable[[Tensor, list[str]], Tensor], images: Tensor,
            prompts: Sequence[str], batch_size: int) -> Tensor:
    """Apply `score` on chunks of `batch_size` and concatenate: (B,) float32."""
    check_inputs(images, prompts)
    if batch_size < 1:
        raise UserError(f"reward batch_size must be >= 1, got {batch_size}")
    if images.shape[0] == 0:
        return images.new_zeros(0, dtype=torch.float32)
    prompts = list(prompts)
    out = [score(images[i:i + batch_size], prompts[i:i + batch_size])
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out).float()


def placed(module: nn.Module, images: Tensor) -> tuple[nn.Module, Tensor]:
    """Move the (cached) scorer to the images' device (the scorer casts after preprocessing)."""
    if next(module.parameters()).device != images.device:
        module.to(images.device)
    return module, images


def cosine(a: Tensor, b: Tensor) -> Tensor:  # (B, D), (B, D) -> (B,)
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def pixels_for(table: dict[str, Pipeline], cfg: object, spec: PixelSpec, images: Tensor) -> Tensor:
    """The model input of `images` under the reward's configured pipeline: `cfg.pixels_grad`
    when the images carry gradients, else `cfg.pixels` (both names in `table`)."""
    return model_pixels(images, spec, choose(table, images, cfg.pixels, cfg.pixels_grad))


# ---------------------------------------------------------------------------------------
# The rewards.

class CLIPScore:
    """CLIPScore with CLIP ViT-L/14 (OpenAI). RTDMD trains/evaluates on the raw cosine
    (its `logits_per_image / 100` with logit_scale = 100); torchmetrics reports
    max(100 cos, 0). DMD2's ViT-g-14 variant is not this reward."""

    @dataclass
    class Config:
        model_id: str = "openai/clip-vit-large-patch14"
        """Hugging Face repo of the CLIP model and its processor/tokenizer."""
        local_path: str = ""
        """Local folder with the model + processor files (else $RTDMD_BENCH_CLIP_PATH, else hub)."""
        convention: Literal["raw_cosine", "torchmetrics"] = "raw_cosine"
        """Scale: raw cosine (RTDMD) or max(100 cos, 0) (torchmetrics CLIPScore)."""
        pixels: HFClipPixels = "reference"
        """Pixel pipeline for images without gradients (GRPO scoring, evaluation): reference (=
        clip_processor) = uint8 -> PIL -> the model's CLIPImageProcessor (bicubic, floor crop offsets),
        as torchmetrics' CLIPScore; differentiable = torch bicubic + clamp + floor crop; rtdmd_tensor =
        RTDMD's ClipScorer transform (torchvision bilinear Resize, rounded CenterCrop, no clamp);
        rtdmd_tensor_uint8 = the same on images rounded to uint8, RTDMD's GRPO scoring (the real-base
        recipes set it). See rtdmd_bench/rewards/pixels.py."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline for images that carry gradients (reward back-propagation): differentiable
        (approximates the reference) or rtdmd_tensor (RTDMD's back-propagation path)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: PositiveInt = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "clipscore"
    differentiable = True
    pipelines = HF_CLIP_PIPELINES

    def __init__(self, cfg: "CLIPScore.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        check_choices(self.name, self.pipelines, self.cfg.pixels, self.cfg.pixels_grad)
        self.encoder = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        spec = clip_spec(self.name, c.model_id, "RTDMD_BENCH_CLIP_PATH", "local_path")

        def build() -> HFClip:
            (files,) = resolve_files([(spec, c.local_path, c.model_id)])
            folder = folder_of(files)
            return load_hf_clip(folder, folder, c.dtype)
        return cached_model("hf-clip", ClipKey(c.model_id, c.local_path, c.dtype), build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        pixels = pixels_for(self.pipelines, self.cfg, enc.pixels, images)
        cos = cosine(enc.image_features(pixels), enc.text_features(prompts))
        return (100.0 * cos).clamp(min=0.0) if self.cfg.convention == "torchmetrics" else cos

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)


class PickScore:
    """PickScore v1: `logit_scale.exp() * cos(text, image)` (~20-24), optionally divided by
    `divide_by` (RTDMD's training form uses 26)."""

    @dataclass
    class Config:
        model_id: str = "yuvalkirstain/PickScore_v1"
        """Hugging Face repo of the PickScore CLIP weights."""
        local_path: str = ""
        """Local folder with config.json + weights (else $RTDMD_BENCH_PICKSCORE_PATH, else hub)."""
        processor_id: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        """Repo of the processor/tokenizer PickScore was trained with."""
        processor_path: str = ""
        """Local folder with the processor files (else $RTDMD_BENCH_PICKSCORE_PROCESSOR_PATH, else hub)."""
        divide_by: Positive = 1.0
        """Score scale divisor: 1 = PickScore as reported; 26 = RTDMD's training reward."""
        pixels: HFClipPixels = "reference"
        """Pixel pipeline for images without gradients: reference (= clip_processor) = uint8 -> PIL ->
        the CLIP-H CLIPImageProcessor (bicubic, floor crop offsets), as PickScore's reference usage and
        RTDMD's GRPO scorer; differentiable = torch bicubic + clamp + floor crop; rtdmd_tensor = RTDMD's
        back-propagation transform (torchvision bilinear Resize, rounded CenterCrop, no clamp);
        rtdmd_tensor_uint8 = that on images rounded to uint8."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline for images that carry gradients: differentiable (approximates the reference)
        or rtdmd_tensor (RTDMD's back-propagation: torchvision bilinear, its official recipes set it)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: PositiveInt = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "pickscore"
    differentiable = True
    pipelines = HF_CLIP_PIPELINES

    def __init__(self, cfg: "PickScore.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        if self.cfg.divide_by <= 0:
            raise ValueError(f"pickscore divide_by must be > 0, got {self.cfg.divide_by}")
        check_choices(self.name, self.pipelines, self.cfg.pixels, self.cfg.pixels_grad)
        self.encoder = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        model_spec = WeightSpec(self.name, "PickScore CLIP weights", c.model_id, HF_WEIGHTS,
                                "RTDMD_BENCH_PICKSCORE_PATH", "local_path")
        proc_spec = WeightSpec(self.name, "CLIP-H processor", c.processor_id, TOKENIZER_FILES,
                               "RTDMD_BENCH_PICKSCORE_PROCESSOR_PATH", "processor_path")

        def build() -> HFClip:
            model, proc = resolve_files([(model_spec, c.local_path, c.model_id),
                                         (proc_spec, c.processor_path, c.processor_id)])
            return load_hf_clip(folder_of(model), folder_of(proc), c.dtype)
        return cached_model("pickscore", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        pixels = pixels_for(self.pipelines, self.cfg, enc.pixels, images)
        cos = cosine(enc.image_features(pixels), enc.text_features(prompts))
        return enc.logit_scale.exp().float() * cos / self.cfg.divide_by

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)


class HPSv2:
    """Human Preference Score v2.0 (HPSv2.1: `HPSv21`): open_clip ViT-H-14 with the HPS state
    dict; score = cosine of normalised image and text features (~0.28; tables use x100).
    v2.0 and v2.1 scores are not comparable, hence two names."""

    @dataclass
    class Config:
        checkpoint: Literal["HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt"] = "HPS_v2_compressed.pt"
        """Which HPS release: HPS_v2_compressed.pt (v2.0) or HPS_v2.1_compressed.pt (v2.1)."""
        hub_id: str = "xswu/HPSv2"
        """Hugging Face repo holding the HPS checkpoints."""
        local_path: str = ""
        """Local folder holding the checkpoint, or the .pt file (else $RTDMD_BENCH_HPSV2_PATH)."""
        arch: str = "ViT-H-14"
        """open_clip architecture the checkpoint belongs to (its config ships with open_clip)."""
        pixels: TowerPixels = "reference"
        """Pixel pipeline for images without gradients: reference = uint8 -> HPSv2's preprocess_val
        (ToTensor, tensor bicubic antialiased resize of the longer side, zero padding, no clamp), as
        hpsv2.score() and RTDMD's GRPO scorer; differentiable = rtdmd_tensor = the same transform on
        the float images (RTDMD's back-propagation)."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline for images that carry gradients (both choices are HPSv2's own transform)."""
        scale: Positive = 1.0
        """Multiply the cosine: 1 (training, ~0.28) or 100 (benchmark tables)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: PositiveInt = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "hpsv2"
    differentiable = True
    pipelines = HPS_PIPELINES

    def __init__(self, cfg: "HPSv2.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        check_choices(self.name, self.pipelines, self.cfg.pixels, self.cfg.pixels_grad)
        self.encoder = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        spec = WeightSpec(self.name, f"HPS checkpoint {c.checkpoint}", c.hub_id, (c.checkpoint,),
                          "RTDMD_BENCH_HPSV2_PATH", "local_path")

        def build() -> OpenClip:
            (files,) = resolve_files([(spec, c.local_path, c.hub_id)])
            return load_hps(files[c.checkpoint], c.checkpoint, c.arch, c.dtype)
        return cached_model("hpsv2", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        pixels = pixels_for(self.pipelines, self.cfg, enc.pixels, images)
        return self.cfg.scale * cosine(enc.image_features(pixels), enc.text_features(prompts))

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)


class HPSv21(HPSv2):
    """HPSv2.1 (the default of the hpsv2 benchmark suite)."""

    @dataclass
    class Config(HPSv2.Config):
        checkpoint: Literal["HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt"] = "HPS_v2.1_compressed.pt"
        """Which HPS release (v2.1 by default for this name)."""

    name = "hpsv21"


class Aesthetic:
    """LAION aesthetic predictor v2: MLP on L2-normalised OpenAI CLIP ViT-L/14 image
    embeddings (`sac+logos+ava1-l14-linearMSE.pth`), scale ~1-10. Ignores the prompt."""

    @dataclass
    class Config:
        clip_model_id: str = "openai/clip-vit-large-patch14"
        """CLIP ViT-L/14 the MLP was trained on (OpenAI weights)."""
        clip_path: str = ""
        """Local folder with the CLIP model + processor (else $RTDMD_BENCH_CLIP_PATH, else hub)."""
        mlp_hub_id: str = "camenduru/improved-aesthetic-predictor"
        """Hub mirror of christophschuhmann/improved-aesthetic-predictor (GitHub original)."""
        mlp_file: str = "sac+logos+ava1-l14-linearMSE.pth"
        """The MLP checkpoint file name."""
        local_path: str = ""
        """Local folder or file of the MLP (else $RTDMD_BENCH_AESTHETIC_PATH, else hub)."""
        pixels: AestheticPixels = "reference"
        """Pixel pipeline for images without gradients: reference = OpenAI `clip` preprocess as the
        predictor's simple_inference.py (uint8 -> PIL -> torchvision Resize(BICUBIC) + CenterCrop,
        rounded crop offsets); clip_processor = uint8 -> PIL -> CLIPImageProcessor (floor offsets;
        RTDMD's aesthetic scorer); differentiable = torch bicubic + clamp + rounded crop."""
        pixels_grad: AestheticGradPixels = "differentiable"
        """Pixel pipeline for images that carry gradients (only differentiable: RTDMD never
        back-propagates through this reward)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: PositiveInt = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "aesthetic"
    differentiable = True
    pipelines = AESTHETIC_PIPELINES

    def __init__(self, cfg: "Aesthetic.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        check_choices(self.name, self.pipelines, self.cfg.pixels, self.cfg.pixels_grad)
        self.encoder, self.mlp = self._load()

    def _load(self) -> tuple[nn.Module, nn.Module]:
        c = self.cfg
        clip = clip_spec(self.name, c.clip_model_id, "RTDMD_BENCH_CLIP_PATH", "clip_path")
        mlp_spec = WeightSpec(self.name, "aesthetic MLP", c.mlp_hub_id, (c.mlp_file,),
                              "RTDMD_BENCH_AESTHETIC_PATH", "local_path")

        def build() -> tuple[nn.Module, nn.Module]:
            clip_files, mlp_files = resolve_files([(clip, c.clip_path, c.clip_model_id),
                                                   (mlp_spec, c.local_path, c.mlp_hub_id)])
            folder = folder_of(clip_files)
            encoder = cached_model("hf-clip", ClipKey(c.clip_model_id, c.clip_path, c.dtype),
                                   lambda: load_hf_clip(folder, folder, c.dtype))
            return encoder, load_aesthetic_mlp(mlp_files[c.mlp_file], c.dtype)
        return cached_model("aesthetic", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        mlp, _ = placed(self.mlp, images)
        pixels = pixels_for(self.pipelines, self.cfg, enc.pixels, images)
        emb = F.normalize(enc.image_features(pixels), dim=-1)  # (B, 768), L2-normalised
        # The original runs the MLP in float32 even where CLIP runs in fp16 (simple_inference.py
        # casts the embedding to torch.cuda.FloatTensor): keep autocast off here.
        with torch.autocast(images.device.type, enabled=False):
            return mlp(emb.to(next(mlp.parameters()).dtype)).squeeze(-1)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)
