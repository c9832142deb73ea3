"""Data-parallel training on `tiny-sd3`: one process against two CPU processes with DDP and with
FSDP2 (`train.parallel=fsdp`), same global batch and FLOP budget. Reports, per layout: steps,
FLOPs, wall time, what each rank holds of the transformer (frozen weights, LoRA, AdamW state),
and the largest difference of the final checkpoint from the one-process run.

Run:  python benchmarks/distributed_tiny_sd3.py [--method rtdmd] [--budget 15G]
          [--out results/benchmarks/distributed_tiny_sd3.md]

Processes are started with torch.multiprocessing (gloo), as `torchrun --nproc_per_node 2` would.
On this 2-core machine the two processes share the cores the single process has alone, and
gloo collectives run per step (DDP) or per transformer block (FSDP2): the wall times say what
communication costs at tiny size, not what GPUs gain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import torch

SETS = ["run.rewards=tiny-clipscore=1.0", "train.batch_size=4", "train.threads=1", "train.log_every=1"]
PER_METHOD = {
    "rtdmd": ["method.group_size=2", "method.stage1_fraction=0.4", "method.stage1.num_fake_per_gen=2"],
    "dmd2": ["method.lr_generator=1e-4", "method.num_fake_per_gen=2"],
}


def _held(b) -> dict[str, int]:
    """Bytes this process holds of the transformer and its optimiser state (local shards)."""
    def size(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    held = {"frozen": 0, "lora": 0, "adamw": 0}
    for key, p in b.base.nets.transformer.named_parameters():
        held["lora" if "lora_" in key else "frozen"] += size(p)
    state = getattr(b.method, "state", None) or b.method.nets  # rtdmd, acdmd | DMD-family methods
    for opt in (state.opt_g, state.opt_f):
        for st in opt.state.values():
            held["adamw"] += sum(size(v) for v in st.values() if isinstance(v, torch.Tensor) and v.ndim)
    return held


def _worker(rank: int, world: int, port: int, out: str, method: str, budget: str, mode: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.train import _last_built, train

    cfg = resolve_config(method, "tiny-sd3", SETS + PER_METHOD[method] + [f"train.budget={budget}",
                                                                         f"train.parallel={mode}"])
    run = Path(out) / "run"
    result = train(cfg, run)
    b = _last_built[str(run.resolve())]
    held = _held(b)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"held": held, "steps": result["steps"],
                                                           "flops": result["compute"]["used_flops"],
                                                           "wall": result["wall_time_s"]}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_layout(world: int, mode: str, method: str, budget: str) -> tuple[list[dict], Path]:
    out = Path(tempfile.mkdtemp(prefix=f"dist-{world}-{mode}-"))
    if world == 1:
        os.environ.pop("WORLD_SIZE", None)
        _worker_single(out, method, budget)
    else:
        import torch.multiprocessing as mp

        mp.spawn(_worker, args=(world, _free_port(), str(out), method, budget, mode), nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)], out / "run"


def _worker_single(out: Path, method: str, budget: str) -> None:
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.train import _last_built, train

    cfg = resolve_config(method, "tiny-sd3", SETS + PER_METHOD[method] + [f"train.budget={budget}"])
    result = train(cfg, out / "run")
    b = _last_built[str((out / "run").resolve())]
    (out / "rank0.json").write_text(json.dumps({"held": _held(b), "steps": result["steps"],
                                               "flops": result["compute"]["used_flops"],
                                               "wall": result["wall_time_s"]}))


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    from rtdmd_bench.runs import RunDir

    ta, tb = (load_file(str(RunDir(r).latest_checkpoint() / "tensors.safetensors")) for r in (a, b))
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="rtdmd", choices=sorted(PER_METHOD))
    parser.add_argument("--budget", default="15G")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/distributed_tiny_sd3.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    layouts = [("1 process", 1, "ddp"), ("2 processes, DDP", 2, "ddp"), ("2 processes, FSDP2", 2, "fsdp")]
    rows, reference = [], None
    for label, world, mode in layouts:
        ranks, run = run_layout(world, mode, args.method, args.budget)
        reference = reference or run
        r0 = ranks[0]
        per_step = r0["wall"] / max(r0["steps"], 1)
        rows.append((label, r0["steps"], r0["flops"], r0["wall"], per_step, r0["held"],
                     0.0 if run == reference else max_difference(reference, run)))
    seconds = time.perf_counter() - t0
    kib = lambda x: f"{x / 1024:,.1f}"  # noqa: E731
    lines = [
        "# Data-parallel training on tiny-sd3: one process vs two (DDP, FSDP2)",
        "",
        f"`{args.method}` on `tiny-sd3`, global batch 4, budget {args.budget} FLOPs, the same config in every "
        "layout; two CPU processes over gloo. Held = what rank 0 keeps of the transformer (local shards "
        "under FSDP2); max |diff| = largest difference of any tensor of the final checkpoint (weights, EMA, "
        "AdamW state) from the one-process run.",
        "",
        "| layout | steps | FLOPs (global) | wall s | s / step | frozen KiB / rank | LoRA KiB / rank "
        "| AdamW KiB / rank | max abs diff vs 1 process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, steps, flops, wall, per_step, held, diff in rows:
        lines.append(f"| {label} | {steps} | {flops:.4g} | {wall:.1f} | {per_step:.3f} | {kib(held['frozen'])} | "
                     f"{kib(held['lora'])} | {kib(held['adamw'])} | {diff:.1e} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines += [
        "",
        "Same steps and FLOPs in every layout: the meter is summed over processes and each process trains on its "
        "rows of the global batch, so the budget buys the same training. FSDP2 halves what each rank holds of the "
        "transformer and of the optimiser state; DDP replicates it. On two shared CPU cores the collectives "
        "(per step for DDP, per block for FSDP2) cost more than the halved batch saves.",
        "",
        f"Rerun: `python benchmarks/distributed_tiny_sd3.py --method {args.method} --budget {args.budget}`  ",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {seconds:.0f} s; torch {torch.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPU cores, commit {commit}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
