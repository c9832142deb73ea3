"""`plan`: meta-device parameter counts, the documented memory/FLOPs formulas, tiny-base reality check."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from rtdmd_bench.errors import UserError  # noqa: E402
from rtdmd_bench.plan import (  # noqa: E402
    RECIPES, activation_values, compute_plan, forward_flops, main, render_plan,
)


def resident_bytes(base) -> int:
    modules = [base.nets.transformer, base.nets.vae, base.nets.generator,
               *[m for m in base.nets.text.values() if isinstance(m, torch.nn.Module)]]
    seen, total = set(), 0
    for m in modules:
        for p in (m.parameters() if m is not None else ()):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux2"])
def test_plan_matches_what_the_tiny_base_allocates(name):
    from rtdmd_bench.registry import resolve

    cls = resolve("bases", name)
    base = cls(cls.Config())
    base.prepare(None)
    plan = compute_plan("acdmd", name, precision="fp32")
    real = resident_bytes(base)
    assert abs(plan.resident_param_bytes - real) <= 0.10 * real
    assert plan.lora_per_adapter == sum(p.numel() for p in base.trainable("fake"))
    assert plan.lora_per_adapter == sum(p.numel() for p in base.trainable("student"))
    assert plan.params["transformer"] == sum(p.numel() for p in base.nets.transformer.parameters()) \
        - 2 * plan.lora_per_adapter * (base.nets.generator is None) - plan.lora_per_adapter * (base.nets.generator is not None)


def test_formulas():
    # checkpointed: L block inputs + 17 values per token-width of the one live block
    assert activation_values(blocks=10, tokens=4, width=8) == 10 * 32 + 17 * 32
    assert activation_values(blocks=10, tokens=4, width=8, checkpointing=False) == 10 * 17 * 32
    assert forward_flops(params=100, blocks=2, tokens=3, width=4) == 2 * 100 * 3 + 4 * 2 * 9 * 4
    # official AC-DMD: 15k fake iterations, generator every 10th
    assert RECIPES["acdmd"][0].steps == 15000 and RECIPES["rtdmd"][1].steps == 1000


def test_parallelism_and_precision_scale_memory():
    ddp = compute_plan("rtdmd", "tiny-sd3", "bf16", "ddp", 8)
    fsdp = compute_plan("rtdmd", "tiny-sd3", "bf16", "fsdp", 8)
    fp32 = compute_plan("rtdmd", "tiny-sd3", "fp32", "ddp", 8)
    key, rest = "frozen transformer weights", "frozen VAE + text encoders (not sharded)"
    assert fsdp.memory_per_gpu[key] == pytest.approx(ddp.memory_per_gpu[key] / 8)
    assert fsdp.memory_per_gpu[rest] == ddp.memory_per_gpu[rest] > 0  # FSDP shards the transformers only
    assert fp32.memory_per_gpu[key] == pytest.approx(2 * ddp.memory_per_gpu[key])
    assert len(ddp.stages) == 2 and ddp.stages[1]["flops_run"] == pytest.approx(1000 * ddp.stages[1]["flops_per_step"])
    assert ddp.stages[0]["samples_per_step"] == 9 * 8 and ddp.stages[1]["samples_per_step"] == 16 * 2 * 8
    with pytest.raises(UserError, match="precision"):
        compute_plan("rtdmd", "tiny-sd3", "fp8")
    with pytest.raises(UserError, match="no base"):
        compute_plan("rtdmd", "sd4")


@pytest.mark.slow  # ~10 s each: the meta-device forward of a multi-billion model under FlopCounterMode
@pytest.mark.parametrize("name,billions", [("sd3", 2.03), ("sd35m", 2.24), ("sd35l", 8.06),
                                           ("flux2-4b", 3.88), ("flux2-9b", 9.08), ("flux1-dev", 11.9)])
def test_every_real_base_plans_on_meta(name, billions, capsys):
    plan = main("rtdmd", name, "bf16", "fsdp", 8)
    assert plan.params["transformer"] / 1e9 == pytest.approx(billions, rel=0.01)
    assert plan.resident_params < plan.separate_copies_params
    assert len(render_plan(plan)) == 4
    assert "Estimated memory per GPU" in capsys.readouterr().out


def test_plan_forward_flops_equal_a_real_tiny_forward():
    """F counted on the meta device equals FlopCounterMode on one real teacher call on one sample.

    CPU runs dispatch SDPA to `_scaled_dot_product_flash_attention_for_cpu`, which torch's flop
    registry does not know (counted as 0); the mapping below adds the standard SDPA count for it."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from rtdmd_bench.bases.diffusers_sd3 import TinySD3

    base = TinySD3(TinySD3.Config())
    base.prepare(None)
    cond = base.encode(["a red cat"])
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        base.velocity("teacher", torch.randn(1, *base.latent_shape), torch.tensor([0.5]), cond)
    plan = compute_plan("acdmd", "tiny-sd3")
    assert plan.flops_per_forward == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert plan.flops_per_forward_formula > plan.flops_per_forward  # the formula is an upper estimate


