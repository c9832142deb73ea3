"""What the harness costs per training step: the same DMD2 step as a bare loop and through the harness.

For each CPU base (toy2d, digits) the bench's own dmd2 configuration (`reproduce.grid_config`: the
recipe, its budget and batch, the bench's curve evaluation, one thread) is trained twice in this
process, from the same initialisation:
- bare: the base's networks (`Base.prepare`), DMD2's generator, fake score, optimisers and EMA
  (`core.generator_critic.GeneratorCritic` on the raw base), the same prompts and random draws,
  and a plain `zero_grad / backward / clip / step` loop; no meter, no Batch, no logs, no
  checkpoints, no curve evaluation;
- harness: `rtdmd_bench.train.train` as `reproduce toy` runs it (FLOP meter, batches, finiteness
  checks, metrics lines, checkpoints, curve points, progress callback).
Both loops take the same updates (`tests/test_loop_overhead.py` checks the weights after a few
steps are bitwise equal). Per-step time is measured from the end of step 1 to the end of the last
step (step 1 holds one-off costs: the meter measures each call shape once), as wall time and as this
process's CPU time (the CPU time is what to trust on a machine shared with other work). What a run
pays once (building the base and method, the final checkpoint and result) is reported apart.

Run:  python benchmarks/loop_overhead.py [--bases toy2d digits] [--repeats 1] [--budget FLOPS]
                                         [--out results/benchmarks/loop_overhead.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rtdmd_bench import registry  # noqa: E402
from rtdmd_bench.compute import ComputeMeter  # noqa: E402
from rtdmd_bench.core import schedules  # noqa: E402
from rtdmd_bench.core.generator_critic import GeneratorCritic  # noqa: E402
from rtdmd_bench.core.parallel import BatchRandom  # noqa: E402
from rtdmd_bench.core.rl import stable_seed  # noqa: E402
from rtdmd_bench.interfaces import draw_prompts  # noqa: E402


def bench_config(base: str, sets: tuple[str, ...] = ()) -> Any:
    """The resolved dmd2 config `reproduce toy` trains on `base` (seed 0), with extra overrides."""
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.reproduce import grid_config

    cfg = grid_config(base, "dmd2", (), "dmd2", 0)  # its overrides: the recipe's, then the bench's
    return resolve_config("dmd2", base, list(cfg.overrides) + list(sets), use_recipe=False) if sets else cfg


def _opt_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor], clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
    opt.step()


def bare_loop(cfg: Any, steps: int, marks: list[tuple[float, float]] | None = None) -> GeneratorCritic:
    """DMD2 (one process, one micro-batch) with nothing but its networks and optimisers: the same
    seeds, prompt draws and random draws as the harness (train.batch_for, Batch.random), so the
    same updates. `marks` receives (wall, CPU) after every step. Returns the trained nets."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.run.seed)  # as train.build: network construction is seeded
    base = registry.resolve("bases", cfg.run.base)(cfg.base)
    base.prepare(ComputeMeter())
    m = cfg.method
    nets = GeneratorCritic(m, base)
    pool, n, seed = base.train_prompts(), cfg.train.batch_size, cfg.run.seed
    for step in range(steps):
        prompts = draw_prompts(pool, n, stable_seed("prompts", seed, step))
        gen = BatchRandom(stable_seed("batch", seed, step))
        cond = base.encode(prompts)
        if step % m.num_fake_per_gen == 0:
            x0, k = nets.backward_simulation(cond, n, gen, grad=True)
            loss = nets.dm_loss(x0, schedules.uniform_sigma(n, gen, m.t_min, m.t_max), cond, k, gen)
            _opt_step(nets.opt_g, loss, nets.student_params, m.grad_clip)
            nets.ema.update()
            x0 = x0.detach()
        else:
            x0, k = nets.backward_simulation(cond, n, gen, grad=False)
        _opt_step(nets.opt_f, nets.fake_score_loss(x0, cond, k, gen), nets.fake_params, m.grad_clip)
        if marks is not None:
            marks.append((time.perf_counter(), time.process_time()))
    return nets


