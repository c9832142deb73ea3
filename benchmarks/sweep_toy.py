"""The one toy2d recipe sweep: the same number of trials for every method, so no method gets
more tuning than another.

Each method gets the same grid of learning rates L (every learning-rate field of the method set
to L times its official ratio to the generator's rate), trained once at the benchmark's budget on
a tuning seed (100, never an evaluation seed), scored by `toy-tilt` KL to the tilted target. The
best L per method is printed and written to results/toy2d/sweep.md / sweep.csv; copy it into
rtdmd_bench/recipes/toy2d.yaml (that file records which sweep produced it).

Rerun: python benchmarks/sweep_toy.py [--workers 2] [--grid 3e-4,1e-3,3e-3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtdmd_bench.reproduce import METHODS  # noqa: E402

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
TUNING_SEED = 100


def trial(method: str, lr: float, out: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
    from rtdmd_bench.train import load_for_eval, train

    run_dir = Path(out) / f"{method}-lr{lr:g}"
    sets = [f"{k}={lr * r:g}" for k, r in LR_FIELDS[method].items()]
    sets += [f"run.seed={TUNING_SEED}", "train.threads=1", "train.checkpoint_every=100000"]
    cfg = resolve_config(method, "toy2d", sets)
    if not (run_dir / "result.json").exists():
        train(cfg, run_dir)
    b = load_for_eval(run_dir)
    suite = build_suite("toy-tilt", {"images_per_prompt": 2000})
    with b.method.generator():
        res = evaluate_suite(suite, b.base, SamplerSpec("student", getattr(b.cfg.method, "num_steps", 4)), b.rewards,
                             b.cfg.to_dict(), TUNING_SEED, None, run_dir / "eval" / "toy-tilt.json")
    m = res["metrics"]
    return {"method": method, "lr": lr, "kl_target": m["kl_target"], "kl_teacher": m["kl_teacher"],
            "mean_reward": m["mean_reward"], "overrides": sets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grid", default="3e-4,1e-3,3e-3")
    ap.add_argument("--out", default="runs/sweep-toy2d")
    ap.add_argument("--results", default=str(ROOT / "results" / "toy2d"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    grid = [float(x) for x in args.grid.split(",")]
    jobs = [(m, lr) for m in METHODS for lr in grid]
    rows = []
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for fut in cf.as_completed([pool.submit(trial, m, lr, args.out) for m, lr in jobs]):
            r = fut.result()
            rows.append(r)
            print(f"{r['method']:>7} lr={r['lr']:<7g} KL(target)={r['kl_target']:.3f} KL(teacher)={r['kl_teacher']:.3f}", flush=True)
    rows.sort(key=lambda r: (METHODS.index(r["method"]), r["lr"]))
    best = {m: min((r for r in rows if r["method"] == m), key=lambda r: r["kl_target"]) for m in METHODS}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# toy2d recipe sweep", "",
             f"Grid L = {grid} for every method ({len(grid)} trials each), tuning seed {TUNING_SEED}, "
             "the benchmark budget of rtdmd_bench/recipes/toy2d.yaml, selection by toy-tilt KL to the tilted target "
             "(2000 samples per prompt). Rerun: `python benchmarks/sweep_toy.py`.", "",
             "| method | L | KL to target | KL to teacher | mean reward | chosen |", "|---|---|---|---|---|---|"]
    for r in rows:
        chosen = "**yes**" if best[r["method"]] is r else ""
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['kl_target']:.3f} | {r['kl_teacher']:.3f} | {r['mean_reward']:.3f} | {chosen} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    (out / "sweep.json").write_text(json.dumps({"grid": grid, "rows": rows,
                                                "chosen": {m: best[m]["overrides"] for m in METHODS}}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