@pytest.mark.slow  # one real stage-2 step of 32 samples on tiny-sd3 (~5 s)
def test_plan_stage2_step_cost_is_what_the_meter_charges_on_tiny_sd3():
    """plan's stage-2 cost model (calls per sample x F, LoRA backward, decode; both counted on the
    meta device) against the FLOPs the training meter charges for one real RTDMD stage-2 step of the
    plan's batch on tiny-sd3, reward models aside (plan leaves them out)."""
    from methods.rtdmd import RTDMD
    from rtdmd_bench.bases.diffusers_sd3 import TinySD3
    from rtdmd_bench.compute import ComputeMeter, MeteredBase, MeteredReward
    from rtdmd_bench.interfaces import Batch, RewardSet
    from rtdmd_bench.rewards.tiny import TinyCLIPScore

    plan = compute_plan("rtdmd", "tiny-sd3", precision="fp32", num_gpus=1)
    stage2 = plan.stages[1]
    base = TinySD3(TinySD3.Config())
    meter = ComputeMeter(budget_flops=1e15)
    base.prepare(meter)
    rewards = RewardSet({"tiny-clipscore": MeteredReward(TinyCLIPScore(TinyCLIPScore.Config()), meter)},
                        {"tiny-clipscore": 1.0})
    m = RTDMD(RTDMD.Config(stage1_fraction=0.0, stage2_batch_size=stage2["samples_per_step"]),
              MeteredBase(base, meter), rewards, meter)
    m.train_step(Batch(base.train_prompts(), seed=1), step=0)
    charged = meter.used - sum(meter.flops["reward"].values())
    assert charged == pytest.approx(stage2["flops_per_step"], rel=0.02)  # measured: within 0.5%


def test_run_summary_states_budget_split_and_gpu_hours():
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.plan import run_summary

    cfg = resolve_config("rtdmd", "sd3", [])
    lines = run_summary(cfg, processes=8)
    hours = 1.623e20 / (989e12 * 0.35) / 3600  # by hand: budget / (H100 bf16 peak x 35%)
    assert f"{hours:,.0f} H100 GPU-hours" in lines[0] and f"{hours / 8:,.1f} h on 8" in lines[0]
    assert "0.637 of it" in lines[1] and f"{0.637 * 1.623e20:.4g}" in lines[1]
    assert "stage-2 samples per step 256" in lines[2]
    assert run_summary(resolve_config("dmd2", "toy2d", [])) == []  # CPU bases: nothing to estimate


def _record(folder, device: str, dtype: str, rate: float, base: str = "tiny-sd3", date: str = "2026-01-02",
            name: str | None = None) -> None:
    """A step-cost record in the format benchmarks/step_cost.py writes, typed out here (not through the
    writer): rtdmd stage 1 at `rate` FLOP/s, 2 s per step of 9 samples."""
    import json

    data = {"device": device, "base": base, "base_init": "random", "dtype": dtype, "date": date, "torch": "x",
            "rows": [{"method": "rtdmd", "stage": 1, "batch": 9, "step_time_s": 2.0, "flops_per_step": 2.0 * rate,
                      "achieved_flops_per_s": rate, "peak_memory_bytes": 1}]}
    name = name or f"step_cost_{device.lower().replace(' ', '-')}_{base}_{dtype}.json"
    (folder / name).write_text(json.dumps(data))


