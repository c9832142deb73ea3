"""Step-cost records (rtdmd_bench/step_costs.py): the step summary, the writer and reader, the refusals,
the committed CPU figures, and benchmarks/step_cost.py end to end on tiny-sd3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtdmd_bench.errors import UserError
from rtdmd_bench.step_costs import device_name, find_recorded, read_record, step_summary, write_record

ROOT = Path(__file__).resolve().parents[1]


def _h100_record() -> dict:
    return {"benchmark": "step_cost", "device": "NVIDIA H100 80GB HBM3", "base": "sd3", "base_init": "random",
            "dtype": "bf16", "date": "2026-05-06 07:08 UTC", "torch": "2.x",
            "rows": [{"method": "dmd2", "stage": 1, "batch": 9, "step_time_s": 4.0, "flops_per_step": 1.2e15,
                      "achieved_flops_per_s": 3e14, "peak_memory_bytes": 2 ** 34}]}


def test_step_summary_is_the_median_cycle_and_flops_over_it():
    # cycles of 2 steps: (1+3)/2 = 2, (2+2)/2 = 2, (10+0)/2 = 5 -> median 2, fastest 2, slowest 5
    out = step_summary([1.0, 3.0, 2.0, 2.0, 10.0, 0.0], [4.0, 2.0, 4.0, 2.0, 4.0, 2.0], cycle=2)
    assert out == {"step_time_s": 2.0, "step_time_min_s": 2.0, "step_time_max_s": 5.0, "flops_per_step": 3.0,
                   "achieved_flops_per_s": 1.5}  # 18 FLOPs / 6 steps = 3 per step; 3 / 2 s
    assert step_summary([0.5, 0.1, 0.3], [2.0, 2.0, 2.0], cycle=1)["step_time_s"] == 0.3  # median of 3
    with pytest.raises(ValueError, match="whole cycles of 2"):
        step_summary([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], cycle=2)


def test_write_then_read_a_record(tmp_path):
    record = _h100_record()
    path = write_record(tmp_path, record, "# table\n")
    assert path == tmp_path / "step_cost_nvidia-h100-80gb-hbm3_sd3_bf16.json"  # keyed by device, base, dtype
    assert json.loads(path.read_text()) == record
    assert (tmp_path / "step_cost_nvidia-h100-80gb-hbm3_sd3_bf16.md").read_text() == "# table\n"
    assert read_record(path) == record
    cpu = {**record, "device": "cpu (AMD EPYC 7B13)"}
    assert write_record(tmp_path, cpu, "").name == "step_cost_cpu_sd3_bf16.json"  # every CPU is 'cpu'
    found = find_recorded(tmp_path, "sd3", "h100", "dmd2", 1, "bf16")
    assert found is not None and found.path == path and found.gpu_hours(1.08e18) == pytest.approx(1.0)  # 3600 s
    assert find_recorded(tmp_path, "sd3", "h100", "dmd2", 2, "bf16") is None


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("dtype"), "step-cost record without dtype"),
    (lambda r: r["rows"][0].pop("peak_memory_bytes"), "row 0 of the step-cost record lacks peak_memory_bytes"),
    (lambda r: r["rows"][0].update(achieved_flops_per_s=0.0), r"row 0 \(dmd2\) has a step time or FLOP/s"),
])
def test_a_malformed_record_is_refused_naming_the_file(tmp_path, change, message):
    record = _h100_record()
    change(record)
    with pytest.raises(UserError, match=message):
        write_record(tmp_path, record, "")
    path = tmp_path / "step_cost_x.json"
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=f"{path}: .*{message}"):
        read_record(path)
    with pytest.raises(UserError, match=message):  # plan does not skip it silently
        find_recorded(tmp_path, "sd3", "h100", "dmd2", 1, "bf16")


def test_an_unreadable_record_is_refused(tmp_path):
    path = tmp_path / "step_cost_x.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="step_cost_x.json: cannot read the step-cost record"):
        read_record(path)
    path.write_text("[]")
    with pytest.raises(UserError, match="not a step-cost record"):
        read_record(path)


def test_device_name_of_the_cpu():
    assert device_name("cpu").startswith("cpu (") and device_name("cpu").endswith(")")


def test_the_committed_cpu_figures_read_and_add_up():
    """results/benchmarks/step_cost_cpu_tiny-sd3_fp32.json: a valid record whose rates are FLOPs / time
    and whose Markdown table has a row per measured (method, stage)."""
    path = ROOT / "results" / "benchmarks" / "step_cost_cpu_tiny-sd3_fp32.json"
    record = read_record(path)
    assert record["base"] == "tiny-sd3" and record["device"].startswith("cpu")
    assert {(r["method"], r["stage"]) for r in record["rows"]} >= {("dmd2", 1), ("rtdmd", 1), ("rtdmd", 2)}
    table = path.with_suffix(".md").read_text()
    for r in record["rows"]:
        assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_step"] / r["step_time_s"])
        assert r["step_time_min_s"] <= r["step_time_s"] <= r["step_time_max_s"]
        assert r["timed_steps"] % r["cycle_steps"] == 0 and r["new_flop_measurements"] == 0
        assert f"| {r['method']} | {r['stage']} ({r['stage_name']}) |" in table
    assert "Rerun (from the repository root): `python benchmarks/step_cost.py --base tiny-sd3" in table


@pytest.mark.slow  # two processes building tiny-sd3 (~20 s)
def test_the_benchmark_measures_and_records_on_tiny_sd3(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--methods", "acdmd",
                           "--warmup", "1", "--steps", "3", "--batch", "2", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_record(tmp_path / "step_cost_cpu_tiny-sd3_fp32.json")
    (row,) = record["rows"]
    # acdmd's smoke overrides make a cycle 2 steps: 1 warm-up step -> 2, 3 timed -> 4
    assert (row["cycle_steps"], row["warmup_steps"], row["timed_steps"], row["batch"]) == (2, 2, 4, 2)
    assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_step"] / row["step_time_s"])
    assert row["peak_memory_bytes"] >= row["memory_after_warmup_bytes"] > 0
    assert row["peak_memory_growth_bytes"] == row["peak_memory_bytes"] - row["memory_after_warmup_bytes"]
    assert "--methods acdmd --batch 2 --warmup 1 --steps 3" in (tmp_path / "step_cost_cpu_tiny-sd3_fp32.md").read_text()


def _benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_cost_benchmark", ROOT / "benchmarks" / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_grid_on_a_real_base_keeps_its_recipe_and_passes_random_init():
    """On a real base: no smoke-test shrinking or tiny reward, `--set` last; RTDMD once per stage; the
    official AC-DMD cycle is 10 steps (a generator update every 10th), RTDMD stage 2 one."""
    import argparse

    from rtdmd_bench.config import resolve_config

    bench = _benchmark_module()
    args = argparse.Namespace(base="sd3", methods="dmd2,rtdmd", batch=9, warmup=2, steps=30, threads=0,
                              set=["base.init=random"])
    grid = bench.specs(args)
    assert [(s["method"], s["stage"]) for s in grid] == [("dmd2", 1), ("rtdmd", 1), ("rtdmd", 2)]
    assert grid[0]["sets"] == ["train.batch_size=9", "train.budget=1e30", "base.init=random"]
    assert grid[2]["sets"] == ["train.batch_size=9", "train.budget=1e30", "method.stage1_fraction=0.0", "base.init=random"]
    assert bench.cycle_length(resolve_config("acdmd", "sd3", []), 1) == 10
    assert bench.cycle_length(resolve_config("rtdmd", "sd3", []), 2) == 1
    tiny = bench.specs(argparse.Namespace(**{**vars(args), "base": "tiny-sd3", "set": []}))
    assert tiny[0]["sets"][-3:] == ["run.rewards=tiny-clipscore=1.0", "train.batch_size=9", "train.budget=1e30"]
