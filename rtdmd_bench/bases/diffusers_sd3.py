"""Stable Diffusion 3 / 3.5 bases over diffusers' SD3Transformer2DModel + AutoencoderKL.

Conditioning (as SD3 was trained): two CLIP text encoders give the penultimate hidden states
(concatenated on features, zero-padded to T5's width) and pooled projections (concatenated);
T5 gives the long sequence; the transformer sees [CLIP tokens; T5 tokens]. The transformer's
timestep is sigma * 1000. Schedule: constant shift 3 (METHODS.md section 1); the teacher's
multi-step schedule is the scheduler's own (`teacher_sigmas`). Latents are the
VAE latents scaled as `(z - shift_factor) * scaling_factor`, shape (16, H/8, W/8).

`tiny-sd3` is the same adapter over the same classes with a tiny random config (seeded) and
tokenizers built in memory: the real code path on CPU in seconds, no download ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rtdmd_bench.bases.diffusers_common import (
    TINY_PROMPTS, DiffusersBase, DiffusersConfig, LoraSettings, Networks, load_component, word_tokenizer,
)
from rtdmd_bench.bases.diffusers_loading import check_scheduler_config
from rtdmd_bench.bases.real_configs import SD3_SCHEDULER
from rtdmd_bench.core.schedules import few_step_sigmas, scheduler_sigmas
from rtdmd_bench.errors import UserError

SD3_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                  "tokenizer", "tokenizer_2", "tokenizer_3")
CLIP_MAX_LENGTH = 77  # CLIP's context length (SD3 pipeline's tokenizer_max_length)


class SD3(DiffusersBase):
    """Stable Diffusion 3 medium; teacher, fake score and student share one frozen transformer."""

    name = "sd3"
    env_name = "SD3"
    shift = 3.0  # SD3/SD3.5 constant timestep shift (scheduler_config.json "shift": 3.0)
    scheduler_config = SD3_SCHEDULER  # the teacher's FlowMatchEulerDiscreteScheduler (tiny-sd3 too)
    latent_channels = 16
    vae_scale = 8
    pipeline_class_name = "StableDiffusion3Pipeline"

    @dataclass
    class Config(DiffusersConfig):
        hub_id: str = "stabilityai/stable-diffusion-3-medium-diffusers"
        """Hugging Face repository of the weights, diffusers layout."""
        default_cfg: float = 7.0
        """Teacher CFG scale (official RTDMD SD3-M: 7.0)."""

    def __init__(self, cfg: "SD3.Config") -> None:
        super().__init__(cfg)
        side = cfg.resolution // self.vae_scale
        if cfg.resolution % (self.vae_scale * 2):
            raise UserError(f"base.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2}")
        self.latent_shape = (self.latent_channels, side, side)

    # ---- networks ----------------------------------------------------------------------------
    def _build(self) -> Networks:
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        if self.random_init:  # the published architecture, random weights, tokenizers built here
            clip, t5 = (word_tokenizer(TINY_PROMPTS, n) for n in (CLIP_MAX_LENGTH, self.cfg.max_sequence_length))
            return self._random_networks(("enc1", "enc2", "enc3"), {"tok1": clip, "tok2": clip, "tok3": t5})
        loc, local = self.resolve_weights(self.cfg.base_path, self.cfg.hub_id, SD3_SUBFOLDERS)
        msg = self.weights_error(loc, "not found locally and the hub is unreachable or offline", SD3_SUBFOLDERS)
        check_scheduler_config(loc, local, self.scheduler_config, self.name)

        def load(cls, sub, **kw):  # noqa: ANN001, ANN202
            return load_component(cls, loc, sub, local, msg, **kw)

        dt = {"torch_dtype": self.dtype}
        return Networks(
            transformer=load(SD3Transformer2DModel, "transformer", **dt),
            vae=load(AutoencoderKL, "vae", **dt),
            text={"tok1": load(CLIPTokenizer, "tokenizer"), "tok2": load(CLIPTokenizer, "tokenizer_2"),
                  "tok3": load(T5TokenizerFast, "tokenizer_3"),
                  "enc1": load(CLIPTextModelWithProjection, "text_encoder", **dt),
                  "enc2": load(CLIPTextModelWithProjection, "text_encoder_2", **dt),
                  "enc3": load(T5EncoderModel, "text_encoder_3", **dt)},
        )

    # ---- conditioning ------------------------------------------------------------------------
    def _clip(self, idx: int, prompts: list[str]) -> tuple[Tensor, Tensor]:
        tok, enc = self.nets.text[f"tok{idx}"], self.nets.text[f"enc{idx}"]
        ids = tok(prompts, padding="max_length", max_length=min(tok.model_max_length, CLIP_MAX_LENGTH),
                  truncation=True, return_tensors="pt").input_ids.to(self.device)
        out = enc(ids, output_hidden_states=True)
        return out.hidden_states[-2], out[0]  # (B, 77, D_i) penultimate layer, (B, P_i) pooled

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        h1, p1 = self._clip(1, prompts)
        h2, p2 = self._clip(2, prompts)
        tok3, enc3 = self.nets.text["tok3"], self.nets.text["enc3"]
        ids = tok3(prompts, padding="max_length", max_length=self.cfg.max_sequence_length, truncation=True,
                   add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
        t5 = enc3(ids)[0]  # (B, L, D_t5)
        clip = torch.cat([h1, h2], dim=-1)  # (B, 77, D1 + D2)
        clip = nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (B, 77, D_t5)
        return {"embeds": torch.cat([clip, t5], dim=1).to(self.dtype),  # (B, 77 + L, D_t5)
                "pooled": torch.cat([p1, p2], dim=-1).to(self.dtype)}  # (B, P1 + P2)

    # ---- transformer, VAE, schedule ----------------------------------------------------------
    def _forward(self, net: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        # SD3 transformer timestep = sigma * 1000 (FlowMatchEulerDiscreteScheduler convention).
        return net(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["embeds"],
                   pooled_projections=cond["pooled"], timestep=(sigma * 1000).to(self.dtype),
                   return_dict=False)[0]

    def _decode(self, x: Tensor) -> Tensor:
        vae = self.nets.vae
        z = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z, return_dict=False)[0]  # (B, 3, H, W) in about [-1, 1]

    def sigmas(self, num_steps: int) -> Tensor:
        return few_step_sigmas(num_steps, shift=self.shift)

    def _pipeline(self, transformer: nn.Module, scheduler: Any) -> Any:
        from diffusers import StableDiffusion3Pipeline

        t = self.nets.text
        return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=self.nets.vae,
                                        text_encoder=t["enc1"], tokenizer=t["tok1"], text_encoder_2=t["enc2"],
                                        tokenizer_2=t["tok2"], text_encoder_3=t["enc3"], tokenizer_3=t["tok3"])

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """`FlowMatchEulerDiscreteScheduler(shift=3).set_timesteps(num_steps)` sigmas + the final 0, as
        RTDMD's normal mode and StableDiffusion3Pipeline set them (the pipeline passes no sigmas, so
        `pipeline` changes nothing here)."""
        return scheduler_sigmas(num_steps, self.scheduler_config)


class SD35M(SD3):
    """Stable Diffusion 3.5 medium (MMDiT-X: dual attention in the first 13 blocks, QK-norm)."""

    name = "sd35m"
    env_name = "SD35M"

    @dataclass
    class Config(SD3.Config):
        hub_id: str = "stabilityai/stable-diffusion-3.5-medium"
        """Hugging Face repository of the weights, diffusers layout."""
        resolution: int = 512
        """Square image side in pixels (official RTDMD SD3.5-M: 512)."""
        default_cfg: float = 4.5
        """Teacher CFG scale (official RTDMD SD3.5-M: 4.5)."""


class SD35L(SD3):
    """Stable Diffusion 3.5 large (8B MMDiT with QK-norm); FSDP territory."""

    name = "sd35l"
    env_name = "SD35L"

    @dataclass
    class Config(SD3.Config):
        hub_id: str = "stabilityai/stable-diffusion-3.5-large"
        """Hugging Face repository of the weights, diffusers layout."""
        default_cfg: float = 3.5
        """Teacher CFG scale; RTDMD ships no SD3.5-L config, 3.5 is the model card's default."""