def harness_loop(cfg: Any, run_dir: Path, marks: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """`train.train` as the bench runs it; `marks` receives (wall, CPU) after every step."""
    from rtdmd_bench.train import train

    def on_progress(step: int, used: float, total: float) -> None:
        if marks is not None:
            marks.append((time.perf_counter(), time.process_time()))

    return train(cfg, run_dir, on_progress=on_progress)


def per_step(marks: list[tuple[float, float]]) -> tuple[float, float]:
    """(wall, CPU) seconds per step from the end of step 1 to the end of the last step."""
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    k = max(len(marks) - 1, 1)
    return (w1 - w0) / k, (c1 - c0) / k


def measure(base: str, sets: tuple[str, ...], workdir: Path, repeat: int) -> dict[str, Any]:
    cfg = bench_config(base, sets)
    hm: list[tuple[float, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    result = harness_loop(cfg, workdir / f"{base}-r{repeat}", hm)
    t1, c1 = time.perf_counter(), time.process_time()
    steps = int(result["steps"])
    bm: list[tuple[float, float]] = []
    t2, c2 = time.perf_counter(), time.process_time()
    bare_loop(cfg, steps, bm)
    t3, c3 = time.perf_counter(), time.process_time()
    hw, hc = per_step(hm)
    bw, bc = per_step(bm)
    return {"base": base + "".join(f" `{s}`" for s in sets), "steps": steps, "batch": cfg.train.batch_size, "budget": cfg.train.budget,
            "curve_points": cfg.train.curve_points, "checkpoint_every": cfg.train.checkpoint_every,
            "harness_wall": hw, "harness_cpu": hc, "bare_wall": bw, "bare_cpu": bc,
            "harness_once_wall": (t1 - t0) - (hm[-1][0] - hm[0][0]), "harness_once_cpu": (c1 - c0) - (hm[-1][1] - hm[0][1]),
            "bare_once_wall": (t3 - t2) - (bm[-1][0] - bm[0][0]), "bare_once_cpu": (c3 - c2) - (bm[-1][1] - bm[0][1])}


def _row(r: dict[str, Any]) -> str:
    ms = 1e3
    return (f"| {r['base']} | {r['steps']} | {r['batch']} | {r['bare_cpu'] * ms:.2f} | {r['harness_cpu'] * ms:.2f} | "
            f"**{r['harness_cpu'] / r['bare_cpu']:.2f}** | {r['bare_wall'] * ms:.2f} | {r['harness_wall'] * ms:.2f} | "
            f"{r['harness_wall'] / r['bare_wall']:.2f} | {r['bare_once_cpu']:.2f} | {r['harness_once_cpu']:.2f} |")


HEADER = ("| base | steps | batch | bare CPU ms/step | harness CPU ms/step | ratio (CPU) | bare wall ms/step | "
          "harness wall ms/step | ratio (wall) | bare once CPU s | harness once CPU s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


IMPORTS = (
    ("the CLI (typer, rich, config, registry)", "import rtdmd_bench.cli"),
    ("torch", "import torch"),
    ("torch._dynamo, after torch (imported by the first torch optimiser, optimiser step or FLOP count)",
     "import torch; import torch._dynamo"),
    ("the training loop (train, compute, runs), after torch", "import torch; import rtdmd_bench.train"),
    ("toy2d base and dmd2, after torch", "import torch; import rtdmd_bench.bases.toy2d, methods.dmd2"),
    ("report (scipy.stats only inside mean_ci), after torch", "import torch, rtdmd_bench.runs; import rtdmd_bench.report"),
    ("scipy.stats (report imported it at the top before)", "import torch; import scipy.stats"),
    ("sklearn (digits data split, once per process)", "import torch; import sklearn.model_selection, sklearn.datasets"),
)


def import_costs(repeats: int = 3) -> list[tuple[str, str, float, float]]:
    """(what, statement, CPU s, wall s) of each statement in a fresh interpreter, median of `repeats`;
    a statement after `;` is timed alone (what it adds to the ones before it)."""
    import statistics
    import subprocess

    rows = []
    for what, stmt in IMPORTS:
        *before, timed = stmt.split("; ")
        code = "; ".join(before + ["import time", "c, w = time.process_time(), time.perf_counter()", timed,
                                   "print(time.process_time() - c, time.perf_counter() - w)"])
        runs = [tuple(map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()))
                for _ in range(repeats)]
        rows.append((what, stmt, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
    return rows


def import_table(rows: list[tuple[str, str, float, float]]) -> str:
    return ("| what | statement | CPU s | wall s |\n|---|---|---|---|\n"
            + "\n".join(f"| {w} | `{s}` | {c:.2f} | {t:.2f} |" for w, s, c, t in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", nargs="+", default=["toy2d", "digits"])
    ap.add_argument("--repeats", type=int, default=1, help="Measure each base this many times (rows each).")
    ap.add_argument("--budget", default=None, help="Override train.budget (default: the bench's).")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="Extra config override for both loops, e.g. train.curve_points=0 (repeatable).")
    ap.add_argument("--out", default=None, help="Write the Markdown table here (default: print only).")
    ap.add_argument("--imports", action="store_true", help="Only print the import-time table (fresh interpreters).")
    args = ap.parse_args()
    if args.imports:
        print(import_table(import_costs()))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sets = tuple(args.sets) + ((f"train.budget={args.budget}",) if args.budget else ())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for base in args.bases:
            for r in range(args.repeats):
                res = measure(base, sets, Path(tmp), r)
                rows.append(res)
                print(_row(res), flush=True)
    table = HEADER + "\n" + "\n".join(_row(r) for r in rows)
    print(table)
    if args.out:
        from rtdmd_bench.runs import git_commit

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            f"<!-- written by benchmarks/loop_overhead.py, git {git_commit()}, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->\n{table}\n")


if __name__ == "__main__":
    main()
