"""FLUX.2-klein bases over diffusers' Flux2Transformer2DModel + AutoencoderKLFlux2 + Qwen3.

As in the official RTDMD configs (configs/cold_start/flux2_4b.yaml), the teacher and the fake
score start from the undistilled `FLUX.2-klein-base-*` weights and the generator from the
distilled `FLUX.2-klein-*` weights. Decision: the generator is a SECOND frozen transformer with
the "student" LoRA on it (the official generator is LoRA too), and the fake score is a LoRA on
the teacher's transformer; so the memory is two frozen copies, not three.
`separate_generator=false` makes the student share the teacher's weights instead.

Conditioning: Qwen3 hidden states of layers (9, 18, 27) of the chat-templated prompt, stacked on
features (B, L, 3 D); the empty prompt is the CFG negative (as Flux2KleinPipeline does).
The transformer takes timestep = sigma (it multiplies by 1000 itself), no guidance embedding.
Latents x are the packed tokens the transformer consumes: VAE latents (C, H/8, W/8) ->
2x2 patchify (4C, H/16, W/16) -> BatchNorm-statistics normalisation -> (H/16 * W/16, 4C).
Schedule: FLUX.2-klein's empirical dynamic shift (`klein_mu`), resolution- and step-dependent; the
teacher's multi-step schedule is the scheduler's own under that mu (`teacher_sigmas`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rtdmd_bench.bases.diffusers_common import (
    ATTN_TARGETS, TINY_PROMPTS, DiffusersBase, DiffusersConfig, LoraSettings, Networks, load_component,
    weights_location, word_tokenizer,
)
from rtdmd_bench.bases.diffusers_loading import check_scheduler_config
from rtdmd_bench.bases.real_configs import FLUX_SCHEDULER
from rtdmd_bench.core.schedules import few_step_sigmas, scheduler_sigmas
from rtdmd_bench.errors import UserError

FLUX2_TARGETS: tuple[str, ...] = ATTN_TARGETS + ("attn.to_qkv_mlp_proj", "attn.to_out")
"""Official FLUX.2 LoRA targets: double-block attention as SD3, plus the single blocks' fused
QKV+MLP input and output projections (configs/cold_start/flux2_4b.yaml)."""

FLUX2_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")


def klein_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2-klein's empirical shift mu (Flux2KleinPipeline `compute_empirical_mu`, also used by
    RTDMD's `compute_sigmas_flux2_klein`): linear in the token count, fitted at 10 and 200 steps
    and interpolated in the step count; above 4300 tokens the 200-step fit alone."""
    fit_200 = 0.00016927 * image_seq_len + 0.45666666
    if image_seq_len > 4300:
        return float(fit_200)
    fit_10 = 8.73809524e-05 * image_seq_len + 1.89833333
    slope = (fit_200 - fit_10) / 190.0
    return float(fit_200 + slope * (num_steps - 200.0))


