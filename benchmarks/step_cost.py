"""Training-step cost of every method on this machine's device: step time, peak memory and the
achieved FLOP/s (the FLOPs the training meter charges per step / the step time), written where
`rtdmd-bench plan` finds it for its GPU-hours (rtdmd_bench/step_costs.py has the format).

Run (from the repository root):
      python benchmarks/step_cost.py [--base tiny-sd3] [--methods all] [--batch 4] [--warmup 2]
          [--steps 10] [--threads 0] [--set KEY=VALUE ...] [--out-dir results/benchmarks]
On a GPU without the weights, e.g.:
      python benchmarks/step_cost.py --base sd3 --batch 9 --steps 30 --set base.init=random
(the recipe's reward models still load their own weights; `--set run.rewards=...` picks others).

Each (method, stage) is measured in a process of its own (its peak memory is its own): the config
is resolved as `rtdmd-bench train` resolves it (the base's recipe, then `--set`; on tiny bases each
method's `smoke_test_overrides` and the tiny CLIP reward, as the smoke tests run them), the method
is built, warmed up (the meter measures each new call shape once, with FlopCounterMode, during the
warm-up), then timed. Warm-up and timed steps are whole TTUR cycles (`num_fake_per_gen` steps, one
generator update among them): the step time is the median over timed cycles of the cycle's time /
its steps. RTDMD is measured per stage (stage 1 AC-DMD with `stage1_fraction=1`, stage 2 with
`stage1_fraction=0`). Peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed steps
(reset after the warm-up); on CPU the process's peak resident set over the timed steps (Linux VmHWM,
reset after the warm-up through /proc/self/clear_refs; where that is refused, ru_maxrss since the
process started, and the record says so). Resident memory includes Python, torch and the libraries,
so the table also gives the growth over the memory after the warm-up. Reward models are metered too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MULTI_STAGE = {"rtdmd": {1: ["method.stage1_fraction=1.0"], 2: ["method.stage1_fraction=0.0"]}}
"""Methods with several stages: the overrides that keep a run in each (other methods: stage 1)."""
TINY_SETS = ["run.rewards=tiny-clipscore=1.0"]


# ---- one (method, stage), in its own process --------------------------------------------------
def _rss_peak_reset() -> bool:
    """Reset this process's peak resident set (Linux /proc/self/clear_refs); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def cycle_length(cfg: Any, stage: int) -> int:
    """Steps of one TTUR cycle: `num_fake_per_gen` (the method's, or its stage 1's); 1 in RTDMD stage 2."""
    if stage > 1:
        return 1
    m = cfg.method
    return int(getattr(m, "num_fake_per_gen", 0) or getattr(getattr(m, "stage1", None), "num_fake_per_gen", 1))


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.step_costs import device_name, step_summary
    from rtdmd_bench.train import batch_for, build

    method, stage = spec["method"], spec["stage"]
    cfg = resolve_config(method, spec["base"], spec["sets"])
    b = build(cfg)
    device = torch.device(getattr(b.base, "device", "cpu"))
    cuda = device.type == "cuda"
    cycle = cycle_length(cfg, stage)
    warmup, timed = (cycle * max(1, math.ceil(n / cycle)) for n in (spec["warmup"], spec["steps"]))

    def step(i: int) -> dict[str, float]:
        batch = batch_for(i, cfg.run.seed, b.pools, cfg.train.batch_size, micro_batches=cfg.train.micro_batches)
        logs = b.method.train_step(batch, i)
        if "stage" in logs and int(logs["stage"]) != stage:
            raise RuntimeError(f"{method} ran stage {logs['stage']:g}, not {stage}")
        return logs

    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        after_warmup = torch.cuda.memory_allocated(device)
        memory_kind = "CUDA max_memory_allocated during the timed steps"
    else:
        after_warmup = _rss("VmRSS")
        memory_kind = ("peak resident set of the process during the timed steps (VmHWM)" if _rss_peak_reset()
                       else "peak resident set of the process since it started (ru_maxrss)")
    measured_before, times, flops = b.meter.measured_calls, [], []
    for i in range(warmup, warmup + timed):
        used = b.meter.used
        start = time.perf_counter()
        step(i)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        flops.append(b.meter.used - used)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    elif memory_kind.endswith("(VmHWM)"):
        peak = _rss("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    samples = (getattr(cfg.method, "stage2_batch_size", 0) or cfg.train.batch_size) if stage > 1 else cfg.train.batch_size
    stages = list(getattr(b.method, "stages", (method,)))
    return {
        "row": {"method": method, "stage": stage, "stage_name": stages[stage - 1], "batch": samples,
                "cycle_steps": cycle, "warmup_steps": warmup, "timed_steps": timed,
                **step_summary(times, flops, cycle), "peak_memory_bytes": peak,
                "memory_after_warmup_bytes": after_warmup, "peak_memory_growth_bytes": peak - after_warmup,
                "new_flop_measurements": b.meter.measured_calls - measured_before, "sets": spec["sets"]},
        "env": {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
                "base": cfg.run.base, "base_init": getattr(cfg.base, "init", "pretrained"),
                "base_label": getattr(b.base, "label", cfg.run.base),
                "dtype": getattr(cfg.base, "weights_dtype", "fp32"), "autocast_bf16": getattr(cfg.base, "autocast_bf16", False),
                "threads": torch.get_num_threads(), "memory": memory_kind},
    }


# ---- the grid, the files ------------------------------------------------------------------------
def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{spec['method']} stage {spec['stage']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    from rtdmd_bench import registry

    methods = registry.names("methods") if args.methods == "all" else args.methods.split(",")
    out = []
    for method in methods:
        tiny = args.base.startswith("tiny-")
        own = list(getattr(registry.resolve("methods", method), "smoke_test_overrides", ())) + TINY_SETS if tiny else []
        common = [f"train.batch_size={args.batch}", "train.budget=1e30"] + (
            [f"train.threads={args.threads}"] if args.threads else [])
        for stage, stage_sets in MULTI_STAGE.get(method, {1: []}).items():
            out.append({"method": method, "stage": stage, "base": args.base, "warmup": args.warmup,
                        "steps": args.steps, "sets": own + common + stage_sets + list(args.set)})
    return out


def _git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def render(record: dict[str, Any], seconds: float) -> str:
    mib = lambda x: f"{x / 2 ** 20:,.0f}"  # noqa: E731
    weights = ("" if record["base_init"] != "random" else " (a tiny random config)" if record["base"].startswith("tiny-")
               else " with RANDOM weights (`base.init=random`): the real architecture, costs only")
    lines = [
        f"# Training-step cost: {record['base_label']} on {record['device']}",
        "",
        f"Base `{record['base']}`{weights}, weights {record['dtype']}, bf16 autocast {record['autocast_bf16']}; "
        f"torch {record['torch']}, {record['threads']} thread(s); 1-minute load average "
        f"{record['load_average_1min_at_start']} on {record['cpu_count']} cores at the start (other work on the "
        "machine slows the steps). Per method and stage: warm-up steps (the meter "
        "measures each new call shape once), then timed steps, both whole TTUR cycles (`cycle` steps: "
        "`num_fake_per_gen`); s / step is the median over timed cycles of the cycle's time / its steps "
        "(fastest and slowest cycle in brackets); achieved FLOP/s = the FLOPs the training meter charged per "
        f"timed step / s per step. Memory: {record['memory']}; growth = peak - memory after the warm-up "
        "(what the timed steps added). `new FLOP measurements` counts calls the meter had to measure while "
        "timed (0: every timed step ran without the counter).",
        "",
        "| method | stage | samples / step | cycle | warm-up + timed steps | s / step | FLOPs / step | achieved FLOP/s "
        "| peak memory MiB | after warm-up MiB | growth MiB | new FLOP measurements |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['method']} | {r['stage']} ({r['stage_name']}) | {r['batch']} | {r['cycle_steps']} | "
                     f"{r['warmup_steps']} + {r['timed_steps']} | {r['step_time_s']:.3f} ({r['step_time_min_s']:.3f}"
                     f"-{r['step_time_max_s']:.3f}) | {r['flops_per_step']:.3g} | {r['achieved_flops_per_s']:.3g} | "
                     f"{mib(r['peak_memory_bytes'])} | {mib(r['memory_after_warmup_bytes'])} | "
                     f"{mib(r['peak_memory_growth_bytes'])} | {r['new_flop_measurements']} |")
    lines += ["", f"Rerun (from the repository root): `{record['command']}`  ",
              f"Measured {record['date']} in {seconds:.0f} s, commit {record['git_commit']}. The JSON beside this "
              "file is what `rtdmd-bench plan` reads for its GPU-hours when base, device, method, stage and dtype "
              "match (a CPU record never matches a GPU plan; it shows the format and the CPU's figures).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tiny-sd3")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or all")
    parser.add_argument("--batch", type=int, default=4, help="train.batch_size (samples per step)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps (rounded up to whole cycles)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (rounded up to whole cycles)")
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--out-dir", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    from rtdmd_bench.step_costs import write_record

    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine skews the times
    results = []
    for spec in specs(args):
        results.append(run_child(spec))
        r = results[-1]["row"]
        print(f"{r['method']} stage {r['stage']}: {r['step_time_s']:.3f} s/step, {r['achieved_flops_per_s']:.3g} FLOP/s",
              flush=True)
    env = results[0]["env"]
    command = " ".join(["python benchmarks/step_cost.py", f"--base {args.base}", f"--methods {args.methods}",
                        f"--batch {args.batch}", f"--warmup {args.warmup}", f"--steps {args.steps}",
                        f"--threads {args.threads}", *[f"--set {s}" for s in args.set]])
    record = {"benchmark": "step_cost", **env, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "git_commit": _git_commit(), "command": command,
              "load_average_1min_at_start": None if load is None else round(load, 2), "cpu_count": os.cpu_count(), "rows": [r["row"] for r in results]}
    text = render(record, time.perf_counter() - start)
    path = write_record(args.out_dir, record, text)
    print(text)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
