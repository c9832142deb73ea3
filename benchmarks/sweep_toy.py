"""The one toy2d recipe sweep: every registered method, the same learning-rate trials for each, each
trial scored over several tuning seeds, the pick by the mean (not by the luckiest seed).

Each method gets the same grid of learning rates L (every learning-rate field of the method set to
L times its official ratio to the generator's rate). Every (method, L) trial is trained at the
benchmark's budget on each tuning seed (100, 101, 102 by default: disjoint from the table's seeds
0..N-1, which tune nothing), scored by `toy-tilt` KL to the tilted target (2000 samples per prompt,
evaluation seed = the tuning seed), and the L with the lowest mean over the seeds is picked (a
trial with a diverged seed ranks last). Written to results/toy2d/sweep.md and sweep.json with each
trial's mean ± sd over seeds and the per-seed values; copy the picks into
rtdmd_bench/recipes/toy2d.yaml (that file names this sweep).

Rerun: python benchmarks/sweep_toy.py [--workers 1] [--grid 3e-4,1e-3,3e-3] [--seeds 100,101,102]
(21 trials x 3 seeds = 63 short runs: ~12 min on one core.)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtdmd_bench import registry  # noqa: E402
from rtdmd_bench.seed_stats import mean_sd, pick_by_mean  # noqa: E402

# Learning-rate fields per method and their ratio to the swept rate L (official ratios kept:
# RTDMD's stage-2 generator rate is 1/10 of stage 1's, METHODS.md sections 3-4).
LR_FIELDS: dict[str, dict[str, float]] = {
    "dmd2": {"method.lr_generator": 1.0, "method.lr_fake": 1.0},
    "acdmd": {"method.lr_generator": 1.0, "method.lr_fake": 1.0},
    "rtdmd": {"method.stage1.lr_generator": 1.0, "method.stage1.lr_fake": 1.0, "method.lr": 0.1, "method.lr_fake": 1.0},
    "dmd-rl": {"method.lr_generator": 1.0, "method.lr_fake": 1.0},
    "gdmd": {"method.lr_generator": 1.0, "method.lr_fake": 1.0},
    "gndm": {"method.lr_generator": 1.0, "method.lr_fake": 1.0},
    "gndmr": {"method.lr_generator": 1.0, "method.lr_fake": 1.0},
}
TUNING_SEEDS = (100, 101, 102)


def lr_overrides(method: str, lr: float) -> list[str]:
    if method not in LR_FIELDS:
        raise SystemExit(f"sweep_toy: no learning-rate fields known for method {method!r}; add it to LR_FIELDS")
    return [f"{k}={lr * r:g}" for k, r in LR_FIELDS[method].items()]


def trial(method: str, lr: float, seed: int, out: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
    from rtdmd_bench.train import load_for_eval, train

    run_dir = Path(out) / f"{method}-lr{lr:g}-s{seed}"
    sets = lr_overrides(method, lr) + [f"run.seed={seed}", "train.threads=1", "train.checkpoint_every=100000"]
    cfg = resolve_config(method, "toy2d", sets)
    if not (run_dir / "result.json").exists():
        train(cfg, run_dir)
    b = load_for_eval(run_dir)
    suite = build_suite("toy-tilt", {"images_per_prompt": 2000})
    with b.method.generator():
        res = evaluate_suite(suite, b.base, SamplerSpec("student", getattr(b.cfg.method, "num_steps", 4)), b.rewards,
                             b.cfg.to_dict(), seed, None, run_dir / "eval" / "toy-tilt.json")
    m = res["metrics"]
    return {"method": method, "lr": lr, "seed": seed, "kl_target": m["kl_target"], "kl_teacher": m["kl_teacher"],
            "mean_reward": m["mean_reward"], "overrides": lr_overrides(method, lr)}


def summarise(rows: list[dict], methods: list[str], grid: list[float]) -> tuple[list[dict], dict[str, float]]:
    """Per (method, L): mean ± sd over seeds of each score; the pick per method by mean KL to target."""
    trials = []
    for m in methods:
        for lr in grid:
            mine = sorted((r for r in rows if r["method"] == m and r["lr"] == lr), key=lambda r: r["seed"])
            t = {"method": m, "lr": lr, "seeds": [r["seed"] for r in mine], "overrides": lr_overrides(m, lr)}
            for key in ("kl_target", "kl_teacher", "mean_reward"):
                t[key] = [r[key] for r in mine]
                t[f"{key}_mean"], t[f"{key}_sd"] = mean_sd(t[key])
            trials.append(t)
    picks = {m: pick_by_mean({t["lr"]: t["kl_target"] for t in trials if t["method"] == m}) for m in methods}
    return trials, picks


def write(trials: list[dict], picks: dict[str, float], grid: list[float], seeds: list[int], out: Path,
          wall: float, workers: int) -> str:
    lines = ["# toy2d recipe sweep", "",
             f"Every method, the same grid L = {grid} ({len(grid)} trials each); each trial trained at the benchmark "
             f"budget of rtdmd_bench/recipes/toy2d.yaml on the tuning seeds {seeds} (disjoint from the table's seeds "
             "0..N-1) and scored by toy-tilt KL to the tilted target (2000 samples per prompt, evaluation seed = "
             "tuning seed). **Pick: the lowest mean over the seeds** (a trial with a diverged seed ranks last). "
             "Cells: mean ± sample sd over the seeds, then the per-seed values.",
             f"Rerun: `python benchmarks/sweep_toy.py --workers {workers}` ({wall / 60:.1f} min with {workers} "
             "worker(s) on a shared 2-core machine).", "",
             "| method | L | KL to target (mean ± sd) | per seed | KL to teacher | mean reward | picked |",
             "|---|---|---|---|---|---|---|"]
    for t in trials:
        per_seed = ", ".join(f"{v:.2f}" for v in t["kl_target"])
        lines.append(f"| {t['method']} | {t['lr']:g} | {t['kl_target_mean']:.3f} ± {t['kl_target_sd']:.3f} | {per_seed} | "
                     f"{t['kl_teacher_mean']:.3f} ± {t['kl_teacher_sd']:.3f} | {t['mean_reward_mean']:.3f} ± "
                     f"{t['mean_reward_sd']:.3f} | {'**yes**' if picks[t['method']] == t['lr'] else ''} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    (out / "sweep.json").write_text(json.dumps({
        "grid": grid, "tuning_seeds": seeds, "selection": "lowest mean kl_target over the tuning seeds",
        "wall_time_s": wall, "workers": workers, "trials": trials,
        "picked": {m: {"lr": lr, "overrides": lr_overrides(m, lr)} for m, lr in picks.items()}}, indent=2))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--grid", default="3e-4,1e-3,3e-3")
    ap.add_argument("--seeds", default=",".join(map(str, TUNING_SEEDS)))
    ap.add_argument("--out", default="runs/sweep-toy2d")
    ap.add_argument("--results", default=str(ROOT / "results" / "toy2d"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    grid = [float(x) for x in args.grid.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    if len(seeds) < 3 or min(seeds) < 10:
        raise SystemExit("sweep_toy: use >= 3 tuning seeds, all >= 10 (the tables use seeds 0..9)")
    methods = list(registry.table("methods"))
    jobs = [(m, lr, s) for m in methods for lr in grid for s in seeds]
    rows, t0 = [], time.perf_counter()
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for fut in cf.as_completed([pool.submit(trial, m, lr, s, args.out) for m, lr, s in jobs]):
            r = fut.result()
            rows.append(r)
            print(f"[{len(rows)}/{len(jobs)}] {r['method']:>7} lr={r['lr']:<7g} seed={r['seed']} "
                  f"KL(target)={r['kl_target']:.3f} KL(teacher)={r['kl_teacher']:.3f}", flush=True)
    trials, picks = summarise(rows, methods, grid)
    print(write(trials, picks, grid, seeds, Path(args.results), time.perf_counter() - t0, args.workers))


if __name__ == "__main__":
    main()
