"""Architecture facts of the real bases, as plain data, for `rtdmd-bench plan`.

Each component is (library, class, constructor kwargs) exactly as in the published diffusers
`*/config.json` of the hub repository (or, for transformers text encoders, the model config), so
`plan` can build it on the meta device and count parameters without any weights. Values were
recorded from the public configs (2025-2026 releases); the FLUX.2-klein-9B widths are the ones
whose parameter count matches the announced 9B (4096 wide, 8 double + 24 single blocks).
The tiny bases reuse the dicts their adapters build, so `plan` can be checked against reality.
LoRA settings are not facts of the model: `plan` takes them from each base's `Config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rtdmd_bench.core.schedules import FlowMatchSchedulerConfig


@dataclass(frozen=True)
class Component:
    library: Literal["diffusers", "transformers"]
    cls: str  # model class, e.g. "SD3Transformer2DModel", "CLIPTextModelWithProjection"
    kwargs: dict[str, Any]  # diffusers: constructor kwargs; transformers: config kwargs
    config_cls: str = ""  # transformers config class, e.g. "CLIPTextConfig"


@dataclass(frozen=True)
class RealBase:
    name: str
    hub_id: str
    transformer: Component
    vae: Component
    text_encoders: tuple[Component, ...]
    resolution: int  # official RTDMD training resolution
    text_tokens: int  # conditioning tokens the transformer sees
    image_tokens_per_side_divisor: int = 16  # image tokens = (resolution / 16)^2 for SD3 and FLUX
    separate_generator: bool = False  # FLUX.2-klein: generator initialised from other weights
    cold_start_batch: int = 9  # official per-GPU batch of AC-DMD (configs/cold_start: train.batch_size)
    stage2_batch: int = 2  # official RTDMD stage-2 per-GPU batch (configs/rtdmd: grpo.train_batch_size)

    def image_tokens(self) -> int:
        side = self.resolution // self.image_tokens_per_side_divisor
        return side * side


# ---- shared text encoders / VAEs --------------------------------------------------------------
CLIP_L = Component("transformers", "CLIPTextModelWithProjection", dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"), "CLIPTextConfig")
CLIP_L_NO_PROJ = Component("transformers", "CLIPTextModel", CLIP_L.kwargs, "CLIPTextConfig")  # FLUX.1
CLIP_G = Component("transformers", "CLIPTextModelWithProjection", dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, projection_dim=1280, hidden_act="gelu"), "CLIPTextConfig")
T5_XXL = Component("transformers", "T5EncoderModel", dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", decoder_start_token_id=0), "T5Config")
QWEN3_4B = Component("transformers", "Qwen3ForCausalLM", dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True), "Qwen3Config")
QWEN3_8B = Component("transformers", "Qwen3ForCausalLM", dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, tie_word_embeddings=False), "Qwen3Config")
VAE_16CH = Component("diffusers", "AutoencoderKL", dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=16, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False))
# The latent scale and shift constants of the VAE configs: no parameters (plan's counts do not see them),
# but a VAE built from the config (`base.init=random`) decodes with them, as the pretrained one does.
VAE_SD3 = Component("diffusers", "AutoencoderKL", dict(VAE_16CH.kwargs, scaling_factor=1.5305, shift_factor=0.0609))
"""stable-diffusion-3-medium-diffusers and the SD3.5 repositories: vae/config.json."""
VAE_FLUX1 = Component("diffusers", "AutoencoderKL", dict(VAE_16CH.kwargs, scaling_factor=0.3611, shift_factor=0.1159))
"""FLUX.1-dev: vae/config.json (BFL's flux `ae_params`: scale_factor 0.3611, shift_factor 0.1159)."""
VAE_FLUX2 = Component("diffusers", "AutoencoderKLFlux2", dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=32, norm_num_groups=32))

SD3_TEXT = (CLIP_L, CLIP_G, T5_XXL)
SD3_TEXT_TOKENS = 77 + 256  # CLIP tokens + T5 max_sequence_length


def _sd3(num_layers: int, heads: int, caption_dim: int, **extra: Any) -> Component:
    return Component("diffusers", "SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers,
        attention_head_dim=64, num_attention_heads=heads, joint_attention_dim=4096,
        caption_projection_dim=caption_dim, pooled_projection_dim=2048, **extra))


def _flux2(num_layers: int, num_single: int, heads: int, joint_dim: int) -> Component:
    return Component("diffusers", "Flux2Transformer2DModel", dict(
        patch_size=1, in_channels=128, num_layers=num_layers, num_single_layers=num_single,
        attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=joint_dim,
        timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), guidance_embeds=False))



