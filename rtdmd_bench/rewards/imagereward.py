"""ImageReward v1.0 (THUDM/ImageReward) on transformers' BLIP classes.

The official model (ImageReward/ImageReward.py): BLIP ViT-L/16 image encoder at 224 px, a
BERT text encoder with cross-attention to the image tokens (BLIP's med.py), an MLP head on
the [CLS] feature, and a fixed normalisation:
    reward = (mlp(text_encoder(prompt, image)[:, 0]) - 0.16717362830052426) / 1.0333394966054072
with the prompt padded/truncated to 35 bert-base-uncased tokens. The `image-reward` package
cannot be imported alongside transformers 5, so the checkpoint `ImageReward.pt` is loaded
into `BlipVisionModel` + `BlipTextModel` through an explicit key mapping (written here from
the key layouts of BLIP's vit.py/med.py and transformers' BLIP modules).
Preprocessing: the official `_transform` (torchvision Resize(224, BICUBIC) + CenterCrop(224) on
the PIL image, OpenAI CLIP mean/std) or a differentiable stand-in for it, chosen by the `pixels` /
`pixels_grad` fields (rtdmd_bench.rewards.pixels).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.rewards.clip_based import batched, pixels_for, placed
from rtdmd_bench.rewards.clip_models import preference_mlp
from rtdmd_bench.rewards.loading import (
    WeightSpec, cached_model, folder_of, frozen, load_strict, load_torch_state, resolve_files,
)
from rtdmd_bench.rewards.pixels import IMAGEREWARD_PIPELINES, GradPixels, PixelSpec, TowerPixels, check_choices
from rtdmd_bench.weights import torch_dtype

REWARD_MEAN = 0.16717362830052426  # ImageReward.mean: subtracted from the MLP output
REWARD_STD = 1.0333394966054072  # ImageReward.std: divides it
PROMPT_TOKENS = 35  # max_length of the official tokenizer call (padding="max_length")

# BLIP vit.py (timm-style) -> transformers BlipVisionModel parameter names.
_VISION_RULES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"encoder.layers.\1.mlp.fc\2."),
    (r"^norm\.", "post_layernorm."),
]
# Parts of the BLIP pretraining model that ImageReward's score never uses.
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.itm_head.", "blip.temp",
           "blip.image_queue", "blip.text_queue", "blip.idx_queue", "blip.ptr_queue",
           "blip.visual_encoder_m.", "blip.text_encoder_m.", "blip.vision_proj_m.",
           "blip.text_proj_m.", "blip.text_decoder.", "blip.text_encoder.embeddings.position_ids")


def _rename_vision(key: str) -> str:
    for pattern, repl in _VISION_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise UserError(f"ImageReward checkpoint: unknown visual_encoder key {key!r}")


def map_checkpoint(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Official ImageReward keys -> {"vision", "text", "mlp"} state dicts for
    BlipVisionModel, BlipTextModel and the MLP head. Keys of unused BLIP parts are dropped;
    any other key is an error (a wrong file must not load silently)."""
    out: dict[str, dict[str, Tensor]] = {"vision": {}, "text": {}, "mlp": {}}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            out["vision"][_rename_vision(key.removeprefix("blip.visual_encoder."))] = value
        elif key.startswith(_UNUSED):
            continue
        elif key.startswith("blip.text_encoder."):
            # BLIP's med.py BertModel and BlipTextModel share embeddings.* / encoder.layer.N.*
            # (attention, crossattention, intermediate, output) names one to one.
            out["text"][key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            out["mlp"][key.removeprefix("mlp.layers.")] = value
        else:
            raise UserError(f"ImageReward checkpoint: unexpected key {key!r} (is this ImageReward.pt?)")
    return out


def blip_configs(med: dict[str, Any], vision: dict[str, Any]) -> tuple[Any, Any]:
    """transformers configs from BLIP's med_config.json and the ViT settings.

    `is_decoder=True` makes BlipTextLayer build its cross-attention; the forward pass is still
    called with `is_decoder=False` (bidirectional self-attention), as BLIP's encoder mode."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vcfg = BlipVisionConfig(hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0, **vision)
    tcfg = BlipTextConfig(
        vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
        encoder_hidden_size=vcfg.hidden_size, intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"), layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=med.get("pad_token_id", 0), bos_token_id=med.get("bos_token_id", 30522),
        sep_token_id=med.get("sep_token_id", 102), is_decoder=True)
    return vcfg, tcfg


# BLIP ViT-L as ImageReward builds it: BLIP_Pretrain(image_size=224, vit='large').
VIT_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, image_size=224, patch_size=16)


class ImageRewardModel(nn.Module):
    """BLIP vision + cross-attending text encoder + MLP head + official normalisation."""

    def __init__(self, vision: nn.Module, text: nn.Module, mlp: nn.Module, tokenizer: Any,
                 pixels: PixelSpec) -> None:
        super().__init__()
        self.vision, self.text, self.mlp = vision, text, mlp
        self.tokenizer, self.pixels = tokenizer, pixels

    def forward(self, pixels: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,3,224,224) normalised -> (B,)
        pixels = pixels.to(self.vision.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # (B, 1+N, Dv)
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=PROMPT_TOKENS, return_tensors="pt")
        device = image_embeds.device
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)  # (B, 1+N)
        out = self.text(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device),
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                        is_decoder=False)
        feats = out.last_hidden_state[:, 0, :]  # (B, D) the [CLS] token
        return ((self.mlp(feats).float() - REWARD_MEAN) / REWARD_STD).squeeze(-1)


def build_model(med: dict[str, Any], vision: dict[str, Any], tokenizer: Any,
                pixels: PixelSpec) -> ImageRewardModel:
    """Randomly initialised ImageReward architecture (weights loaded by the caller)."""
    from transformers import BlipTextModel, BlipVisionModel

    vcfg, tcfg = blip_configs(med, vision)
    return ImageRewardModel(BlipVisionModel(vcfg), BlipTextModel(tcfg, add_pooling_layer=False),
                            preference_mlp(tcfg.hidden_size), tokenizer, pixels)


def load_into(model: ImageRewardModel, state: dict[str, Tensor]) -> None:
    """Load an official-format state dict (strict on every part)."""
    parts = map_checkpoint(state)
    load_strict(model.vision, parts["vision"], "ImageReward visual_encoder (BLIP ViT)")
    load_strict(model.text, parts["text"], "ImageReward text_encoder (BLIP BERT)")
    load_strict(model.mlp, parts["mlp"], "ImageReward MLP head")


def blip_tokenizer(tokenizer: Any) -> Any:
    """BLIP's init_tokenizer: bert-base-uncased + [DEC] (bos) + [ENC] (vocab 30522 -> 30524)."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward:
    """ImageReward v1.0 with the official normalisation (mean 0 / std 1 on its training set)."""

    @dataclass
    class Config:
        hub_id: str = "THUDM/ImageReward"
        """Hugging Face repo of ImageReward.pt and med_config.json."""
        local_path: str = ""
        """Local folder with ImageReward.pt + med_config.json (else $RTDMD_BENCH_IMAGEREWARD_PATH)."""
        tokenizer_id: str = "bert-base-uncased"
        """Repo of the BERT tokenizer BLIP uses."""
        tokenizer_path: str = ""
        """Local folder with its vocab.txt (else $RTDMD_BENCH_BERT_TOKENIZER_PATH, else hub)."""
        pixels: TowerPixels = "reference"
        """Pixel pipeline for images without gradients: reference = ImageReward's `_transform` (uint8 ->
        PIL -> torchvision Resize(224, BICUBIC) + CenterCrop, rounded offsets), as ImageReward.score and
        RTDMD's scorer; differentiable = torch bicubic + clamp + rounded crop; rtdmd_tensor = RTDMD's
        back-propagation fallback (F.interpolate to 224x224, bicubic, no antialias, no crop)."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline for images that carry gradients: differentiable or rtdmd_tensor (see `pixels`)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "float32"
        """Weights and compute dtype; the head output is normalised in float32."""
        batch_size: PositiveInt = 16
        """Images per forward pass (scores do not depend on it)."""

    name = "imagereward"
    differentiable = True
    pipelines = IMAGEREWARD_PIPELINES

    def __init__(self, cfg: "ImageReward.Config | None" = None) -> None:
        self.cfg = cfg or self.Config()
        check_choices(self.name, self.pipelines, self.cfg.pixels, self.cfg.pixels_grad)
        self.model = self._load()

    def _load(self) -> nn.Module:
        c = self.cfg
        ckpt = WeightSpec(self.name, "ImageReward checkpoint", c.hub_id,
                          ("ImageReward.pt", "med_config.json"), "RTDMD_BENCH_IMAGEREWARD_PATH",
                          "local_path")
        tok_spec = WeightSpec(self.name, "BERT tokenizer", c.tokenizer_id,
                              ("vocab.txt", "tokenizer_config.json"),
                              "RTDMD_BENCH_BERT_TOKENIZER_PATH", "tokenizer_path")

        def build() -> nn.Module:
            from transformers import BertTokenizer

            files, tok_files = resolve_files([(ckpt, c.local_path, c.hub_id),
                                              (tok_spec, c.tokenizer_path, c.tokenizer_id)])
            med = json.loads(Path(files["med_config.json"]).read_text())
            tokenizer = blip_tokenizer(BertTokenizer.from_pretrained(str(folder_of(tok_files))))
            model = build_model(med, VIT_LARGE, tokenizer, PixelSpec(size=224, crop=224))
            load_into(model, load_torch_state(files["ImageReward.pt"]))
            return frozen(model, torch_dtype(c.dtype))
        return cached_model("imagereward", c, build)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        model, images = placed(self.model, images)
        return model(pixels_for(self.pipelines, self.cfg, model.pixels, images), prompts)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        return batched(self._score, images, prompts, self.cfg.batch_size)
