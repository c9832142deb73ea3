"""`rtdmd-bench reproduce toy-beta`: every method on toy2d at several beta (not part of `reproduce toy`).

The reward-tilted target p*_beta ∝ p_teacher exp(r / beta) trades fidelity to the teacher against
reward, and on toy2d it is exact (a Gaussian mixture: suites/toy_tilt.exact_target, METHODS.md
section 8). For each beta every registered method is trained with its toy2d recipe and `run.beta=beta`
(the same budget, seeds 0..N-1), and scored by toy-tilt: KL to p*_beta (the method's own target at
that beta), KL to the teacher and mean reward. The exact fronts come from the targets themselves:
p*_beta's (KL(p*_beta || teacher), E_{p*_beta}[r]) by Monte Carlo with exact densities
(`exact_point`), which is the best trade-off any generator can reach at that beta (p*_beta minimises
KL(p || teacher) - E_p[r] / beta), and the teacher's (0, E_teacher[r]).

Writes results/toy2d/beta/: front.png (KL to teacher vs mean reward, one line per method through its
betas, the exact front in black; and KL to p*_beta against beta), table.md/csv (mean ± 95% t-CI over
seeds) and metadata.json (betas, seeds, wall time, the command).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from rtdmd_bench import registry
from rtdmd_bench.reproduce import BENCHES, _prepare_caches, run_folder, run_one
from rtdmd_bench.seed_stats import finite, mean_sd, t_half_width

BENCH = "toy2d-beta"  # BENCHES entry of these runs (runs/reproduce/toy2d-beta/<method>-beta<b>-s<seed>)
BETAS = (0.25, 0.5, 1.0, 4.0)
DEFAULT_SEEDS = 2
EXACT_SAMPLES = 200_000
COLUMNS = (("kl_target", "KL to p*_beta"), ("kl_teacher", "KL to teacher"), ("mean_reward", "mean reward"))


def label(method: str, beta: float) -> str:
    return f"{method} beta={beta:g}"


def exact_point(teacher: Any, target: Any, reward: Callable[[Tensor], Tensor], n: int, gen: torch.Generator
                ) -> dict[str, float]:
    """Monte Carlo with exact densities: KL(target || teacher) = E_target[log target - log teacher],
    KL(teacher || target), E_target[r] and E_teacher[r], from n samples of each (float64)."""
    xs, xt = target.sample(n, gen), teacher.sample(n, gen)  # (n, 2) each
    return {"kl_target_to_teacher": float((target.log_prob(xs) - teacher.log_prob(xs)).mean()),
            "kl_teacher_to_target": float((teacher.log_prob(xt) - target.log_prob(xt)).mean()),
            "reward_target": float(reward(xs).mean()), "reward_teacher": float(reward(xt).mean())}


def exact_points(betas: Sequence[float], n: int = EXACT_SAMPLES, seed: int = 0) -> dict[float, dict[str, float]]:
    """Per beta: `exact_point` averaged over the toy-tilt suite's prompts (as the suite averages)."""
    from rtdmd_bench.compute import unmetered
    from rtdmd_bench.evaluate import build_suite, build_teacher
    from suites.toy_tilt import exact_target

    b, suite = build_teacher("toy2d"), build_suite("toy-tilt")
    out = {}
    for beta in betas:
        rewards = dataclasses.replace(unmetered(b.rewards), beta=float(beta))
        per_prompt = []
        for prompt in suite.prompts():
            def total(x: Tensor, prompt: str = prompt) -> Tensor:
                with torch.no_grad():
                    return rewards.total(x.float(), [prompt] * x.shape[0]).double()
            per_prompt.append(exact_point(b.base.teacher_mixture(prompt), exact_target(b.base, rewards, prompt),
                                          total, n, torch.Generator().manual_seed(seed)))
        out[float(beta)] = {k: sum(p[k] for p in per_prompt) / len(per_prompt) for k in per_prompt[0]}
    return out


def collect(runs_dir: Path, methods: Sequence[str], betas: Sequence[float], seeds: int) -> dict[str, Any]:
    """{method: {beta: {metric: [value per seed]}}} from the runs' toy-tilt results."""
    from rtdmd_bench.report import run_cells

    return {m: {b: {key: [run_cells(run_folder(runs_dir, BENCH, label(m, b), s), "toy-tilt")[0].get(key)
                          for s in range(seeds)] for key, _ in COLUMNS} for b in betas} for m in methods}


def _cell(values: Sequence[Any]) -> str:
    vals = finite(values)
    if not vals:
        return "–"
    m, sd = mean_sd(vals)
    return f"{m:.3f}" if len(vals) < 2 else f"{m:.3f} ± {t_half_width(sd, len(vals)):.3f}"


