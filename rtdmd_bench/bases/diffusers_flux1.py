"""FLUX.1-dev base over diffusers' FluxTransformer2DModel + AutoencoderKL + CLIP-L + T5-XXL.

FLUX.1-dev is guidance-distilled: there is no unconditional branch, CFG is a scalar input to its
guidance embedding (METHODS.md section 1). As in the official RTDMD FLUX.1 code
(rtdmd/models/flux.py, configs/cold_start/flux1_dev.yaml): the teacher gets guidance = the CFG
scale (3.5), student and fake score get guidance 1.0 (`plain_guidance`). One frozen transformer
carries the student and fake LoRA adapters.

Conditioning: CLIP-L pooled output + T5 sequence (512 tokens), text RoPE ids all zero.
Latents x: VAE latents (16, H/8, W/8) scaled `(z - shift) * scale`, packed 2x2 into tokens
(H/16 * W/16, 64); image RoPE ids (0, row, col). Schedule: FLUX.1's resolution-dependent
dynamic shift (`flux_mu`, base 256 / max 4096 tokens, shift 0.5 / 1.15); the teacher's multi-step
schedule is the scheduler's own under that mu (`teacher_sigmas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd_bench.bases.diffusers_common import (
    TINY_PROMPTS, DiffusersBase, DiffusersConfig, Networks, load_component, word_tokenizer,
)
from rtdmd_bench.bases.diffusers_loading import check_scheduler_config
from rtdmd_bench.bases.real_configs import FLUX_SCHEDULER
from rtdmd_bench.core.schedules import few_step_sigmas, flux_mu, scheduler_sigmas
from rtdmd_bench.errors import UserError

FLUX1_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
CLIP_MAX_LENGTH = 77


@lru_cache(maxsize=16)
def _ids(n_text: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """RoPE ids: text (L, 3) zeros; image (H*W, 3) = (0, row, col)."""
    img = torch.cartesian_prod(torch.zeros(1, dtype=torch.long), torch.arange(height), torch.arange(width))
    return torch.zeros(n_text, 3), img.float()


class Flux1Dev(DiffusersBase):
    """FLUX.1-dev (guidance embedding instead of CFG); teacher, fake and student share one copy."""

    name = "flux1-dev"
    env_name = "FLUX1_DEV"
    uses_negative = False  # guidance-distilled: no empty-prompt branch
    latent_channels = 16
    vae_scale = 8
    scheduler_config = FLUX_SCHEDULER  # the teacher's FlowMatchEulerDiscreteScheduler
    pipeline_class_name = "FluxPipeline"

    @dataclass
    class Config(DiffusersConfig):
        hub_id: str = "black-forest-labs/FLUX.1-dev"
        """Hugging Face repository of the weights, diffusers layout (gated, non-commercial licence)."""
        resolution: int = 512
        """Square image side in pixels (official RTDMD FLUX.1: 512)."""
        default_cfg: float = 3.5
        """Teacher guidance-embedding value (official RTDMD FLUX.1-dev: 3.5)."""
        plain_guidance: float = 1.0
        """Guidance value when no CFG is asked (student, fake score): official 1.0."""
        max_sequence_length: int = 512
        """T5 tokens (FluxPipeline default 512)."""

    def __init__(self, cfg: "Flux1Dev.Config") -> None:
        super().__init__(cfg)
        if cfg.resolution % (self.vae_scale * 2):
            raise UserError(f"base.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2}")
        self.side = cfg.resolution // (self.vae_scale * 2)
        self.latent_shape = (self.side * self.side, 4 * self.latent_channels)

    def _build(self) -> Networks:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        if self.random_init:  # the published architecture, random weights, tokenizers built here
            clip, t5 = (word_tokenizer(TINY_PROMPTS, n) for n in (CLIP_MAX_LENGTH, self.cfg.max_sequence_length))
            return self._random_networks(("enc1", "enc2"), {"tok1": clip, "tok2": t5})
        loc, local = self.resolve_weights(self.cfg.base_path, self.cfg.hub_id, FLUX1_SUBFOLDERS)
        msg = self.weights_error(loc, "not found locally and the hub is unreachable or offline", FLUX1_SUBFOLDERS)
        check_scheduler_config(loc, local, self.scheduler_config, self.name)
        dt = {"torch_dtype": self.dtype}

        def load(cls, sub, **kw):  # noqa: ANN001, ANN202
            return load_component(cls, loc, sub, local, msg, **kw)

        return Networks(
            transformer=load(FluxTransformer2DModel, "transformer", **dt), vae=load(AutoencoderKL, "vae", **dt),
            text={"tok1": load(CLIPTokenizer, "tokenizer"), "tok2": load(T5TokenizerFast, "tokenizer_2"),
                  "enc1": load(CLIPTextModel, "text_encoder", **dt), "enc2": load(T5EncoderModel, "text_encoder_2", **dt)})

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        tok1, enc1, tok2, enc2 = (self.nets.text[k] for k in ("tok1", "enc1", "tok2", "enc2"))
        ids = tok1(prompts, padding="max_length", max_length=min(tok1.model_max_length, CLIP_MAX_LENGTH),
                   truncation=True, return_tensors="pt").input_ids.to(self.device)
        pooled = enc1(ids, output_hidden_states=False).pooler_output  # (B, 768)
        ids = tok2(prompts, padding="max_length", max_length=self.cfg.max_sequence_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.device)
        return {"embeds": enc2(ids)[0].to(self.dtype), "pooled": pooled.to(self.dtype)}  # (B, L, 4096)

    def velocity(self, role: str, x: Tensor, sigma: Tensor, cond: dict[str, Tensor],
                 cfg: float | None = None, step: Tensor | None = None) -> Tensor:
        """One forward; `cfg` is fed to the guidance embedding (None -> `plain_guidance`)."""
        self.check_step(step)
        switch, adapter = self._role(role)
        guidance = torch.full_like(sigma, self.cfg.plain_guidance if cfg is None else cfg)
        with switch.using(adapter), self._autocast():
            v = self._forward(switch.runner, x, sigma, {**cond, "guidance": guidance})
        return v.float()

    def _forward(self, net: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        txt_ids, img_ids = _ids(cond["embeds"].shape[1], self.side, self.side)
        guidance = cond.get("guidance", torch.full_like(sigma, self.cfg.plain_guidance))
        # FLUX transformers take timestep and guidance in [0, 1] and multiply by 1000 themselves.
        return net(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["embeds"],
                   pooled_projections=cond["pooled"], timestep=sigma.to(self.dtype), guidance=guidance.float(),
                   img_ids=img_ids.to(x.device), txt_ids=txt_ids.to(x.device), return_dict=False)[0]

    def unpack_latents(self, x: Tensor) -> Tensor:
        """(B, h*w, 4C) tokens -> (B, C, 2h, 2w) scaled latents (token channel = c * 4 + 2 * dy + dx)."""
        b, c = x.shape[0], x.shape[-1] // 4
        z = x.reshape(b, self.side, self.side, c, 2, 2)
        return z.permute(0, 3, 1, 4, 2, 5).reshape(b, c, 2 * self.side, 2 * self.side)

    def _decode(self, x: Tensor) -> Tensor:
        vae = self.nets.vae
        z = self.unpack_latents(x.to(vae.dtype)) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z, return_dict=False)[0]

    def sigmas(self, num_steps: int) -> Tensor:
        return few_step_sigmas(num_steps, mu=flux_mu(self.side * self.side))

    def _pipeline(self, transformer: nn.Module, scheduler: Any) -> Any:
        from diffusers import FluxPipeline

        t = self.nets.text
        return FluxPipeline(scheduler=scheduler, vae=self.nets.vae, text_encoder=t["enc1"], tokenizer=t["tok1"],
                            text_encoder_2=t["enc2"], tokenizer_2=t["tok2"], transformer=transformer)

    def pipeline_call(self, num_steps: int) -> dict[str, Any]:
        """FluxPipeline feeds guidance_scale to the guidance embedding (no CFG branch; true_cfg_scale
        stays 1): the student's `plain_guidance`, as `velocity` gives it."""
        return {**super().pipeline_call(num_steps), "guidance_scale": self.cfg.plain_guidance}

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """The scheduler's sigmas under FluxPipeline's `calculate_shift` mu, + the final 0: RTDMD's
        normal mode calls `set_timesteps(num_steps, mu=mu)`; with `pipeline`, FluxPipeline's
        `set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)`."""
        c = self.scheduler_config
        mu = flux_mu(self.side * self.side, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        return scheduler_sigmas(num_steps, c, mu, "uniform" if pipeline else "scheduler")
