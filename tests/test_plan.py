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