def table_markdown(results: dict[str, Any], exact: dict[float, dict[str, float]], seeds: int) -> str:
    lines = ["| method | beta | " + " | ".join(t for _, t in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for beta, e in exact.items():
        lines.append(f"| p*_beta (exact) | {beta:g} | 0 | {e['kl_target_to_teacher']:.3f} | {e['reward_target']:.3f} |")
        lines.append(f"| teacher (exact) | {beta:g} | {e['kl_teacher_to_target']:.3f} | 0 | {e['reward_teacher']:.3f} |")
    for m, per_beta in results.items():
        for beta, cells in per_beta.items():
            lines.append(f"| {m} | {beta:g} | " + " | ".join(_cell(cells[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], exact: dict[float, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    betas = sorted(exact)
    ax.plot([exact[b]["kl_target_to_teacher"] for b in betas], [exact[b]["reward_target"] for b in betas], "k*-",
            ms=10, lw=1.5, label="exact p*_beta (the optimal front)", zorder=5)
    ax.plot([0.0], [exact[betas[0]]["reward_teacher"]], "ks", ms=8, label="teacher (exact)", zorder=5)
    for b in betas:
        ax.annotate(f"β={b:g}", (exact[b]["kl_target_to_teacher"], exact[b]["reward_target"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")
    for i, (m, per_beta) in enumerate(results.items()):
        pts = [(b, mean_sd(per_beta[b]["kl_teacher"])[0], mean_sd(per_beta[b]["mean_reward"])[0]) for b in betas]
        pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", color=f"C{i}", label=m, alpha=0.85)
        kl = [(b, mean_sd(per_beta[b]["kl_target"])[0]) for b in betas]
        ax2.plot([b for b, v in kl if math.isfinite(v)], [v for b, v in kl if math.isfinite(v)], "o-",
                 color=f"C{i}", label=m)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("KL to teacher (k-NN estimate; exact for the black points)")
    ax.set_ylabel("mean reward")
    ax.set_title("toy2d: fidelity vs reward, each method's points over beta (mean over seeds)")
    ax.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xticks(betas, [f"{b:g}" for b in betas])
    ax2.minorticks_off()
    ax2.set_yscale("log")
    ax2.set_xlabel("beta")
    ax2.set_ylabel("KL to p*_beta (k-NN estimate)")
    ax2.set_title("distance to the exact tilted target at each beta")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce_beta(out: Path, seeds: int | None, workers: int, runs_dir: Path, console: Any,
                   betas: Sequence[float] = BETAS) -> None:
    """Train and score every method at every beta (resumable: finished runs are reused), then write
    the table, the plot and metadata.json under `out`."""
    from rtdmd_bench import __version__
    from rtdmd_bench.runs import atomic_write_json, atomic_write_text, git_commit, versions

    seeds = seeds or DEFAULT_SEEDS
    t0 = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _prepare_caches(("toy2d",), console)
    methods = list(registry.table("methods"))
    jobs = [(label(m, b), m, (f"run.beta={b:g}",), s) for m in methods for b in betas for s in range(seeds)]
    console.print(f"toy-beta: {len(methods)} methods x {len(betas)} beta x {seeds} seeds = {len(jobs)} runs")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, BENCH, lab, m, extra, s, str(runs_dir)) for lab, m, extra, s in jobs]
        for i, fut in enumerate(cf.as_completed(futures), 1):
            res = fut.result()
            if res["note"]:
                console.print(res["note"], markup=False, highlight=False)
            console.print(f"[{i}/{len(jobs)}] {res['run']}", markup=False, highlight=False)
    results = collect(runs_dir, methods, betas, seeds)
    exact = exact_points(betas)
    wall = time.perf_counter() - t0
    command = f"rtdmd-bench reproduce toy-beta --seeds {seeds} --workers {workers}"
    head = (f"# toy2d: every method at beta = {', '.join(f'{b:g}' for b in betas)}\n\n"
            f"Each method's toy2d recipe with `run.beta=beta`, seeds 0..{seeds - 1}; cells are mean ± 95% Student-t "
            f"CI over the seeds (k-NN estimates of the toy-tilt suite, 5000 samples per prompt). The exact rows are "
            f"Monte Carlo with exact densities ({EXACT_SAMPLES} samples per prompt): p*_beta is the best trade-off "
            f"any generator can reach at its beta. Rerun: `{command}` ({wall / 60:.1f} min with {workers} "
            "worker(s) on a shared 2-core machine). Plot: front.png.\n\n")
    atomic_write_text(out / "table.md", head + table_markdown(results, exact, seeds))
    plot(results, exact, out / "front.png")
    atomic_write_json(out / "results.json", {"betas": list(betas), "seeds": list(range(seeds)), "exact": exact,
                                             "runs": results})
    atomic_write_json(out / "metadata.json", {
        "command": command, "bench": BENCH, "suite": BENCHES[BENCH].suite, "betas": list(betas),
        "seeds": list(range(seeds)), "methods": methods, "recipe": "rtdmd_bench/recipes/toy2d.yaml",
        "exact_samples_per_prompt": EXACT_SAMPLES, "rtdmd_bench": __version__, "git_commit": git_commit(),
        "versions": versions(), "wall_time_total_s": wall, "workers": workers})
    console.print(f"[green]done[/green] in {wall:.0f}s; table and plot under {out}/")