REAL_BASES: dict[str, RealBase] = {
    "sd3": RealBase("sd3", "stabilityai/stable-diffusion-3-medium-diffusers",
                    _sd3(24, 24, 1536, pos_embed_max_size=192), VAE_SD3, SD3_TEXT, 1024, SD3_TEXT_TOKENS,
                    stage2_batch=2),
    "sd35m": RealBase("sd35m", "stabilityai/stable-diffusion-3.5-medium",
                      _sd3(24, 24, 1536, pos_embed_max_size=384, qk_norm="rms_norm",
                           dual_attention_layers=tuple(range(13))), VAE_SD3, SD3_TEXT, 512, SD3_TEXT_TOKENS,
                      stage2_batch=9),
    "sd35l": RealBase("sd35l", "stabilityai/stable-diffusion-3.5-large",
                      _sd3(38, 38, 2432, pos_embed_max_size=192, qk_norm="rms_norm"), VAE_SD3, SD3_TEXT, 1024,
                      SD3_TEXT_TOKENS, stage2_batch=3),  # no official SD3.5-L config: FLUX-sized batch
    "flux2-4b": RealBase("flux2-4b", "black-forest-labs/FLUX.2-klein-base-4B", _flux2(5, 20, 24, 3 * 2560),
                         VAE_FLUX2, (QWEN3_4B,), 512, 512, separate_generator=True, stage2_batch=6),
    "flux2-9b": RealBase("flux2-9b", "black-forest-labs/FLUX.2-klein-base-9B", _flux2(8, 24, 32, 3 * 4096),
                         VAE_FLUX2, (QWEN3_8B,), 512, 512, separate_generator=True, stage2_batch=3),
    "flux1-dev": RealBase("flux1-dev", "black-forest-labs/FLUX.1-dev", Component(
        "diffusers", "FluxTransformer2DModel", dict(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56))), VAE_FLUX1, (CLIP_L_NO_PROJ, T5_XXL), 512, 512,
        stage2_batch=3),
}


# ---- schedulers (scheduler/scheduler_config.json of each hub repository) -----------------------
SD3_SCHEDULER = FlowMatchSchedulerConfig(num_train_timesteps=1000, shift=3.0)
"""stable-diffusion-3-medium-diffusers, -3.5-medium and -3.5-large: `{"num_train_timesteps": 1000,
"shift": 3.0}`, no dynamic shifting (RTDMD's trainer comment says the same: "SD3.5
(use_dynamic_shifting=False, shift=3.0)")."""
FLUX_SCHEDULER = FlowMatchSchedulerConfig(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
"""FLUX.1-dev and the FLUX.2-klein repositories (-base-4B/-9B, -4B/-9B): dynamic shifting with the
FluxPipeline defaults (base 0.5 at 256 tokens, max 1.15 at 4096); `shift` 3.0 is unused under
dynamic shifting, and FLUX.2-klein's mu is the empirical `compute_empirical_mu`, not base/max
shift. Recorded without network access here: `check_scheduler_config` compares it with the
repository's own file whenever the weights are loaded."""


def tiny_bases() -> dict[str, RealBase]:
    """The tiny bases described with the same dicts their adapters build (imports diffusers adapters)."""
    from rtdmd_bench.bases import diffusers_flux2 as f2
    from rtdmd_bench.bases import diffusers_sd3 as s3

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # word_tokenizer's specials
    sd3_vocab, flux2_vocab = _tiny_vocab(s3.TINY_PROMPTS), _tiny_vocab([*f2.TINY_PROMPTS, "user assistant"])
    clip = Component("transformers", "CLIPTextModelWithProjection",
                     dict(s3.TINY_CLIP, vocab_size=sd3_vocab, **ids), "CLIPTextConfig")
    t5 = Component("transformers", "T5EncoderModel",
                   dict(s3.TINY_T5, vocab_size=sd3_vocab, decoder_start_token_id=0, **ids), "T5Config")
    qwen = Component("transformers", "Qwen3ForCausalLM",
                     dict(f2.TINY_QWEN3, vocab_size=flux2_vocab, pad_token_id=0), "Qwen3Config")
    return {
        "tiny-sd3": RealBase("tiny-sd3", "", Component("diffusers", "SD3Transformer2DModel", s3.TINY_SD3_TRANSFORMER),
                             Component("diffusers", "AutoencoderKL", s3.TINY_VAE), (clip, clip, t5), 32, 77 + 8),
        "tiny-flux2": RealBase("tiny-flux2", "", Component("diffusers", "Flux2Transformer2DModel",
                                                           f2.TINY_FLUX2_TRANSFORMER),
                               Component("diffusers", "AutoencoderKLFlux2", f2.TINY_FLUX2_VAE), (qwen,), 32, 16,
                               separate_generator=True),
    }


def _tiny_vocab(prompts: Any) -> int:
    words = {w for p in prompts for w in p.lower().replace(",", " ").split()}
    return len(words) + 4  # + <pad> <bos> <eos> <unk> (diffusers_loading.word_tokenizer)
