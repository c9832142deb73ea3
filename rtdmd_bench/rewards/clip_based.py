"""CLIP-family rewards: CLIPScore, HPSv2 / HPSv2.1, PickScore, LAION aesthetic v2.

All four score images given as torch tensors in [0, 1], (B, 3, H, W); preprocessing stays in
torch so gradients reach the image (no PIL in the graph). Protocols: ../shared/PROTOCOLS.md.

Preprocessing vs the official pipelines. The official ones run PIL on uint8 images:
`Resize(shorter side, BICUBIC)` (PIL filters antialias when downscaling), `CenterCrop`,
`ToTensor`, `Normalize(mean, std)`. Here: `F.interpolate(mode="bicubic", antialias=True)`
(PyTorch's antialiased bicubic follows PIL's filter; it differs by interpolation rounding and
the missing uint8 quantisation, ~1/255 per pixel), a clamp to [0, 1] (PIL saturates bicubic
overshoot at 0 and 255), torchvision's crop offsets, then the model's mean/std. HPSv2's
official eval transform is not a centre crop but `ResizeMaxSize` (longer side to 224,
zero padding); both are identical on square images and both are offered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards.loading import (
    WeightSpec, cached_model, folder_of, frozen, load_strict, load_torch_state, resolve_files,
    torch_dtype,
)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes in processor json


# ---------------------------------------------------------------------------------------
# Differentiable preprocessing.

@dataclass(frozen=True)
class PixelSpec:
    """How a scorer turns [0, 1] images into its model's input."""

    size: int  # target of the resize (shorter side for centre_crop, longer side for pad)
    crop: int  # output side length
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    mode: str = "bicubic"  # interpolation of the official transform
    layout: Literal["center_crop", "pad"] = "center_crop"
    antialias: bool = True  # True mimics PIL's downscaling filter


def resize_shorter_side(images: Tensor, size: int, mode: str = "bicubic",
                        antialias: bool = True) -> Tensor:
    """(B, C, H, W) -> (B, C, h, w) with min(h, w) = size, the longer side scaled and
    truncated to int as torchvision `Resize(int)` and CLIPImageProcessor do."""
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    if new_hw == (h, w):
        return images
    return F.interpolate(images, size=new_hw, mode=mode, align_corners=False, antialias=antialias)


