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
  tokens. A backward for the LoRA weights (what training differentiates for) is counted on the
  meta device too (about 1.3F at the official shapes), and so is the VAE decoder (forward, and
  backward to the latents): the same quantities the training meter charges.
- A training step's cost = samples x calls per sample (`RECIPES` below) x those costs, with the
  official per-GPU batches recorded in `real_configs` (AC-DMD 9; RTDMD stage 2 per base); reward
  models (< 1% of a stage-2 step) and text encoders (not metered) are left out. The official run's
  FLOPs (`Plan.official_flops`) are what the real bases' recipes give `train.budget`.
- GPU-hours: from a recorded step time when `benchmarks/step_cost.py` has measured this base, method
  and stage on that GPU in that precision (results/benchmarks/step_cost_*.json, `step_costs.py`):
  FLOPs / the achieved FLOP/s of one device; else FLOPs / (datasheet peak x ASSUMED_MFU), an
  assumption. The output says which, per stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtdmd_bench.bases.diffusers_common import LoraSettings, lora_parameter_count
from rtdmd_bench.bases.real_configs import REAL_BASES, Component, RealBase, tiny_bases
from rtdmd_bench.errors import UserError
from rtdmd_bench.step_costs import RECORD_DIR, find_recorded
# The meta-device measurements live in their own module; their names stay importable from here.
from rtdmd_bench.meta_costs import (  # noqa: F401
    build_meta, count, device_attention_on_meta, measured_decode_flops, measured_forward_flops, measured_lora_costs,
    meta_inputs,
)

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
    teacher: float  # teacher forwards (one sample, no CFG = F) per sample per iteration
    lora_fwd: float  # student / fake-score forwards (F plus their LoRA) per sample per iteration
    lora_bwd: float  # backwards of those for their LoRA weights per sample per iteration
    decode_fwd: float = 0.0  # VAE decoder forwards per sample per iteration (each D)
    decode_bwd: float = 0.0  # VAE decoder backwards (to the latents) per sample per iteration
    adapters: int = 1  # LoRA adapters active per student/fake call (2 after RTDMD's restart)
    how: str = ""  # where the counts come from


# Calls per sample per iteration, as the FLOP meter charges them (a teacher call with CFG is one
# call on twice the batch = 2 forwards; a backward differentiates for the LoRA weights only).
# AC-DMD: rollout k ~ U{1..4} without grad = 2.5 fwd; fake-score loss 1 fwd + 1 bwd; consistency
# 2 fwd + 2 bwd; every 10th iteration a generator step: rollout 2.5 fwd + backward of the last
# step 1 bwd + teacher CFG 2 + fake 1 fwd. DMD2: the same without consistency, generator every
# 5th. RTDMD stage 2: 4-step rollout 4 fwd; fake step with consistency 3 fwd + 3 bwd; 2 SubGRPO
# steps 2 fwd + 2 bwd; last step student 1 fwd + 1 bwd, teacher CFG 2, fake 1 fwd; decodes: one
# for the GRPO rewards, one with backward for the reward back-propagation (reward models: < 1%);
# after the restart two adapters are active per call (the stage-1 one frozen).
RECIPES: dict[str, tuple[Stage, ...]] = {
    "acdmd": (Stage("AC-DMD", 15000, "cold_start", 1, 2 / 10, 2.5 + 1 + 2 + 3.5 / 10, 1 + 2 + 1 / 10,
                    how="rollout 2.5 + fake (1+1B) + consistency (2+2B) + generator (2.5 + teacher CFG 2 + fake 1 + 1B)/10"),),
    "dmd2": (Stage("DMD2", 0, "cold_start", 1, 2 / 5, 2.5 + 1 + 3.5 / 5, 1 + 1 / 5,
                   how="rollout 2.5 + fake (1+1B) + generator (2.5 + teacher CFG 2 + fake 1 + 1B)/5"),),
    "rtdmd": (Stage("stage 1 (AC-DMD)", 15000, "cold_start", 1, 2 / 10, 2.5 + 1 + 2 + 3.5 / 10, 1 + 2 + 1 / 10,
                    how="rollout 2.5 + fake (1+1B) + consistency (2+2B) + generator (2.5 + teacher CFG 2 + fake 1 + 1B)/10"),
              Stage("stage 2 (reward-tilted)", 1000, "stage2", 16, 2, 4 + 3 + 2 + 1 + 1, 3 + 2 + 1, 2, 1, adapters=2,
                    how="rollout 4 + fake with consistency (3+3B) + SubGRPO (2+2B) + last step (student 1+1B, "
                        "teacher CFG 2, fake 1) + decodes (2D+1DB), two adapters per call")),
}

GPU_PEAK_FLOPS = {"h100": 989e12, "a100": 312e12}
"""Dense bf16 tensor-core peak per GPU (NVIDIA datasheets: H100 SXM 989 TFLOP/s, A100 312)."""
ASSUMED_MFU = 0.35
"""Fraction of the peak a LoRA training step with gradient checkpointing achieves: an assumption
for the GPU-hours estimate (not measured here; a measured step time replaces it when available)."""


