"""`rtdmd-bench reproduce toy`: every method on the CPU bases at one matched FLOP budget, 3 seeds.

Writes under results/<base>/: the table (Markdown, CSV, LaTeX; mean ± 95% CI over seeds), plots,
and metadata.json (budget, seeds, versions, git commit, wall time, how to rerun). Runs go to
runs/reproduce/<base>/<method>-s<seed>/ and are reused: an interrupted reproduce resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtdmd_bench.errors import UserError

METHODS = ("dmd2", "acdmd", "rtdmd", "dmd-rl", "gdmd", "gndm", "gndmr")


@dataclass(frozen=True)
class BenchSpec:
    """One CPU benchmark: a base, its suite, the columns of its table and its curve metric."""

    base: str
    suite: str
    columns: tuple[tuple[str, str], ...]  # (metric key in the suite JSON, column title)
    curve_metric: str = ""  # suite metric logged against FLOPs during training
    curve_points: int = 0
    teacher_rows: tuple[tuple[str, str, int], ...] = (("teacher (4-step CPS)", "cps", 4),)
    ablations: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (row label, method, overrides)

    def rows(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(row label, method, extra overrides): every method with its recipe, then ablations."""
        return [(m, m, ()) for m in METHODS] + list(self.ablations)


BENCHES: dict[str, BenchSpec] = {
    "toy2d": BenchSpec(
        "toy2d", "toy-tilt",
        (("kl_target", "KL to tilted target"), ("kl_teacher", "KL to teacher"), ("mmd", "MMD to target"),
         ("energy_distance", "energy distance"), ("mean_reward", "mean reward"), ("mode_mass_error", "mode-mass error"),
         ("kl_floor", "estimator floor")),
        curve_metric="kl_target", curve_points=8,
        teacher_rows=(("teacher (4-step CPS)", "cps", 4), ("teacher (100-step Euler)", "euler", 100)),
        # The prototype's finding (METHODS.md section 2): one fake score shared by all backward-
        # simulation steps learns their mixture; giving it the step index is the ablation. Same
        # recipe as dmd2 otherwise (no extra tuning).
        ablations=(("dmd2 +step-cond", "dmd2", ("method.fake_step_conditioning=true",)),)),
    "digits": BenchSpec(
        "digits", "digits",
        (("accuracy", "class accuracy"), ("reward.digit-correct", "digit-correct"), ("reward.digit-ink", "digit-ink"),
         ("fid", "FID (real)"), ("fid_t", "FID-T (teacher)"), ("diversity", "diversity")),
        teacher_rows=(("teacher (4-step CPS)", "cps", 4), ("teacher (50-step Euler)", "euler", 50))),
}
GROUPS = {"toy": ("toy2d", "digits"), "toy2d": ("toy2d",), "digits": ("digits",)}