def center_crop(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (B, C, size, size) with torchvision's offsets round((H - size) / 2)."""
    h, w = images.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def resize_longer_side_pad(images: Tensor, size: int, mode: str = "bicubic",
                           antialias: bool = True, fill: float = 0.0) -> Tensor:
    """HPSv2's `ResizeMaxSize`: longer side to `size`, then pad (left/top get the floor half)
    with `fill` to (B, C, size, size)."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False,
                               antialias=antialias)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                 value=fill)


def to_model_pixels(images: Tensor, spec: PixelSpec) -> Tensor:
    """[0, 1] images (B, 3, H, W) -> normalised model input (B, 3, crop, crop), float32
    (preprocessing stays in float32 whatever the model dtype; callers cast the result)."""
    images = images.float()
    if spec.layout == "pad":
        x = resize_longer_side_pad(images, spec.size, spec.mode, spec.antialias)
    else:
        x = center_crop(resize_shorter_side(images, spec.size, spec.mode, spec.antialias), spec.crop)
    x = x.clamp(0.0, 1.0)  # PIL saturates bicubic overshoot
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def pixel_spec_from_processor(path: Path, mode: str | None = None) -> PixelSpec:
    """Read size, crop, mean, std and resampling from a HF `preprocessor_config.json`."""
    cfg = json.loads(Path(path).read_text())
    size, crop = cfg["size"], cfg.get("crop_size", cfg["size"])
    size = size["shortest_edge"] if isinstance(size, dict) else int(size)
    crop = crop["height"] if isinstance(crop, dict) else int(crop)
    resample = mode or _PIL_RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic")
    return PixelSpec(size=size, crop=crop, mean=tuple(cfg["image_mean"]),
                     std=tuple(cfg["image_std"]), mode=resample)


# ---------------------------------------------------------------------------------------
# Dual encoders: the loaded CLIP towers behind one small interface.

def unique_prompts(prompts: Sequence[str]) -> tuple[list[str], Tensor]:
    """Distinct prompts and, per input, its row among them: GRPO groups repeat each prompt K
    times, so the text tower runs once per distinct prompt (features are per prompt anyway)."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(p, len(rows)) for p in prompts]
    return list(rows), torch.tensor(index, dtype=torch.long)


class HFClip(nn.Module):
    """transformers `CLIPModel` + its tokenizer + pixel spec."""

    def __init__(self, model: nn.Module, tokenizer: object, pixels: PixelSpec) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pixels = model, tokenizer, pixels
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def image_features(self, images: Tensor) -> Tensor:  # (B,3,H,W) in [0,1] -> (B, D)
        pixels = to_model_pixels(images, self.pixels).to(self.model.logit_scale.dtype)
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def text_features(self, prompts: Sequence[str]) -> Tensor:  # -> (B, D)
        # Padding to max_length keeps scores independent of what else is in the batch
        # (causal text mask + EOS pooling make it equal to the official padding=True).
        unique, index = unique_prompts(prompts)
        tok = self.tokenizer(unique, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        device = self.model.logit_scale.device
        feats = self.model.get_text_features(input_ids=tok.input_ids.to(device),
                                             attention_mask=tok.attention_mask.to(device)).pooler_output
        return feats[index.to(device)]

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale


class OpenClip(nn.Module):
    """open_clip `CLIP` + its `SimpleTokenizer` + pixel spec (HPSv2 runs on this)."""

    def __init__(self, model: nn.Module, tokenizer: Callable, pixels: PixelSpec) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pixels = model, tokenizer, pixels

    def image_features(self, images: Tensor) -> Tensor:  # (B,3,H,W) in [0,1] -> (B, D)
        pixels = to_model_pixels(images, self.pixels).to(self.model.logit_scale.dtype)
        return self.model.encode_image(pixels)

    def text_features(self, prompts: Sequence[str]) -> Tensor:  # -> (B, D)
        unique, index = unique_prompts(prompts)
        device = self.model.logit_scale.device
        return self.model.encode_text(self.tokenizer(unique).to(device))[index.to(device)]

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale


def preference_mlp(dim: int) -> nn.Sequential:
    """The MLP head shared by LAION aesthetic v2 and ImageReward (their `MLP.layers`):
    dim -> 1024 -> 128 -> 64 -> 16 -> 1, no activations (commented out in both originals),
    dropout 0.2/0.2/0.1 (inactive in eval). Keys: layers.{0,2,4,6,7}.{weight,bias}."""
    return nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                         nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1),
                         nn.Linear(64, 16), nn.Linear(16, 1))


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


# ---------------------------------------------------------------------------------------
# Weight specs and loaders of the real models.

# tokenizer.json (transformers 5 saves only it) or the older vocab.json + merges.txt pair.
_TOKENIZER_FILES = ("tokenizer.json|vocab.json", "tokenizer_config.json", "preprocessor_config.json")
_HF_WEIGHTS = ("config.json", "model.safetensors|pytorch_model.bin")


def clip_spec(reward: str, hub_id: str, env: str, field: str) -> WeightSpec:
    return WeightSpec(reward, f"CLIP model + processor ({hub_id})", hub_id,
                      _HF_WEIGHTS + _TOKENIZER_FILES, env, field)