def gpu_hours(flops: float, gpu: str = "h100", mfu: float = ASSUMED_MFU) -> float:
    """GPU-hours to spend `flops` at `mfu` of the GPU's peak (the same on any number of GPUs)."""
    if gpu not in GPU_PEAK_FLOPS:
        raise UserError(f"unknown GPU {gpu!r} for the GPU-hours estimate; valid: {', '.join(GPU_PEAK_FLOPS)}")
    return flops / (GPU_PEAK_FLOPS[gpu] * mfu) / 3600.0


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
    stages: list[dict[str, Any]]  # + gpu_hours (None: no official run) and gpu_hours_from (recorded | estimated)
    costs: dict[str, float]  # lora_fwd_A, lora_bwd_A (x F, A adapters), decode_fwd, decode_bwd (FLOPs); meta
    gpu: str = "h100"  # the GPU the GPU-hours are for

    @property
    def official_flops(self) -> float | None:
        """FLOPs of the whole official run (every stage with an official step count), else None."""
        runs = [s["flops_run"] for s in self.stages]
        return sum(runs) if runs and all(runs) else None


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


def facts(base: str) -> RealBase:
    table = {**REAL_BASES, **tiny_bases()} if base.startswith("tiny-") else REAL_BASES
    if base not in table:
        raise UserError(f"plan knows no base {base!r}; valid: {', '.join([*REAL_BASES, 'tiny-sd3', 'tiny-flux2'])}")
    return table[base]


def lora_settings(base: str) -> LoraSettings:
    from rtdmd_bench.registry import resolve

    return resolve("bases", base).Config().lora


def stage_gpu_hours(flops: float, base: str, gpu: str, method: str, stage: int, precision: str,
                    recorded_dir: Path = RECORD_DIR, samples_per_gpu: int | None = None) -> tuple[float, str]:
    """(GPU-hours, where from) of `flops` spent in `stage` (1-based) of `method`: from a recorded
    step time of that base, stage and precision on `gpu` when there is one, else estimated."""
    rec = find_recorded(recorded_dir, base, gpu, method, stage, precision)
    if rec is not None:
        # the achieved FLOP/s depends on the batch (a GPU is busier with more samples): say when they differ
        other = (f"; measured at {rec.batch} samples per step, this stage's per-GPU step has {samples_per_gpu}"
                 if samples_per_gpu is not None and samples_per_gpu != rec.batch else "")
        return rec.gpu_hours(flops), f"recorded: {rec.describe()}{other}"
    return gpu_hours(flops, gpu), (f"estimated: FLOPs / ({GPU_PEAK_FLOPS[gpu] / 1e12:.0f} TFLOP/s {gpu.upper()} "
                                   f"bf16 peak x {ASSUMED_MFU:.0%} assumed MFU); no step time of {base} {precision} "
                                   f"on {gpu.upper()} recorded in {recorded_dir} (benchmarks/step_cost.py)")


def compute_plan(method: str, base: str, precision: str = "bf16", parallelism: str = "ddp",
                 num_gpus: int = 8, micro_batch: int | None = None, gpu: str = "h100",
                 recorded_dir: Path = RECORD_DIR, measure_costs: bool = True) -> Plan:
    """`measure_costs=False` skips the stages' measured LoRA backward and VAE decode FLOPs (seconds on the
    meta device): parameters and memory are the same, `stages` is empty (`reproduce TABLE` wants memory)."""
    if gpu not in GPU_PEAK_FLOPS:
        raise UserError(f"--gpu must be one of {', '.join(GPU_PEAK_FLOPS)}, got {gpu!r}")
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
    if method == "rtdmd" or num_gpus > 1:  # restart adapters (AdapterSwitch.restart), weights only:
        # rtdmd creates them at its stage switch; data-parallel wrapping creates them up front
        memory["restart adapters (RTDMD stage 2)"] = 2 * lora_n * 4 / shard
    f = measured_forward_flops(net, rb)
    recipe = RECIPES.get(method, ()) if measure_costs else ()
    stages, costs = [], {}
    if recipe:
        costs["decode_fwd"], costs["decode_bwd"] = measured_decode_flops(rb)
        for a, (fwd, bwd) in measured_lora_costs(net, rb, lora, {st.adapters for st in RECIPES[method]}).items():
            costs[f"lora_fwd_{a}"], costs[f"lora_bwd_{a}"] = fwd, bwd
    for i, st in enumerate(recipe, start=1):
        samples = batches[st.batch] * st.batches_per_step * num_gpus
        per_sample = ((st.teacher + st.lora_fwd * costs[f"lora_fwd_{st.adapters}"]
                       + st.lora_bwd * costs[f"lora_bwd_{st.adapters}"]) * f
                      + st.decode_fwd * costs["decode_fwd"] + st.decode_bwd * costs["decode_bwd"])
        per_step = samples * per_sample
        run = per_step * st.steps if st.steps else None
        hours, source = (stage_gpu_hours(run, base, gpu, method, i, precision, recorded_dir, samples // num_gpus)
                         if run else (None, "no official run"))
        stages.append({"stage": st.name, "how": st.how, "steps": st.steps, "flops_per_step": per_step,
                       "flops_run": run, "samples_per_step": samples, "gpu_hours": hours, "gpu_hours_from": source})
    gen = "a second frozen copy (generator weights)" if rb.separate_generator else "the shared frozen copy"
    roles = {"teacher": "shared frozen transformer, adapters disabled",
             "fake": f"shared frozen transformer + 'fake' LoRA ({lora_n:,} params)",
             "student": f"{gen} + 'student' LoRA ({lora_n:,} params)"}
    return Plan(base, method, precision, parallelism, num_gpus, params, roles, lora_n, resident,
                frozen + (3 - copies) * params["transformer"], frozen * WEIGHT_BYTES[precision] + 2 * lora_n * 4, memory, f,
                forward_flops(params["transformer"], blocks, tokens, width), stages, costs, gpu)


def _gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f} GiB"