# ---- tiny-sd3 ---------------------------------------------------------------------------------
TINY_SD3_TRANSFORMER = dict(
    sample_size=4, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
    num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
    pos_embed_max_size=16,
)
"""Tiny SD3 MMDiT: width 16, 2 joint blocks; joint_attention_dim = T5 width, pooled = 2 x CLIP proj."""

TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
    latent_channels=4, norm_num_groups=4, sample_size=32,
)
"""Tiny AutoencoderKL with SD3's 8x downsampling (4 blocks) and 4 latent channels."""

TINY_CLIP = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=8, max_position_embeddings=CLIP_MAX_LENGTH)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


def tiny_sd3_networks(seed: int, max_sequence_length: int) -> Networks:
    """Seeded random tiny SD3 (transformer, VAE, 2 CLIP + T5, word tokenizers); no download."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tok = word_tokenizer(TINY_PROMPTS, CLIP_MAX_LENGTH)
    specials = dict(vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**TINY_SD3_TRANSFORMER)
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=1.5305, shift_factor=0.0609)  # SD3's VAE constants
        enc1 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_CLIP, **specials))
        enc2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_CLIP, **specials))
        enc3 = T5EncoderModel(T5Config(**TINY_T5, **specials, decoder_start_token_id=0))
    t5_tok = word_tokenizer(TINY_PROMPTS, max_sequence_length)
    return Networks(transformer=transformer, vae=vae,
                    text={"tok1": tok, "tok2": tok, "tok3": t5_tok, "enc1": enc1, "enc2": enc2, "enc3": enc3})


class TinySD3(SD3):
    """The SD3 adapter over a tiny random SD3 (CPU tests of the real path; images are noise)."""

    name = "tiny-sd3"
    env_name = "TINY_SD3"
    latent_channels = 4

    @dataclass
    class Config(SD3.Config):
        resolution: int = 32
        """Square image side in pixels (latents 4 x 4 x 4)."""
        weights_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
        """Storage dtype of the random weights."""
        autocast_bf16: bool = False
        """bf16 autocast (off: CPU tests compare outputs exactly)."""
        gradient_checkpointing: bool = False
        """Recompute blocks in backward (tested on, off by default for speed)."""
        init: Literal["random"] = "random"
        """Always random weights (seeded by `seed`): a tiny base has no pretrained ones."""
        lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=4, alpha=8.0))
        """Small LoRA (same alpha / rank = 2 as the official 64 / 32)."""
        max_sequence_length: int = 8
        """T5 tokens."""
        device: str = "cpu"
        """Tiny bases run on CPU unless told otherwise."""
        prompt_file: str | None = None
        """Distillation prompts; unset = the tiny prompt list (random text encoders: any words do)."""
        reward_prompt_file: str | None = None
        """Reward-step prompts; unset = the tiny prompt list."""

    def _build(self) -> Networks:
        return tiny_sd3_networks(self.cfg.seed, self.cfg.max_sequence_length)

    def train_prompts(self) -> list[str]:
        return list(TINY_PROMPTS) if not self.cfg.prompt_file else super().train_prompts()

    def reward_prompts(self) -> list[str]:
        return list(TINY_PROMPTS) if not self.cfg.reward_prompt_file else super().reward_prompts()