def load_hf_clip(model_dir: Path, processor_dir: Path, dtype: str, mode: str | None = None) -> HFClip:
    """transformers CLIP from local folders (already resolved: no hub access here)."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(model_dir), dtype=torch_dtype(dtype))
    tokenizer = CLIPTokenizer.from_pretrained(str(processor_dir))
    pixels = pixel_spec_from_processor(processor_dir / "preprocessor_config.json", mode)
    return frozen(HFClip(model, tokenizer, pixels), torch_dtype(dtype))


Interp = Literal["bicubic", "bilinear"]


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
        interpolation: Interp = "bicubic"
        """Resize filter: bicubic as CLIPImageProcessor (RTDMD's tensor transform used bilinear)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: int = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "clipscore"
    differentiable = True

    def __init__(self, cfg: "CLIPScore.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        self.encoder = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        spec = clip_spec(self.name, c.model_id, "RTDMD_BENCH_CLIP_PATH", "local_path")

        def build() -> HFClip:
            (files,) = resolve_files([(spec, c.local_path, c.model_id)])
            folder = folder_of(files)
            return load_hf_clip(folder, folder, c.dtype, c.interpolation)
        return cached_model("hf-clip", _ClipKey(c.model_id, c.local_path, c.dtype, c.interpolation), build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        cos = cosine(enc.image_features(images), enc.text_features(prompts))
        return (100.0 * cos).clamp(min=0.0) if self.cfg.convention == "torchmetrics" else cos

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)


@dataclass(frozen=True)
class _ClipKey:
    """Cache key of a shared CLIP (CLIPScore and the aesthetic predictor load the same one)."""

    model_id: str
    local_path: str
    dtype: str
    interpolation: str


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
        divide_by: float = 1.0
        """Score scale divisor: 1 = PickScore as reported; 26 = RTDMD's training reward."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: int = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "pickscore"
    differentiable = True

    def __init__(self, cfg: "PickScore.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        if self.cfg.divide_by <= 0:
            raise ValueError(f"pickscore divide_by must be > 0, got {self.cfg.divide_by}")
        self.encoder = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        model_spec = WeightSpec(self.name, "PickScore CLIP weights", c.model_id, _HF_WEIGHTS,
                                "RTDMD_BENCH_PICKSCORE_PATH", "local_path")
        proc_spec = WeightSpec(self.name, "CLIP-H processor", c.processor_id, _TOKENIZER_FILES,
                               "RTDMD_BENCH_PICKSCORE_PROCESSOR_PATH", "processor_path")

        def build() -> HFClip:
            model, proc = resolve_files([(model_spec, c.local_path, c.model_id),
                                         (proc_spec, c.processor_path, c.processor_id)])
            return load_hf_clip(folder_of(model), folder_of(proc), c.dtype)
        return cached_model("pickscore", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        cos = cosine(enc.image_features(images), enc.text_features(prompts))
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
        layout: Literal["pad", "center_crop"] = "pad"
        """Image layout: HPSv2's eval transform pads the longer side to 224 (same on squares)."""
        scale: float = 1.0
        """Multiply the cosine: 1 (training, ~0.28) or 100 (benchmark tables)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: int = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "hpsv2"
    differentiable = True

    def __init__(self, cfg: "HPSv2.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        self.encoder = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        spec = WeightSpec(self.name, f"HPS checkpoint {c.checkpoint}", c.hub_id, (c.checkpoint,),
                          "RTDMD_BENCH_HPSV2_PATH", "local_path")

        def build() -> OpenClip:
            import open_clip

            (files,) = resolve_files([(spec, c.local_path, c.hub_id)])
            arch = open_clip.get_model_config(c.arch)
            if arch is None:
                raise ValueError(f"open_clip has no architecture {c.arch!r}")
            model = open_clip.CLIP(**arch)
            load_strict(model, load_torch_state(files[c.checkpoint]), f"{c.checkpoint} (open_clip {c.arch})")
            size = arch["vision_cfg"]["image_size"]
            pixels = PixelSpec(size=size, crop=size, layout=c.layout)
            tok = open_clip.SimpleTokenizer(context_length=arch["text_cfg"]["context_length"])
            return frozen(OpenClip(model, tok, pixels), torch_dtype(c.dtype))
        return cached_model("hpsv2", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        return self.cfg.scale * cosine(enc.image_features(images), enc.text_features(prompts))

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
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; scores are returned in float32."""
        batch_size: int = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "aesthetic"
    differentiable = True

    def __init__(self, cfg: "Aesthetic.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
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
            encoder = cached_model("hf-clip", _ClipKey(c.clip_model_id, c.clip_path, c.dtype, "bicubic"),
                                   lambda: load_hf_clip(folder, folder, c.dtype, "bicubic"))
            return encoder, load_aesthetic_mlp(mlp_files[c.mlp_file], c.dtype)
        return cached_model("aesthetic", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        enc, images = placed(self.encoder, images)
        mlp, _ = placed(self.mlp, images)
        emb = F.normalize(enc.image_features(images), dim=-1)  # (B, 768), L2-normalised
        return mlp(emb).squeeze(-1)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)


def load_aesthetic_mlp(path: Path, dtype: str) -> nn.Module:
    """The MLP from its checkpoint; accepts `layers.N.*` (original) or `N.*` (bare Sequential).
    The input width comes from the file (768 for ViT-L/14)."""
    state = load_torch_state(path)
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    if "0.weight" not in state:
        raise UserError(f"{path} is not the aesthetic MLP (no layers.0.weight); keys: {sorted(state)[:5]}")
    mlp = preference_mlp(state["0.weight"].shape[1])
    load_strict(mlp, state, f"aesthetic MLP {path}")
    return frozen(mlp, torch_dtype(dtype))