def test_stage_gpu_hours_from_a_record_by_hand(tmp_path):
    from rtdmd_bench.plan import stage_gpu_hours

    hours, source = stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 1, "bf16", tmp_path)
    assert hours == pytest.approx(1.08e18 / (989e12 * 0.35) / 3600)  # no record: H100 bf16 peak x 35%, by hand
    assert source.startswith("estimated: FLOPs / (989 TFLOP/s H100 bf16 peak x 35% assumed MFU); "
                             f"no step time of sd3 bf16 on H100 recorded in {tmp_path}")
    _record(tmp_path, "NVIDIA H100 80GB HBM3", "bf16", 3e14, base="sd3", date="2026-05-06 07:08 UTC")
    hours, source = stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 1, "bf16", tmp_path, samples_per_gpu=9)
    assert hours == pytest.approx(1.0)  # 1.08e18 FLOPs / 3e14 FLOP/s = 3600 s = 1 hour
    path = tmp_path / "step_cost_nvidia-h100-80gb-hbm3_sd3_bf16.json"
    assert source == (f"recorded: {path} (NVIDIA H100 80GB HBM3, random weights, 2026-05-06 07:08 UTC: 2 s per step "
                      "of 9 samples = 300 TFLOP/s achieved)")
    _, other = stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 1, "bf16", tmp_path, samples_per_gpu=16)
    assert other.endswith("; measured at 9 samples per step, this stage's per-GPU step has 16")
    assert stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 2, "bf16", tmp_path)[1].startswith("estimated")  # stage 2
    assert stage_gpu_hours(1.08e18, "sd3", "h100", "dmd2", 1, "bf16", tmp_path)[1].startswith("estimated")  # method
    _record(tmp_path, "NVIDIA A100-SXM4-80GB", "bf16", 1e14, base="sd3")  # another GPU
    _record(tmp_path, "NVIDIA H100 80GB HBM3", "fp32", 5e13, base="sd3")  # another precision
    _record(tmp_path, "NVIDIA H100 80GB HBM3", "bf16", 1e13, base="sd35m")  # another base
    _record(tmp_path, "cpu (AMD EPYC)", "bf16", 1e9, base="sd3")  # a CPU: never a GPU's record
    assert stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 1, "bf16", tmp_path)[0] == pytest.approx(1.0)
    assert stage_gpu_hours(1.08e18, "sd3", "a100", "rtdmd", 1, "bf16", tmp_path)[0] == pytest.approx(3.0)  # 1.08e18/1e14 s
    assert stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 1, "fp32", tmp_path)[0] == pytest.approx(6.0)  # /5e13
    assert stage_gpu_hours(1.08e18, "sd35m", "h100", "rtdmd", 1, "bf16", tmp_path)[0] == pytest.approx(30.0)  # /1e13
    _record(tmp_path, "NVIDIA H100 PCIe", "bf16", 2e14, base="sd3", date="2026-05-07 00:00 UTC")  # newest wins
    hours, source = stage_gpu_hours(1.08e18, "sd3", "h100", "rtdmd", 1, "bf16", tmp_path)
    assert hours == pytest.approx(1.5) and "NVIDIA H100 PCIe" in source  # 1.08e18 / 2e14 = 5400 s


def test_plan_gpu_hours_from_a_recorded_step_time_else_estimated(tmp_path, capsys):
    estimated = compute_plan("rtdmd", "tiny-sd3", num_gpus=1, recorded_dir=tmp_path)  # no record at all
    for s in estimated.stages:
        assert s["gpu_hours"] == pytest.approx(s["flops_run"] / (989e12 * 0.35) / 3600)  # by hand: H100 peak x 35%
        assert s["gpu_hours_from"].startswith("estimated: FLOPs / (989 TFLOP/s H100 bf16 peak x 35% assumed MFU)")
    _record(tmp_path, "NVIDIA H100 80GB HBM3", "bf16", 3e14)
    plan = main("rtdmd", "tiny-sd3", "bf16", "ddp", 1, recorded_dir=tmp_path)
    s1, s2 = plan.stages
    assert s1["gpu_hours"] == pytest.approx(s1["flops_run"] / 3e14 / 3600)  # stage-1 FLOPs at the recorded rate
    assert s1["gpu_hours_from"].startswith("recorded: ") and "NVIDIA H100 80GB HBM3, random weights" in s1["gpu_hours_from"]
    assert "2026-01-02: 2 s per step of 9 samples = 300 TFLOP/s achieved" in s1["gpu_hours_from"]
    assert s2["gpu_hours"] == estimated.stages[1]["gpu_hours"] and s2["gpu_hours_from"].startswith("estimated")
    out = capsys.readouterr().out
    assert "H100 GPU-hours of stage 1 (AC-DMD): recorded:" in out and "H100 GPU-hours of stage 2 (reward-tilted): estimated:" in out
    with pytest.raises(UserError, match="--gpu must be one of h100, a100"):
        compute_plan("rtdmd", "tiny-sd3", gpu="v100")


def test_plan_command_reads_results_benchmarks_of_the_working_folder(tmp_path, monkeypatch):
    """`rtdmd-bench plan --gpu a100` run where results/benchmarks holds an A100 record prints its file
    and date, and the GPU-hours at its rate (the stage's FLOPs come from the same plan)."""
    from typer.testing import CliRunner

    from rtdmd_bench.cli import app

    folder = tmp_path / "results" / "benchmarks"
    folder.mkdir(parents=True)
    _record(folder, "NVIDIA A100-SXM4-80GB", "bf16", 1e14, date="2026-07-08 09:10 UTC")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")  # one line per message, to match it whole
    result = CliRunner().invoke(app, ["plan", "--method", "rtdmd", "--base", "tiny-sd3", "--num-gpus", "1",
                                      "--gpu", "a100"])
    assert result.exit_code == 0, result.output
    run = compute_plan("rtdmd", "tiny-sd3", num_gpus=1, recorded_dir=folder).stages[0]["flops_run"]
    assert "A100 GPU-hours of stage 1 (AC-DMD): recorded: results/benchmarks/step_cost_nvidia-a100-sxm4-80gb_" \
           "tiny-sd3_bf16.json (NVIDIA A100-SXM4-80GB, random weights, 2026-07-08 09:10 UTC" in result.output
    assert "A100 GPU-hours of stage 2 (reward-tilted): estimated: FLOPs / (312 TFLOP/s A100" in result.output
    assert "A100 GPU-hours" in result.output and f"{run / 1e14 / 3600:.3g}" in result.output  # the table's cell