@lru_cache(maxsize=16)
def _ids(n_text: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """RoPE coordinates (t, h, w, l): text tokens (0, 0, 0, l); image tokens (0, h, w, 0)."""
    one = torch.zeros(1, dtype=torch.long)
    txt = torch.cartesian_prod(one, one, one, torch.arange(n_text))  # (L, 4)
    img = torch.cartesian_prod(one, torch.arange(height), torch.arange(width), one)  # (H*W, 4)
    return txt, img  # (L, 4), (H*W, 4)


class Flux2Klein4B(DiffusersBase):
    """FLUX.2-klein 4B: teacher/fake from -base-4B, generator from -4B (two frozen copies)."""

    name = "flux2-4b"
    env_name = "FLUX2_4B"
    gated = False  # Apache-2.0 (the 9B variants are gated, non-commercial)
    latent_channels = 32
    vae_scale = 8
    scheduler_config = FLUX_SCHEDULER  # the teacher's FlowMatchEulerDiscreteScheduler (tiny-flux2 too)
    pipeline_class_name = "Flux2KleinPipeline"

    @dataclass
    class Config(DiffusersConfig):
        hub_id: str = "black-forest-labs/FLUX.2-klein-base-4B"
        """Repository of the teacher / fake-score weights (undistilled base)."""
        generator_hub_id: str = "black-forest-labs/FLUX.2-klein-4B"
        """Repository of the generator's initial weights (distilled)."""
        generator_path: str | None = None
        """Local copy of the generator repository; else $RTDMD_BENCH_<BASE>_GENERATOR_PATH, else the hub id."""
        separate_generator: bool = True
        """Student = LoRA on a second transformer from `generator_hub_id` (official); false = on the teacher's."""
        resolution: int = 512
        """Square image side in pixels (official RTDMD FLUX.2: 512)."""
        default_cfg: float = 4.0
        """Teacher CFG scale (official RTDMD FLUX.2: 4.0)."""
        max_sequence_length: int = 512
        """Qwen3 tokens (Flux2KleinPipeline default 512)."""
        text_layers: tuple[int, ...] = (9, 18, 27)
        """Qwen3 hidden-state layers stacked into the conditioning."""
        lora: LoraSettings = field(default_factory=lambda: LoraSettings(targets=FLUX2_TARGETS))
        """LoRA of student and fake score (official: rank 32, alpha 64, FLUX.2 targets)."""

    def __init__(self, cfg: "Flux2Klein4B.Config") -> None:
        super().__init__(cfg)
        if cfg.resolution % (self.vae_scale * 2):
            raise UserError(f"base.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2}")
        self.side = cfg.resolution // (self.vae_scale * 2)  # packed token grid side
        self.latent_shape = (self.side * self.side, 4 * self.latent_channels)

    # ---- networks ----------------------------------------------------------------------------
    def _build(self) -> Networks:
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        if self.random_init:  # the published architecture, random weights, a tokenizer built here
            tok = word_tokenizer([*TINY_PROMPTS, "user assistant"], self.cfg.max_sequence_length, TINY_CHAT_TEMPLATE)
            return self._random_networks(("enc",), {"tok": tok}, self.cfg.separate_generator)
        loc, local = self.resolve_weights(self.cfg.base_path, self.cfg.hub_id, FLUX2_SUBFOLDERS)
        msg = self.weights_error(loc, "not found locally and the hub is unreachable or offline", FLUX2_SUBFOLDERS)
        check_scheduler_config(loc, local, self.scheduler_config, self.name)
        dt = {"torch_dtype": self.dtype}
        nets = Networks(
            transformer=load_component(Flux2Transformer2DModel, loc, "transformer", local, msg, **dt),
            vae=load_component(AutoencoderKLFlux2, loc, "vae", local, msg, **dt),
            text={"tok": load_component(AutoTokenizer, loc, "tokenizer", local, msg),
                  "enc": load_component(Qwen3ForCausalLM, loc, "text_encoder", local, msg, **dt)})
        if self.cfg.separate_generator:
            env = f"RTDMD_BENCH_{self.env_name}_GENERATOR_PATH"
            gloc, glocal = self.resolve_weights(self.cfg.generator_path, self.cfg.generator_hub_id,
                                                ("transformer",), env_var=env)
            gmsg = self.weights_error(gloc, "generator weights not found locally and the hub is unreachable "
                                      f"or offline; set --set base.generator_path=DIR or {env}=DIR",
                                      ("transformer",)).replace(self.cfg.hub_id, self.cfg.generator_hub_id)
            nets.generator = load_component(Flux2Transformer2DModel, gloc, "transformer", glocal, gmsg, **dt)
        return nets

    # ---- conditioning ------------------------------------------------------------------------
    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        tok, enc = self.nets.text["tok"], self.nets.text["enc"]
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False) for p in prompts]
        batch = tok(texts, return_tensors="pt", padding="max_length", truncation=True,
                    max_length=self.cfg.max_sequence_length).to(self.device)
        out = enc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True, use_cache=False)
        h = torch.stack([out.hidden_states[k] for k in self.cfg.text_layers], dim=2)  # (B, L, 3, D)
        return {"embeds": h.flatten(2).to(self.dtype)}  # (B, L, 3 D), layer-major within a token

    # ---- transformer, VAE, schedule ----------------------------------------------------------
    def _forward(self, net: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        txt_ids, img_ids = _ids(cond["embeds"].shape[1], self.side, self.side)
        return net(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["embeds"],
                   timestep=sigma.to(self.dtype), img_ids=img_ids.to(x.device), txt_ids=txt_ids.to(x.device),
                   guidance=None, return_dict=False)[0]

    def unpack_latents(self, x: Tensor) -> Tensor:
        """(B, h*w, 4C) tokens -> (B, C, 2h, 2w) VAE latents: un-normalise with the VAE's BatchNorm
        statistics (over the 4C patchified channels), then undo the 2x2 patchify."""
        vae = self.nets.vae
        b, c4 = x.shape[0], x.shape[-1]
        z = x.transpose(1, 2).reshape(b, c4, self.side, self.side)  # tokens are row-major (h, w)
        std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).view(1, -1, 1, 1)
        z = z * std.to(z.dtype) + vae.bn.running_mean.view(1, -1, 1, 1).to(z.dtype)
        z = z.reshape(b, c4 // 4, 2, 2, self.side, self.side)  # channel = c * 4 + 2 * dy + dx
        return z.permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * self.side, 2 * self.side)

    def _decode(self, x: Tensor) -> Tensor:
        vae = self.nets.vae
        return vae.decode(self.unpack_latents(x.to(vae.dtype)), return_dict=False)[0]

    def sigmas(self, num_steps: int) -> Tensor:
        return few_step_sigmas(num_steps, mu=klein_mu(self.side * self.side, num_steps))

    def student_weights(self) -> str:
        """The generator's weights (the distilled -4B/-9B) when the student has its own transformer."""
        if not self.cfg.separate_generator or self.name.startswith("tiny-"):
            return super().student_weights()
        env = f"RTDMD_BENCH_{self.env_name}_GENERATOR_PATH"
        return weights_location(self.cfg.generator_path, env, self.cfg.generator_hub_id)[0]

    def _pipeline(self, transformer: nn.Module, scheduler: Any) -> Any:
        from diffusers import Flux2KleinPipeline

        # is_distilled: a few-step student never takes CFG (the pipeline then ignores guidance_scale).
        return Flux2KleinPipeline(scheduler=scheduler, vae=self.nets.vae, text_encoder=self.nets.text["enc"],
                                  tokenizer=self.nets.text["tok"], transformer=transformer, is_distilled=True)

    def pipeline_call(self, num_steps: int) -> dict[str, Any]:
        """The shared call plus the Qwen3 layers the conditioning stacks (`text_layers`)."""
        return {**super().pipeline_call(num_steps), "text_encoder_out_layers": list(self.cfg.text_layers)}

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """The scheduler's sigmas under the empirical mu for num_steps, + the final 0: RTDMD's normal
        mode calls `set_timesteps(num_steps, mu=mu)` (evenly spaced down to sigma 1/1000 before the
        shift); with `pipeline`, Flux2KleinPipeline's `set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)`."""
        return scheduler_sigmas(num_steps, self.scheduler_config, klein_mu(self.side * self.side, num_steps),
                                "uniform" if pipeline else "scheduler")


