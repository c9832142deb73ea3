"""The official RTDMD run of every real base in FLOPs, as the training meter counts them: the
budget, stage split and batches that the real bases' recipes carry (issue 10, item 14).

Run:  python benchmarks/official_budgets.py [--out results/benchmarks/official_budgets.md]

For each base, `rtdmd-bench plan` builds the transformer and VAE on the meta device (no weights)
and counts one transformer forward F, a LoRA-training backward (for the LoRA weights only, as the
meter's probe) and the VAE decode at the official resolution; a stage's FLOPs are its official
steps x global samples per step x calls per sample (`rtdmd_bench.plan.RECIPES`). The global
batches are the official per-GPU batches on the official 8 GPUs: AC-DMD 9 x 8 = 72; stage 2
num_batches_per_epoch 16 x sample_batch_size x 8. The recipe lines printed at the end are what
`rtdmd_bench/recipes/<base>.yaml` holds (tests/test_official_recipe.py checks them against plan).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rtdmd_bench.bases.real_configs import REAL_BASES
from rtdmd_bench.plan import ASSUMED_MFU, compute_plan, gpu_hours


def official(base: str) -> dict[str, float]:
    """The official run of `base`: FLOPs per stage, batches, the stage-1 share, GPU-hours."""
    plan = compute_plan("rtdmd", base)
    s1, s2 = plan.stages
    total = plan.official_flops
    return {"F": plan.flops_per_forward, "lora_fwd": plan.costs["lora_fwd_1"], "lora_bwd": plan.costs["lora_bwd_1"],
            "decode": plan.costs["decode_fwd"], "stage1_flops": s1["flops_run"], "stage2_flops": s2["flops_run"],
            "stage1_steps": s1["steps"], "stage2_steps": s2["steps"], "batch": s1["samples_per_step"],
            "stage2_batch": s2["samples_per_step"], "budget": total, "stage1_fraction": s1["flops_run"] / total,
            "gpu_hours": gpu_hours(total)}


def render(rows: dict[str, dict[str, float]], seconds: float) -> str:
    lines = [
        "# Official RTDMD runs in FLOPs (the real bases' recipe budgets)",
        "",
        "From `python benchmarks/official_budgets.py` (meta device, no weights; "
        f"{seconds:.0f} s). F = one transformer forward on one sample; L and B = a forward with the LoRA",
        "and its LoRA-training backward, as multiples of F; D = one VAE decode. Stage 1: 15,000 AC-DMD steps",
        "of 72 samples (9 per GPU x 8);",
        "stage 2: 1,000 steps of the official global batch (16 micro-batches x per-GPU batch x 8 GPUs).",
        f"GPU-hours assume {ASSUMED_MFU:.0%} of the H100 bf16 peak (an assumption, not a measurement).",
        "",
        "| base | F | L/F | B/F | D | stage-2 samples/step | stage 1 FLOPs | stage 2 FLOPs | budget | stage-1 share | H100 GPU-hours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['F']:.3g} | {r['lora_fwd']:.3f} | {r['lora_bwd']:.3f} | {r['decode']:.3g} | {r['stage2_batch']} | "
                     f"{r['stage1_flops']:.3g} | {r['stage2_flops']:.3g} | {r['budget']:.3g} | "
                     f"{r['stage1_fraction']:.3f} | {r['gpu_hours']:,.0f} |")
    lines += ["", "Recipe lines (`train.budget` under `_all`: every method gets the same compute):", "", "```"]
    for name, r in rows.items():
        lines.append(f"{name}: train.budget {r['budget']:.4g}, train.batch_size {r['batch']}, "
                     f"rtdmd method.stage1_fraction {r['stage1_fraction']:.4f}, "
                     f"method.stage2_batch_size {r['stage2_batch']}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/official_budgets.md"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = {name: official(name) for name in REAL_BASES}
    text = render(rows, time.perf_counter() - t0)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
