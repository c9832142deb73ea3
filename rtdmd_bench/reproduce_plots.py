"""The `reproduce` CPU benchmark's plots: KL to the target against training FLOPs (toy2d), samples
over the exact target (toy2d) and sample grids (digits, shapes), from the runs' curves and the
evaluation's sample cache."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from rtdmd_bench.reproduce import BENCHES, run_folder, samples_dir, student_spec, teacher_spec


def plot_curves(bench: str, runs_dir: Path, seeds: int, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdmd_bench.runs import RunDir

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, (label, _, _) in enumerate(BENCHES[bench].rows()):
        for seed in range(seeds):
            rows = [r for r in RunDir(run_folder(runs_dir, bench, label, seed)).metrics() if "curve" in r]
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


def row_samples(runs_dir: Path, bench: str, label: str, teacher: Any, suite: Any, indices: list[int]) -> list[Any]:
    """Seed-0 samples of a row for the suite prompts `indices`, as its evaluation made them: from
    the sample cache (`evaluate.cached_samples`), else made again from the same noise (runs
    evaluated before their cache key named their config)."""
    from rtdmd_bench.config import from_dict
    from rtdmd_bench.evaluate import cached_samples, checkpoint_tag, generate_prompt, suite_prompts
    from rtdmd_bench.runs import RunDir

    prompts, n = suite_prompts(suite, teacher.base), suite.images_per_prompt
    kinds = {lab: (kind, steps) for lab, kind, steps in BENCHES[bench].teacher_rows}
    if label in kinds:
        spec, cfg = teacher_spec(bench, *kinds[label]), teacher.cfg
    else:
        run = RunDir.open(run_folder(runs_dir, bench, label, 0))
        cfg = from_dict(run.read_config())
        spec = student_spec(bench, label, 0, cfg)
        spec = dataclasses.replace(spec, tag=checkpoint_tag(run, spec.tag))  # the key evaluate_run gave them
    cache = samples_dir(runs_dir, bench, cfg)
    out = [cached_samples(cache, teacher.base, spec, prompts, n, 0, i) for i in indices]
    if any(x is None for x in out):
        from rtdmd_bench.train import load_for_eval

        b = teacher if label in kinds else load_for_eval(run_folder(runs_dir, bench, label, 0))
        with b.method.generator() if label not in kinds else contextlib.nullcontext():
            out = [x if x is not None else generate_prompt(b.base, spec, prompts[i], i, n, 0, 256)
                   for x, i in zip(out, indices)]
    return out


def plots(bench: str, runs_dir: Path, seeds: int, folder: Path) -> None:
    """toy2d: samples over the exact target (seed 0, first prompt) and KL vs FLOPs;
    digits, shapes: a grid of samples (rows: teacher and methods, columns: prompts)."""
    from rtdmd_bench.evaluate import build_suite, build_teacher, suite_prompts

    labels = ["teacher (4-step CPS)"] + [label for label, _, _ in BENCHES[bench].rows()]
    b = build_teacher(BENCHES[bench].base)
    suite = build_suite(BENCHES[bench].suite)
    if bench == "toy2d":
        from suites.toy_tilt import plot_samples_over_target

        plot_curves(bench, runs_dir, seeds, folder / "kl_vs_flops.png", BENCHES[bench].curve_metric)
        panels = {label: row_samples(runs_dir, bench, label, b, suite, [0])[0] for label in labels}
        plot_samples_over_target(panels, b.base, b.rewards, b.base.train_prompts()[0],
                                 folder / "samples_over_target.png")
    elif bench in ("digits", "shapes"):
        import torch

        from suites.digits import save_digit_grid

        prompts = suite_prompts(suite, b.base)
        picks = list(range(0, len(prompts), max(1, len(prompts) // 10)))[:10]
        rows = {label: torch.stack([x[0] for x in row_samples(runs_dir, bench, label, b, suite, picks)])
                for label in labels}
        save_digit_grid(rows, [prompts[i] for i in picks], folder / "samples_grid.png")
