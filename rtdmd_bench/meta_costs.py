"""Costs counted on the meta device, for `rtdmd-bench plan`: a real base's networks built from
`rtdmd_bench.bases.real_configs` (shapes only: no memory, no weights), their parameter counts, and
the FLOPs of a transformer forward, a LoRA backward and a VAE decode at the official shapes,
counted by torch's FlopCounterMode, the same counter the training budget uses
(`rtdmd_bench.compute`). `rtdmd_bench.plan` turns them into memory, step and run estimates.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Iterator

import torch
from torch import nn

from rtdmd_bench.bases.diffusers_common import LoraSettings
from rtdmd_bench.bases.real_configs import Component, RealBase


def build_meta(c: Component) -> nn.Module:
    """The component on the meta device: shapes and parameter counts, no memory, no weights."""
    with torch.device("meta"):
        if c.library == "diffusers":
            import diffusers

            return getattr(diffusers, c.cls)(**c.kwargs)
        import transformers

        config = getattr(transformers, c.config_cls)(**c.kwargs)
        return getattr(transformers, c.cls)(config)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) parameters counted once


def meta_inputs(rb: RealBase) -> dict[str, torch.Tensor]:
    """Shape-only inputs of one sample at the official resolution, as each adapter feeds them."""
    k, side, txt = rb.transformer.kwargs, rb.resolution // 16, rb.text_tokens
    e = torch.empty(1, txt, k["joint_attention_dim"], device="meta")
    if rb.transformer.cls == "SD3Transformer2DModel":  # latents (B, C, H/8, W/8), patch 2 inside
        return dict(hidden_states=torch.empty(1, k["in_channels"], 2 * side, 2 * side, device="meta"),
                    encoder_hidden_states=e, timestep=torch.ones(1, device="meta"),
                    pooled_projections=torch.empty(1, k["pooled_projection_dim"], device="meta"))
    ids = 4 if rb.transformer.cls == "Flux2Transformer2DModel" else 3  # RoPE axes
    out = dict(hidden_states=torch.empty(1, side * side, k["in_channels"], device="meta"), encoder_hidden_states=e,
               timestep=torch.ones(1, device="meta"), img_ids=torch.zeros(side * side, ids, device="meta"),
               txt_ids=torch.zeros(txt, ids, device="meta"))
    if k.get("pooled_projection_dim"):  # FLUX.1: CLIP pooled vector and guidance embedding
        out.update(pooled_projections=torch.empty(1, k["pooled_projection_dim"], device="meta"),
                   guidance=torch.ones(1, device="meta"))
    return out


def measured_forward_flops(net: nn.Module, rb: RealBase) -> float:
    """F counted by torch's FlopCounterMode on the meta device: the same counter the training
    budget uses (`rtdmd_bench.compute`), without memory or weights."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(**meta_inputs(rb), return_dict=False)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def device_attention_on_meta() -> Iterator[None]:
    """On the meta device torch runs attention by its math decomposition, whose backward costs
    2x the forward where the fused kernels that CPUs and GPUs run (and the meter counts) cost 2.5x:
    route meta attention through the fused CPU kernel, which has a meta implementation and the
    same FLOP formula as the CUDA ones."""
    import torch.nn.functional as F

    import rtdmd_bench.compute  # noqa: F401  (registers the fused CPU attention's FLOP formulas)

    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):  # noqa: ANN001
        if query.device.type == "meta" and attn_mask is None and not kw.get("enable_gqa"):
            op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
            return op(query, key, value, dropout_p, is_causal, scale=scale)[0]
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kw)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def measured_lora_costs(net: nn.Module, rb: RealBase, lora: LoraSettings, counts: Iterable[int] = (1,)
                        ) -> dict[int, tuple[float, float]]:
    """{A: (forward, backward)} FLOPs of a student/fake call with A active LoRA adapters (only the
    last one trainable, as after RTDMD's restart), as multiples of the plain forward F, the backward
    taking gradients for the trainable LoRA weights only (as the meter's probe does); counted on
    the meta device at the official shapes. The adapters are removed afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    from rtdmd_bench.bases.diffusers_common import _peft_config, lora_modules

    plain = measured_forward_flops(net, rb)
    counts = sorted(set(counts))
    targets = sorted(lora_modules(net, lora.targets))
    names = [f"probe{i}" for i in range(max(counts))]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # several adapters is the point
        for name in names:
            net.add_adapter(_peft_config(targets, lora), adapter_name=name)
    out_costs: dict[int, tuple[float, float]] = {}
    try:
        for a in counts:
            net.set_adapters(names[:a])
            for p in net.parameters():
                p.requires_grad_(False)
            leaves = [p for n, p in net.named_parameters() if f".{names[a - 1]}." in n]
            for p in leaves:
                p.requires_grad_(True)
            with device_attention_on_meta():
                with FlopCounterMode(display=False) as counter:
                    out = net(**meta_inputs(rb), return_dict=False)[0]
                fwd = float(counter.get_total_flops())
                with FlopCounterMode(display=False) as counter:
                    torch.autograd.grad(out.float().sum(), leaves, allow_unused=True)
            out_costs[a] = (fwd / plain, float(counter.get_total_flops()) / plain)
        return out_costs
    finally:
        net.delete_adapters(names)


def measured_decode_flops(rb: RealBase) -> tuple[float, float]:
    """(forward, backward to the latents) FLOPs of the VAE decoder on one sample at the official
    resolution, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    vae = build_meta(rb.vae)
    side = rb.resolution // 8
    z = torch.empty(1, rb.vae.kwargs["latent_channels"], side, side, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = vae.decode(z, return_dict=False)[0]
    fwd = float(counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(out.float().sum(), [z])
    return fwd, float(counter.get_total_flops())