def _hours(h: float | None) -> str:
    return "-" if h is None else f"{h:,.0f}" if h >= 10 else f"{h:.3g}"


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
    for col in ("stage", "samples / step", "FLOPs / step", "steps", "official run FLOPs",
                f"{plan.gpu.upper()} GPU-hours", "GPU-hours from"):
        f.add_column(col, justify="right" if col not in ("stage", "GPU-hours from") else "left")
    for s in plan.stages:
        f.add_row(s["stage"], str(s["samples_per_step"]), f"{s['flops_per_step']:.3g}", str(s["steps"] or "-"),
                  f"{s['flops_run']:.3g}" if s["flops_run"] else "no official run",
                  _hours(s["gpu_hours"]), s["gpu_hours_from"].split(":")[0])
    runs = [s for s in plan.stages if s["flops_run"]]
    if len(runs) > 1:
        sources = {s["gpu_hours_from"].split(":")[0] for s in runs}
        f.add_row("whole recipe", "", "", "", f"{sum(s['flops_run'] for s in runs):.3g}",
                  _hours(sum(s["gpu_hours"] for s in runs)), " + ".join(sorted(sources)))
    if not plan.stages:
        f.add_row(plan.method, "-", "no cost model for this method", "-", "-")
    return [p, r, m, f]


def main(method: str, base: str, precision: str = "bf16", parallelism: str = "ddp", num_gpus: int = 8,
         gpu: str = "h100", recorded_dir: Path = RECORD_DIR) -> Plan:
    """Entry point of `rtdmd-bench plan`: compute and print."""
    from rich.console import Console

    plan = compute_plan(method, base, precision, parallelism, num_gpus, gpu=gpu, recorded_dir=recorded_dir)
    console = Console()
    for table in render_plan(plan):
        console.print(table)
    back = (f"LoRA forward {plan.costs['lora_fwd_1']:.3f}F, backward {plan.costs['lora_bwd_1']:.2f}F"
            if plan.costs else "no backward counted")
    console.print("Estimates: see rtdmd_bench/plan.py (weights x precision, 16 B per trainable, checkpointed "
                  f"activations 17 T d per live block, F and the VAE decode counted on the meta device, {back}).")
    for s in plan.stages:
        if s["gpu_hours"] is not None:
            console.print(f"{plan.gpu.upper()} GPU-hours of {s['stage']}: {s['gpu_hours_from']}", highlight=False)
    return plan


def run_summary(cfg: Any, processes: int = 1) -> list[str]:
    """Lines printed when a run on a real base starts: the resolved budget, the stage split and
    plan's GPU-hours estimate (from the budget alone: no meta build at start-up)."""
    from rtdmd_bench.compute import parse_budget

    if cfg.run.base not in REAL_BASES:
        return []
    budget = parse_budget(cfg.train.budget)
    if budget.unit != "flops":
        return [f"budget {budget} on {cfg.run.base} (teacher-forward units: the GPU-hours estimate needs FLOPs)"]
    flops = budget.amount
    lines = [f"budget {flops:.4g} FLOPs on {cfg.run.base}: {gpu_hours(flops):,.0f} H100 GPU-hours at "
             f"{ASSUMED_MFU:.0%} of peak (plan's assumption), {gpu_hours(flops) / processes:,.1f} h on "
             f"{processes} process(es)"]
    if getattr(cfg.base, "init", "pretrained") == "random":
        lines.append(f"base.init=random: {cfg.run.base} with RANDOM weights (seed {cfg.base.seed}), for step time and "
                     "memory only: its samples and scores are not the model's, and its results say so")
    fraction = getattr(cfg.method, "stage1_fraction", None)
    if fraction is not None:
        lines.append(f"stages: {fraction:.4g} of it ({fraction * flops:.4g} FLOPs) in stage 1, then stage 2 "
                     f"({(1 - fraction) * flops:.4g} FLOPs)")
    lines.append(f"samples per step {cfg.train.batch_size}"
                 + (f", stage-2 samples per step {cfg.method.stage2_batch_size}"
                    if getattr(cfg.method, "stage2_batch_size", 0) else "")
                 + f"; train.micro_batches={cfg.train.micro_batches} per process "
                   "(raise it if a step does not fit in memory: the update does not change)")
    return lines
