"""`rtdmd-bench plan`: parameters, memory per GPU and FLOPs of a method on a real base, no weights.

Every network is built on the meta device from `rtdmd_bench.bases.real_configs` (shapes only), so
the parameter counts are exact for the recorded configs. The rest are documented estimates:

- Memory per GPU = frozen weights x bytes(precision) + LoRA trainables x 16 B (fp32 weight, fp32
  grad, AdamW m and v; +4 B for the student's EMA copy) + activations. FSDP (`train.parallel=
  fsdp`: FSDP2 over the transformers, `rtdmd_bench/distributed.py`) divides the transformer
  weights and the trainable state by N, VAE and text encoders stay whole; DDP replicates all.
- Activations per sample (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", eq. 2 without the attention-score term, which flash/SDPA attention does not
  store): 34 T d bytes per block in 16-bit, i.e. 17 T d values. With gradient checkpointing (the
  official setting) only each block's input (T d values) is kept plus one live block:
  (L + 17) T d values; T = image + text tokens, d = width, L = blocks.
- One transformer forward on one sample, F, is counted by torch's FlopCounterMode running the
  meta-device transformer on meta inputs of the official shapes: the same counter the training
  budget uses. The formula F ~ 2 P T + 4 L T^2 d (every weight one multiply-add per token, plus
  attention scores and weighted sum) is printed as a cross-check; it overestimates (2-3x on SD3)
  because adaLN modulation weights act once per sample and text-stream weights only on text
  tokens. A backward costs 2F.
- A training step's cost = samples x forward-equivalents per sample, per `RECIPES` below, with
  the official per-GPU batches recorded in `real_configs` (AC-DMD 9; RTDMD stage 2 per base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtdmd_bench.bases.diffusers_common import LoraSettings, lora_parameter_count
from rtdmd_bench.bases.real_configs import REAL_BASES, Component, RealBase, tiny_bases
from rtdmd_bench.errors import UserError

WEIGHT_BYTES = {"bf16": 2, "fp32": 4}
TRAINABLE_BYTES = 16  # fp32 LoRA weight + grad + AdamW first and second moments
EMA_BYTES = 4  # fp32 EMA of the student LoRA (official generator EMA)
ACTIVATION_VALUES_PER_BLOCK = 17  # x T x d values (= 34 T d bytes at 16-bit, Korthikanti et al. 2022)


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int  # optimiser iterations of this stage in the official recipe (0 = no official run)
    batch: str  # which official per-GPU batch: "cold_start" or "stage2" (RealBase fields)
    batches_per_step: int  # micro-batches per iteration (RTDMD stage 2: num_batches_per_epoch 16)
    forwards_per_sample: float  # transformer-forward equivalents per sample per iteration
    how: str  # where the forward count comes from


# Forward-equivalents per sample per iteration (F units; backward = 2F; teacher CFG = 2F):
# rollout k ~ U{1..4} without grad = 2.5F; fake-score loss fwd+bwd = 3F; AC-DMD consistency =
# two more fake fwd+bwd = 6F; generator step = rollout 2.5F + backward of the last step 2F +
# teacher CFG 2F + fake 1F = 7.5F, every 10th (AC-DMD) or 5th (DMD2) iteration.
# RTDMD stage 2 per sample: 4-step rollout 4F + 2 SubGRPO steps fwd+bwd 6F + last step (student
# 3F + teacher CFG 2F + fake 1F) + fake step with consistency 9F = 25F; 16 micro-batches per epoch.
COLD_START = ("rollout 2.5F + fake 3F + consistency 6F + generator 7.5F/10", 2.5 + 3 + 6 + 7.5 / 10)
RECIPES: dict[str, tuple[Stage, ...]] = {
    "acdmd": (Stage("AC-DMD", 15000, "cold_start", 1, COLD_START[1], COLD_START[0]),),
    "dmd2": (Stage("DMD2", 0, "cold_start", 1, 2.5 + 3 + 7.5 / 5, "rollout 2.5F + fake 3F + generator 7.5F/5"),),
    "rtdmd": (Stage("stage 1 (AC-DMD)", 15000, "cold_start", 1, COLD_START[1], COLD_START[0]),
              Stage("stage 2 (reward-tilted)", 1000, "stage2", 16, 4 + 6 + 6 + 9,
                    "rollout 4F + SubGRPO 2x3F + last step 6F + fake with consistency 9F")),
}


@dataclass
class Plan:
    base: str
    method: str
    precision: str
    parallelism: str
    num_gpus: int
    params: dict[str, int]  # component -> parameter count
    roles: dict[str, str]  # role -> what it is made of
    lora_per_adapter: int
    resident_params: int  # every parameter held in memory (one process)
    separate_copies_params: int  # the same with three full transformer copies (no sharing, no LoRA)
    resident_param_bytes: int
    memory_per_gpu: dict[str, float]  # bytes by part
    flops_per_forward: float  # measured on meta (FlopCounterMode)
    flops_per_forward_formula: float  # 2 P T + 4 L T^2 d cross-check
    stages: list[dict[str, Any]]


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


def transformer_shape(c: Component) -> tuple[int, int]:
    """(blocks, width) of a diffusers transformer config."""
    k = c.kwargs
    return k["num_layers"] + k.get("num_single_layers", 0), k["num_attention_heads"] * k["attention_head_dim"]


def activation_values(blocks: int, tokens: int, width: int, checkpointing: bool = True) -> int:
    """Stored activation values per sample for one transformer backward (module docstring)."""
    live = ACTIVATION_VALUES_PER_BLOCK * tokens * width
    return blocks * tokens * width + live if checkpointing else blocks * live


def forward_flops(params: int, blocks: int, tokens: int, width: int) -> float:
    """Formula cross-check of F: 2 P T + 4 L T^2 d (an upper estimate, see module docstring)."""
    return 2.0 * params * tokens + 4.0 * blocks * tokens ** 2 * width


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


def facts(base: str) -> RealBase:
    table = {**REAL_BASES, **tiny_bases()} if base.startswith("tiny-") else REAL_BASES
    if base not in table:
        raise UserError(f"plan knows no base {base!r}; valid: {', '.join([*REAL_BASES, 'tiny-sd3', 'tiny-flux2'])}")
    return table[base]


def lora_settings(base: str) -> LoraSettings:
    from rtdmd_bench.registry import resolve

    return resolve("bases", base).Config().lora


def compute_plan(method: str, base: str, precision: str = "bf16", parallelism: str = "ddp",
                 num_gpus: int = 8, micro_batch: int | None = None) -> Plan:
    if precision not in WEIGHT_BYTES:
        raise UserError(f"--precision must be one of {', '.join(WEIGHT_BYTES)}, got {precision!r}")
    if parallelism not in ("ddp", "fsdp"):
        raise UserError(f"--parallelism must be ddp or fsdp, got {parallelism!r}")
    if num_gpus < 1:
        raise UserError(f"--num-gpus must be >= 1, got {num_gpus}")
    rb, lora = facts(base), lora_settings(base)
    net = build_meta(rb.transformer)
    params = {"transformer": count(net), "vae": count(build_meta(rb.vae))}
    for i, enc in enumerate(rb.text_encoders):
        params[f"text encoder {i + 1} ({enc.cls})"] = count(build_meta(enc))
    lora_n = lora_parameter_count(net, lora)
    copies = 2 if rb.separate_generator else 1
    frozen = params["transformer"] * copies + sum(v for k, v in params.items() if k != "transformer")
    resident = frozen + 2 * lora_n
    shard = num_gpus if parallelism == "fsdp" else 1

    blocks, width = transformer_shape(rb.transformer)
    tokens = rb.image_tokens() + rb.text_tokens
    batches = {"cold_start": rb.cold_start_batch, "stage2": rb.stage2_batch}
    batch = micro_batch or max((batches[st.batch] for st in RECIPES.get(method, ())), default=1)
    act_bytes = WEIGHT_BYTES[precision]  # activations in the autocast / compute dtype
    transformers = params["transformer"] * copies  # sharded under fsdp (rtdmd_bench/distributed.py)
    memory = {
        "frozen transformer weights": transformers * WEIGHT_BYTES[precision] / shard,
        "frozen VAE + text encoders (not sharded)": (frozen - transformers) * WEIGHT_BYTES[precision],
        "LoRA + grads + AdamW + EMA": (2 * lora_n * TRAINABLE_BYTES + lora_n * EMA_BYTES) / shard,
        f"activations (micro-batch {batch}, checkpointed)": batch * activation_values(blocks, tokens, width) * act_bytes,
    }
    f = measured_forward_flops(net, rb)
    stages = []
    for st in RECIPES.get(method, ()):
        samples = batches[st.batch] * st.batches_per_step * num_gpus
        per_step = samples * st.forwards_per_sample * f
        stages.append({"stage": st.name, "how": st.how, "steps": st.steps, "flops_per_step": per_step,
                       "flops_run": per_step * st.steps if st.steps else None, "samples_per_step": samples})
    gen = "a second frozen copy (generator weights)" if rb.separate_generator else "the shared frozen copy"
    roles = {"teacher": "shared frozen transformer, adapters disabled",
             "fake": f"shared frozen transformer + 'fake' LoRA ({lora_n:,} params)",
             "student": f"{gen} + 'student' LoRA ({lora_n:,} params)"}
    return Plan(base, method, precision, parallelism, num_gpus, params, roles, lora_n, resident,
                frozen + (3 - copies) * params["transformer"], frozen * WEIGHT_BYTES[precision] + 2 * lora_n * 4, memory, f,
                forward_flops(params["transformer"], blocks, tokens, width), stages)


def _gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f} GiB"


def render_plan(plan: Plan) -> list[Any]:
    """Rich tables: parameters, roles, memory per GPU, FLOPs."""
    from rich.table import Table

    head = f"{plan.method} on {plan.base}, {plan.precision}, {plan.parallelism} x {plan.num_gpus} GPUs"
    p = Table(title=f"Parameters ({head})")
    p.add_column("component")
    p.add_column("parameters", justify="right")
    for k, v in plan.params.items():
        p.add_row(k, f"{v:,}")
    p.add_row("LoRA per adapter (student, fake)", f"{plan.lora_per_adapter:,}")
    p.add_row("resident total (shared layout)", f"{plan.resident_params:,}")
    p.add_row("same with three separate transformer copies", f"{plan.separate_copies_params:,}")
    r = Table(title="Roles")
    r.add_column("role")
    r.add_column("weights")
    for k, v in plan.roles.items():
        r.add_row(k, v)
    m = Table(title="Estimated memory per GPU")
    m.add_column("part")
    m.add_column("bytes", justify="right")
    for k, v in plan.memory_per_gpu.items():
        m.add_row(k, _gib(v))
    m.add_row("total", _gib(sum(plan.memory_per_gpu.values())))
    f = Table(title=f"FLOPs (F = one transformer forward on one sample = {plan.flops_per_forward:.3g} counted "
                    f"on meta; formula 2PT + 4LT^2d gives {plan.flops_per_forward_formula:.3g})",
              caption="; ".join(f"{s['stage']}: {s['how']}" for s in plan.stages) or None)
    for col in ("stage", "samples / step", "FLOPs / step", "steps", "official run FLOPs"):
        f.add_column(col, justify="right" if col != "stage" else "left")
    for s in plan.stages:
        f.add_row(s["stage"], str(s["samples_per_step"]), f"{s['flops_per_step']:.3g}", str(s["steps"] or "-"),
                  f"{s['flops_run']:.3g}" if s["flops_run"] else "no official run")
    runs = [s["flops_run"] for s in plan.stages if s["flops_run"]]
    if len(runs) > 1:
        f.add_row("whole recipe", "", "", "", f"{sum(runs):.3g}")
    if not plan.stages:
        f.add_row(plan.method, "-", "no cost model for this method", "-", "-")
    return [p, r, m, f]


def main(method: str, base: str, precision: str = "bf16", parallelism: str = "ddp", num_gpus: int = 8) -> Plan:
    """Entry point of `rtdmd-bench plan`: compute and print."""
    from rich.console import Console

    plan = compute_plan(method, base, precision, parallelism, num_gpus)
    console = Console()
    for table in render_plan(plan):
        console.print(table)
    console.print("Estimates: see rtdmd_bench/plan.py (weights x precision, 16 B per trainable, checkpointed "
                  "activations 17 T d per live block, F counted on the meta device, backward = 2F).")
    return plan