class Flux2Klein9B(Flux2Klein4B):
    """FLUX.2-klein 9B: teacher/fake from -base-9B, generator from -9B (gated, non-commercial)."""

    name = "flux2-9b"
    env_name = "FLUX2_9B"
    gated = True

    @dataclass
    class Config(Flux2Klein4B.Config):
        hub_id: str = "black-forest-labs/FLUX.2-klein-base-9B"
        """Repository of the teacher / fake-score weights (undistilled base)."""
        generator_hub_id: str = "black-forest-labs/FLUX.2-klein-9B"
        """Repository of the generator's initial weights (distilled)."""


# ---- tiny-flux2 -------------------------------------------------------------------------------
TINY_QWEN3 = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)
TINY_FLUX2_TRANSFORMER = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
    num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=16, mlp_ratio=3.0,
    axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False,
)
"""Tiny FLUX.2: width 16, one double and one single block; joint_attention_dim = 3 x Qwen3 width."""
TINY_FLUX2_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
)
TINY_CHAT_TEMPLATE = "{% for m in messages %}user {{ m['content'] }} assistant{% endfor %}"


def tiny_flux2_networks(seed: int, max_sequence_length: int, separate_generator: bool) -> Networks:
    """Seeded random tiny FLUX.2-klein; the generator (if separate) is a differently seeded copy."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = word_tokenizer([*TINY_PROMPTS, "user assistant"], max_sequence_length, TINY_CHAT_TEMPLATE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(**TINY_FLUX2_TRANSFORMER)
        vae = AutoencoderKLFlux2(**TINY_FLUX2_VAE)
        with torch.no_grad():  # non-trivial latent statistics so the de-normalisation is exercised
            vae.bn.running_mean.normal_(0, 0.1)
            vae.bn.running_var.uniform_(0.5, 2.0)
        enc = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), pad_token_id=0, **TINY_QWEN3))
        generator = Flux2Transformer2DModel(**TINY_FLUX2_TRANSFORMER) if separate_generator else None
    return Networks(transformer=transformer, vae=vae, text={"tok": tok, "enc": enc}, generator=generator)


class TinyFlux2(Flux2Klein4B):
    """The FLUX.2-klein adapter over a tiny random FLUX.2 (CPU tests), separate generator included."""

    name = "tiny-flux2"
    env_name = "TINY_FLUX2"
    latent_channels = 4

    @dataclass
    class Config(Flux2Klein4B.Config):
        resolution: int = 32
        """Square image side in pixels (4 packed tokens of 16 channels)."""
        weights_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
        """Storage dtype of the random weights."""
        autocast_bf16: bool = False
        """bf16 autocast (off: CPU tests compare outputs exactly)."""
        gradient_checkpointing: bool = False
        """Recompute blocks in backward."""
        init: Literal["random"] = "random"
        """Always random weights (seeded by `seed`): a tiny base has no pretrained ones."""
        lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=4, alpha=8.0, targets=FLUX2_TARGETS))
        """Small LoRA on the official FLUX.2 targets."""
        max_sequence_length: int = 16
        """Qwen3 tokens."""
        text_layers: tuple[int, ...] = (1, 2, 3)
        """All three layers of the tiny Qwen3."""
        device: str = "cpu"
        """Tiny bases run on CPU unless told otherwise."""
        prompt_file: str | None = None
        """Distillation prompts; unset = the tiny prompt list (random text encoders: any words do)."""
        reward_prompt_file: str | None = None
        """Reward-step prompts; unset = the tiny prompt list."""

    def _build(self) -> Networks:
        return tiny_flux2_networks(self.cfg.seed, self.cfg.max_sequence_length, self.cfg.separate_generator)

    def train_prompts(self) -> list[str]:
        return list(TINY_PROMPTS) if not self.cfg.prompt_file else super().train_prompts()

    def reward_prompts(self) -> list[str]:
        return list(TINY_PROMPTS) if not self.cfg.reward_prompt_file else super().reward_prompts()

