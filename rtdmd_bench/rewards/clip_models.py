"""The CLIP-family models behind the rewards of clip_based.py, and how their real weights are found
and loaded (the reward classes, their configs and the scoring call path are in clip_based.py).

- `HFClip`, `OpenClip`: a loaded transformers / open_clip dual encoder behind one small interface
  (`image_features`, `text_features`, `logit_scale`, `pixels`: its input geometry).
- `preference_mlp`: the MLP head of LAION aesthetic v2 and ImageReward.
- weight specs (which files, from which hub repo) and loaders that build the frozen models from
  already resolved local files (rtdmd_bench.rewards.loading finds them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards.loading import WeightSpec, frozen, load_strict, load_torch_state
from rtdmd_bench.rewards.pixels import PixelSpec
from rtdmd_bench.weights import torch_dtype

# ---------------------------------------------------------------------------------------
# Dual encoders: the loaded CLIP towers behind one small interface.

def unique_prompts(prompts: Sequence[str]) -> tuple[list[str], Tensor]:
    """Distinct prompts and, per input, its row among them: GRPO groups repeat each prompt K
    times, so the text tower runs once per distinct prompt (features are per prompt anyway)."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(p, len(rows)) for p in prompts]
    return list(rows), torch.tensor(index, dtype=torch.long)


class HFClip(nn.Module):
    """transformers `CLIPModel` + its tokenizer + the input geometry of its processor."""

    def __init__(self, model: nn.Module, tokenizer: object, pixels: PixelSpec) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pixels = model, tokenizer, pixels
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def image_features(self, pixels: Tensor) -> Tensor:  # (B,3,crop,crop) normalised -> (B, D)
        pixels = pixels.to(self.model.logit_scale.dtype)
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
    """open_clip `CLIP` + its `SimpleTokenizer` + its input geometry (HPSv2 runs on this)."""

    def __init__(self, model: nn.Module, tokenizer: Callable, pixels: PixelSpec) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pixels = model, tokenizer, pixels

    def image_features(self, pixels: Tensor) -> Tensor:  # (B,3,crop,crop) normalised -> (B, D)
        return self.model.encode_image(pixels.to(self.model.logit_scale.dtype))

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
# Weight specs and loaders of the real models.

# tokenizer.json (transformers 5 saves only it) or the older vocab.json + merges.txt pair.
TOKENIZER_FILES = ("tokenizer.json|vocab.json", "tokenizer_config.json", "preprocessor_config.json")
HF_WEIGHTS = ("config.json", "model.safetensors|pytorch_model.bin")
_PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as processor json files store it


def clip_spec(reward: str, hub_id: str, env: str, field: str) -> WeightSpec:
    return WeightSpec(reward, f"CLIP model + processor ({hub_id})", hub_id,
                      HF_WEIGHTS + TOKENIZER_FILES, env, field)


def pixel_spec_from_processor(path: Path) -> PixelSpec:
    """Size, crop, mean and std from a HF `preprocessor_config.json`. Every pipeline here
    resizes bicubic as the CLIP processors do; another resample is refused, not ignored."""
    cfg = json.loads(Path(path).read_text())
    if int(cfg.get("resample", _PIL_BICUBIC)) != _PIL_BICUBIC:
        raise UserError(f"{path}: resample={cfg['resample']} but the CLIP rewards follow a bicubic "
                        f"processor ({_PIL_BICUBIC}); is this the right processor?")
    size, crop = cfg["size"], cfg.get("crop_size", cfg["size"])
    size = size["shortest_edge"] if isinstance(size, dict) else int(size)
    crop = crop["height"] if isinstance(crop, dict) else int(crop)
    return PixelSpec(size=size, crop=crop, mean=tuple(cfg["image_mean"]), std=tuple(cfg["image_std"]))


def load_hf_clip(model_dir: Path, processor_dir: Path, dtype: str) -> HFClip:
    """transformers CLIP from local folders (already resolved: no hub access here)."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(model_dir), dtype=torch_dtype(dtype))
    tokenizer = CLIPTokenizer.from_pretrained(str(processor_dir))
    pixels = pixel_spec_from_processor(processor_dir / "preprocessor_config.json")
    return frozen(HFClip(model, tokenizer, pixels), torch_dtype(dtype))


@dataclass(frozen=True)
class ClipKey:
    """Cache key of a shared CLIP (CLIPScore and the aesthetic predictor load the same one)."""

    model_id: str
    local_path: str
    dtype: str


def load_hps(path: Path, checkpoint: str, arch_name: str, dtype: str) -> OpenClip:
    """An HPS checkpoint (`checkpoint`: its file name, for messages) on the open_clip architecture
    `arch_name`, whose config ships with open_clip."""
    import open_clip

    arch = open_clip.get_model_config(arch_name)
    if arch is None:
        raise ValueError(f"open_clip has no architecture {arch_name!r}")
    model = open_clip.CLIP(**arch)
    load_strict(model, load_torch_state(path), f"{checkpoint} (open_clip {arch_name})")
    size = arch["vision_cfg"]["image_size"]
    tok = open_clip.SimpleTokenizer(context_length=arch["text_cfg"]["context_length"])
    return frozen(OpenClip(model, tok, PixelSpec(size=size, crop=size)), torch_dtype(dtype))


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