def run_one(bench: str, label: str, method: str, extra: tuple[str, ...], seed: int, runs_dir: str) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate its suite; returns paths and timings."""
    import torch

    torch.set_num_threads(1)
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
    from rtdmd_bench.runs import RunDir
    from rtdmd_bench.train import load_for_eval, train

    spec = BENCHES[bench]
    run_dir = Path(runs_dir) / bench / f"{_slug(label)}-s{seed}"
    eval_path = run_dir / "eval" / f"{spec.suite}.json"
    if eval_path.exists() and (run_dir / "result.json").exists():
        return {"run": str(run_dir), "reused": True}
    sets = list(extra) + [f"run.seed={seed}", f"run.run_id={bench}/{_slug(label)}-s{seed}", "train.threads=1"]
    if spec.curve_points:
        sets += [f"train.curve_points={spec.curve_points}", f"train.curve_suite={spec.suite}",
                 "train.curve_images_per_prompt=500"]
    cfg = resolve_config(method, spec.base, sets)
    if not (run_dir / "result.json").exists():
        resume = RunDir(run_dir).latest_checkpoint() is not None
        train(cfg, run_dir, resume=resume)
    b = load_for_eval(run_dir)
    suite = build_suite(spec.suite)
    sampler = SamplerSpec.student(b.cfg.method, tag=f"{bench}-{_slug(label)}-s{seed}")
    # One sample cache per bench: student samples are keyed by run, the teacher's (for FID-T) are
    # shared by every run of the bench.
    with b.method.generator():
        evaluate_suite(suite, b.base, sampler, b.rewards, b.cfg.to_dict(), 0, Path(runs_dir) / bench / "samples", eval_path)
    return {"run": str(run_dir), "reused": False}


def _slug(label: str) -> str:
    return label.replace(" ", "").replace("+", "_")


def run_teacher(bench: str, label: str, kind: str, steps: int, runs_dir: str) -> dict[str, Any]:
    """Evaluate the teacher's own sampler with the bench's suite (same prompts, seeds, rewards)."""
    import torch

    torch.set_num_threads(1)
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
    from rtdmd_bench.train import build

    spec = BENCHES[bench]
    out = Path(runs_dir) / bench / f"teacher-{kind}{steps}"
    path = out / "eval" / f"{spec.suite}.json"
    if not path.exists():
        cfg = resolve_config("dmd2", spec.base, [])
        b = build(cfg)
        sampler = SamplerSpec(role="teacher", num_steps=steps, kind=kind, tag=f"{bench}-teacher")
        evaluate_suite(build_suite(spec.suite), b.base, sampler, b.rewards, cfg.to_dict(), 0,
                       Path(runs_dir) / bench / "samples", path)
    return {"label": label, "eval": str(path)}


def build_table(bench: str, runs_dir: Path, seeds: int, teacher_evals: dict[str, Path]):
    """The bench's table (report.grid_table): teacher rows from their suite results, then every row
    of the grid with one cell set per seed."""
    from rtdmd_bench.report import RESOURCES, grid_table, run_cells, suite_cells

    spec = BENCHES[bench]
    rows, hib = [], {}
    for label, path in teacher_evals.items():
        cells, h = suite_cells(json.loads(Path(path).read_text()))
        rows.append((label, [cells]))
        hib |= h
    for label, _, _ in spec.rows():
        per_seed = [run_cells(runs_dir / bench / f"{_slug(label)}-s{seed}", spec.suite) for seed in range(seeds)]
        rows.append((label, [cells for cells, _ in per_seed]))
        hib |= {k: v for _, h in per_seed for k, v in h.items()}
    return grid_table(rows, list(spec.columns) + [(r, r) for r in RESOURCES], hib)


def plot_curves(bench: str, runs_dir: Path, seeds: int, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdmd_bench.runs import RunDir

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, (label, _, _) in enumerate(BENCHES[bench].rows()):
        for seed in range(seeds):
            rows = [r for r in RunDir(runs_dir / bench / f"{_slug(label)}-s{seed}").metrics() if "curve" in r]
            if rows:
                ax.plot([r["flops"] for r in rows], [r["curve"][metric] for r in rows], lw=1.2, marker=".",
                        color=f"C{i}", alpha=0.8, ls="--" if "+" in label else "-", label=label if seed == 0 else None)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(f"{metric} (k-NN estimate, 500 samples/prompt)")
    ax.set_yscale("log")
    ax.set_title(f"{bench}: {metric} during training (each line one seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce(what: str, out: Path, seeds: int, workers: int, runs_dir: Path, console: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rtdmd_bench import __version__
    from rtdmd_bench.runs import atomic_write_json, git_commit, versions

    if what not in GROUPS:
        raise UserError(f"unknown benchmark {what!r}; valid: {', '.join(GROUPS)}")
    benches = GROUPS[what]
    t0 = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _prepare_caches(benches, console)
    jobs = [(run_teacher, (b, label, kind, steps, str(runs_dir))) for b in benches for label, kind, steps in BENCHES[b].teacher_rows]
    jobs += [(run_one, (b, label, m, extra, s, str(runs_dir))) for b in benches for label, m, extra in BENCHES[b].rows()
             for s in range(seeds)]
    teacher: dict[str, dict[str, Path]] = {b: {} for b in benches}
    with Progress(TextColumn("[bold]reproduce {task.fields[what]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=console) as prog:
        task = prog.add_task("runs", total=len(jobs), what=what, last="")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(fn, *args): args for fn, args in jobs}
            for fut in cf.as_completed(futures):
                args = futures[fut]
                res = fut.result()
                if "label" in res:
                    teacher[args[0]][res["label"]] = Path(res["eval"])
                prog.update(task, advance=1, last=" ".join(map(str, args[:2])))
    for b in benches:
        folder = out / b
        table = build_table(b, runs_dir, seeds, teacher[b])
        table.write(folder, "table")
        console.print(table.rich(title=f"{b}: {len(BENCHES[b].rows())} rows x {seeds} seeds, matched budget"))
        _plots(b, runs_dir, seeds, folder)
        cfg0 = json.loads((runs_dir / b / f"{METHODS[0]}-s0" / "result.json").read_text())
        atomic_write_json(folder / "metadata.json", {
            "command": f"rtdmd-bench reproduce {what} --seeds {seeds}", "bench": b, "suite": BENCHES[b].suite,
            "rows": [{"label": label, "method": m, "overrides": list(extra)} for label, m, extra in BENCHES[b].rows()],
            "seeds": list(range(seeds)), "budget": cfg0["budget"],
            "budget_flops": cfg0["compute"]["budget_flops"], "recipe": f"rtdmd_bench/recipes/{b}.yaml",
            "rtdmd_bench": __version__, "git_commit": git_commit(), "versions": versions(),
            "wall_time_total_s": time.perf_counter() - t0, "workers": workers,
            "runs": {label: [str(runs_dir / b / f"{_slug(label)}-s{s}") for s in range(seeds)]
                     for label, _, _ in BENCHES[b].rows()},
        })
    console.print(f"[green]done[/green] in {time.perf_counter() - t0:.0f}s; tables and plots under {out}/")


def _prepare_caches(benches: tuple[str, ...], console: Any) -> None:
    """Build shared caches once, before workers start (so two workers never train the same net)."""
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.train import build

    for b in benches:
        console.print(f"preparing {b} (cached after the first time)")
        build(resolve_config("dmd2", BENCHES[b].base, []))


def _cached(runs_dir: Path, bench: str, key_glob: str, prompt_index: int) -> Any:
    """Cached evaluation samples of one prompt (see evaluate.generate's layout), or None."""
    from safetensors.torch import load_file

    files = sorted((runs_dir / bench / "samples").glob(f"{key_glob}/*/{prompt_index:05d}.safetensors"))
    return load_file(str(files[0]))["images"] if files else None


def _plots(bench: str, runs_dir: Path, seeds: int, folder: Path) -> None:
    """toy2d: samples over the exact target (seed 0, first prompt) and KL vs FLOPs;
    digits: a grid of samples (rows: teacher and methods, columns: prompts)."""
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import build_suite
    from rtdmd_bench.train import build

    sources = {"teacher (4-step CPS)": "teacher-cps4-*"}
    sources |= {label: f"student-*-{bench}-{_slug(label)}-s0" for label, _, _ in BENCHES[bench].rows()}
    if bench == "toy2d":
        from suites.toy_tilt import plot_samples_over_target

        plot_curves(bench, runs_dir, seeds, folder / "kl_vs_flops.png", BENCHES[bench].curve_metric)
        b = build(resolve_config("dmd2", "toy2d", []))
        panels = {label: x for label, g in sources.items() if (x := _cached(runs_dir, bench, g, 0)) is not None}
        plot_samples_over_target(panels, b.base, b.rewards, b.base.train_prompts()[0], folder / "samples_over_target.png")
    elif bench == "digits":
        import torch

        from suites.digits import save_digit_grid

        suite = build_suite("digits")
        prompts = suite.prompts()
        picks = list(range(0, len(prompts), max(1, len(prompts) // 10)))[:10]
        rows = {}
        for label, g in sources.items():
            images = [_cached(runs_dir, bench, g, i) for i in picks]
            if all(x is not None for x in images):
                rows[label] = torch.stack([x[0] for x in images])
        save_digit_grid(rows, [prompts[i] for i in picks], folder / "samples_grid.png")
