"""`rtdmd-bench reproduce toy`: every method on the CPU bases at one matched FLOP budget, 5 seeds.

Writes under results/<base>/: the table (Markdown, CSV, LaTeX; mean ± 95% CI over seeds) with every
row's paired difference to a reference row (bench_tables.py; also paired.md/csv), plots,
and metadata.json (budget, seeds, versions, git commit, wall time, how to rerun). The rows are
every registered method with its recipe, then the bench's ablations.

Runs go to runs/reproduce/<base>/<row>-s<seed>/ (the teacher rows to teacher-<sampler><steps>/).
A folder is reused (an interrupted run resumes) only when its config.yaml is the resolved config
the grid asks for now; after a default or recipe change it is moved aside to <folder>.stale-<n>
and run again, and reproduce says which values differed. Evaluation samples are cached per bench
under samples/<digest of the base config>/, a run's with digests of its config and of its
checkpoint's content in their key, so a rerun never reads the samples of the run it replaces.
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

import yaml

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError


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
    reference: str = ""  # the row every row's paired difference is to; "" = the last teacher row, else dmd2

    def rows(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(row label, method, extra overrides): every registered method with its recipe, then ablations."""
        return [(m, m, ()) for m in registry.table("methods")] + list(self.ablations)


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
    # The compositional base (issue 15): GenEval's figures by a rule-based detector. rtdmd's two
    # ablations isolate its hybrid reward term: GRPO alone, reward backprop (through the proxy) alone.
    "shapes": BenchSpec(
        "shapes", "shapes-geneval",
        (("overall", "GenEval overall"), ("single_object", "single"), ("two_object", "two obj."),
         ("counting", "counting"), ("colors", "colours"), ("position", "position"), ("color_attr", "colour attr."),
         ("reward.shapes-partial", "partial credit"), ("reward.shapes-proxy", "proxy"),
         ("fid", "FID (renders)"), ("fid_t", "FID-T (teacher)"), ("diversity", "diversity")),
        teacher_rows=(("teacher (4-step CPS)", "cps", 4), ("teacher (50-step Euler)", "euler", 50)),
        ablations=(("rtdmd grpo-only", "rtdmd", ("method.reward_term=grpo",)),
                   ("rtdmd backprop-only", "rtdmd", ("method.reward_term=backprop",)))),
    # `reproduce toy-beta` (toy_beta.py): toy2d runs at several beta; no table of this grid, no curves.
    "toy2d-beta": BenchSpec(
        "toy2d", "toy-tilt", (("kl_target", "KL to p*_beta"), ("kl_teacher", "KL to teacher"),
                              ("mean_reward", "mean reward")), teacher_rows=()),
}
GROUPS = {"toy": ("toy2d", "digits"), "toy2d": ("toy2d",), "digits": ("digits",), "shapes": ("shapes",),
          "cpu-all": ("toy2d", "digits", "shapes"),  # everything on CPU: toy + the compositional base
          "toy-beta": ("toy2d",)}  # toy-beta: every method at several beta (toy_beta.py), not in `toy`
TEACHER_CONFIG = "teacher_config.yaml"  # in a teacher row's folder: the config its evaluation resolved


def _slug(label: str) -> str:
    return label.replace(" ", "").replace("+", "_")


def run_folder(runs_dir: Path, bench: str, label: str, seed: int) -> Path:
    return Path(runs_dir) / bench / f"{_slug(label)}-s{seed}"


def grid_config(bench: str, method: str, extra: tuple[str, ...], label: str, seed: int) -> Any:
    """The resolved config the grid asks for: the method's recipe on the bench's base, the row's
    overrides, the seed, and the bench's curve settings."""
    from rtdmd_bench.config import resolve_config

    spec = BENCHES[bench]
    sets = list(extra) + [f"run.seed={seed}", f"run.run_id={bench}/{_slug(label)}-s{seed}", "train.threads=1"]
    if spec.curve_points:
        sets += [f"train.curve_points={spec.curve_points}", f"train.curve_suite={spec.suite}",
                 "train.curve_images_per_prompt=500"]
    return resolve_config(method, spec.base, sets)


def _comparable(cfg: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config as config.yaml holds it (YAML types), without the override list (provenance: the
    same values can be reached by other overrides) and the sections `ignore`."""
    return {k: v for k, v in yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False)).items()
            if k not in ("overrides", *ignore)}


def with_defaults(saved: Any) -> Any:
    """A saved config with the fields added since it was written at their defaults (a new field
    that keeps its default changes no run); as saved if it cannot be read as a config."""
    from rtdmd_bench.config import from_dict

    try:
        return {**saved, **from_dict(saved).to_dict()}
    except Exception:  # noqa: BLE001  (an unreadable old config is compared as it is: it differs)
        return saved


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key: old -> new' for every dotted key whose value differs between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [d for k in keys for d in differences(old.get(k, "(absent)"), new.get(k, "(absent)"), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def set_aside_if_stale(folder: Path, cfg: dict[str, Any], ignore: tuple[str, ...] = (),
                       config_file: str = "config.yaml") -> str:
    """'' if `folder` is absent or was made with config `cfg` (its `config_file`; sections `ignore`
    aside); otherwise move it to <folder>.stale-<n> (nothing is deleted) and return a sentence
    saying so and why."""
    found = folder / config_file
    if not folder.exists():
        return ""
    if found.exists():
        diff = differences(_comparable(with_defaults(yaml.safe_load(found.read_text())), ignore), _comparable(cfg, ignore))
        if not diff:
            return ""
        why = "config changed (" + "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more)" if len(diff) > 4 else ")")
    else:
        why = f"no {config_file} to compare"
    n = 1
    while folder.with_name(f"{folder.name}.stale-{n}").exists():
        n += 1
    aside = folder.rename(folder.with_name(f"{folder.name}.stale-{n}"))
    return f"{folder}: {why}; rerunning it, the old one is now {aside}"


def samples_dir(runs_dir: Path, bench: str, cfg: Any) -> Path:
    """The bench's sample cache for runs on this base config: teacher samples (teacher rows and
    FID-T references) depend on the base alone and are shared by every run of it."""
    from rtdmd_bench.paths import config_hash

    return Path(runs_dir) / bench / "samples" / config_hash([cfg.run.base, cfg.to_dict()["base"]])


def student_spec(bench: str, label: str, seed: int, cfg: Any) -> Any:
    """The run's sampler; its cache key names the row, the seed and a digest of the run's config."""
    from rtdmd_bench.evaluate import SamplerSpec
    from rtdmd_bench.paths import config_hash

    digest = config_hash(_comparable(cfg.to_dict()), 8)
    return SamplerSpec.student(cfg.method, tag=f"{bench}-{_slug(label)}-s{seed}-{digest}")


def teacher_spec(bench: str, kind: str, steps: int) -> Any:
    from rtdmd_bench.evaluate import SamplerSpec

    return SamplerSpec(role="teacher", num_steps=steps, kind=kind, tag=f"{bench}-teacher")


def run_one(bench: str, label: str, method: str, extra: tuple[str, ...], seed: int, runs_dir: str) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate its suite; returns its folder and a note
    when a stale folder was set aside."""
    import torch

    torch.set_num_threads(1)
    from rtdmd_bench.evaluate import build_suite, evaluate_run
    from rtdmd_bench.train import train

    spec = BENCHES[bench]
    run_dir = run_folder(Path(runs_dir), bench, label, seed)
    cfg = grid_config(bench, method, extra, label, seed)
    note = set_aside_if_stale(run_dir, cfg.to_dict())
    if (run_dir / "eval" / f"{spec.suite}.json").exists() and (run_dir / "result.json").exists():
        return {"run": str(run_dir), "reused": True, "note": note}
    if not (run_dir / "result.json").exists():
        train(cfg, run_dir, resume=(run_dir / "config.yaml").exists())  # (none before its first checkpoint: starts over)
    # Student samples are keyed by run; the teacher's (for FID-T) are shared by the bench's runs.
    evaluate_run(build_suite(spec.suite), run_dir, 0, samples_dir(Path(runs_dir), bench, cfg),
                 student_spec(bench, label, seed, cfg).tag)
    return {"run": str(run_dir), "reused": False, "note": note}


def run_teacher(bench: str, label: str, kind: str, steps: int, runs_dir: str) -> dict[str, Any]:
    """Evaluate the teacher's own sampler with the bench's suite (same prompts, seeds, rewards)."""
    import torch

    torch.set_num_threads(1)
    from rtdmd_bench.evaluate import build_suite, build_teacher, evaluate_teacher, teacher_config
    from rtdmd_bench.runs import atomic_write_text

    spec = BENCHES[bench]
    out = Path(runs_dir) / bench / f"teacher-{kind}{steps}"
    path = out / "eval" / f"{spec.suite}.json"
    cfg = teacher_config(spec.base)
    # The teacher depends on the base, its rewards and beta, not on the method the config is resolved
    # for; the file is not named config.yaml, which would make the folder look like a run.
    note = set_aside_if_stale(out, cfg.to_dict(), ignore=("method", "train"), config_file=TEACHER_CONFIG)
    if not path.exists():
        b = build_teacher(spec.base)
        evaluate_teacher(build_suite(spec.suite), b, teacher_spec(bench, kind, steps),
                         samples_dir(Path(runs_dir), bench, cfg), path)
        atomic_write_text(out / TEACHER_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # for the next reuse check
    return {"label": label, "eval": str(path), "note": note}


def table_rows(bench: str, runs_dir: Path, seeds: int, teacher_evals: dict[str, Path]):
    """(rows, higher_is_better): (label, one cell dict per seed; a teacher row has one) per row."""
    from rtdmd_bench.report import run_cells, suite_cells

    spec = BENCHES[bench]
    rows, hib = [], {}
    for label, path in teacher_evals.items():
        cells, h = suite_cells(json.loads(Path(path).read_text()))
        rows.append((label, [cells]))
        hib |= h
    for label, _, _ in spec.rows():
        per_seed = [run_cells(run_folder(runs_dir, bench, label, seed), spec.suite) for seed in range(seeds)]
        rows.append((label, [cells for cells, _ in per_seed]))
        hib |= {k: v for _, h in per_seed for k, v in h.items()}
    return rows, hib


DEFAULT_SEEDS = 5  # every CPU table: >= 5 seeds, so paired differences have 4 degrees of freedom


def reproduce(what: str, out: Path, seeds: int | None, workers: int, runs_dir: Path, console: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rtdmd_bench import __version__
    from rtdmd_bench.evaluate import build_teacher
    from rtdmd_bench.runs import atomic_write_json, git_commit, versions

    if what not in GROUPS:
        raise UserError(f"unknown benchmark {what!r}; valid: {', '.join(GROUPS)}")
    if what == "toy-beta":  # not a table of the grid: the beta sweep (toy_beta.py)
        from rtdmd_bench.toy_beta import reproduce_beta

        return reproduce_beta(out / "toy2d" / "beta", seeds, workers, runs_dir, console)
    seeds = seeds or DEFAULT_SEEDS
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
                if res["note"]:
                    prog.console.print(res["note"], markup=False, highlight=False)
                if "label" in res:
                    teacher[args[0]][res["label"]] = Path(res["eval"])
                prog.update(task, advance=1, last=" ".join(map(str, args[:2])))
    for b in benches:
        folder = out / b
        rows = BENCHES[b].rows()
        from rtdmd_bench.bench_tables import write_bench_tables
        from rtdmd_bench.report import RESOURCES, grid_table

        spec = BENCHES[b]
        grid_rows, hib = table_rows(b, runs_dir, seeds, teacher[b])
        table = grid_table(grid_rows, list(spec.columns) + [(r, r) for r in RESOURCES], hib)
        reference = write_bench_tables(folder, table, grid_rows, spec.columns,
                                       [label for label, _, _ in spec.teacher_rows], spec.reference, seeds)
        console.print(table.rich(title=f"{b}: {len(rows)} rows x {seeds} seeds, matched budget"))
        from rtdmd_bench.reproduce_plots import plots

        plots(b, runs_dir, seeds, folder)
        cfg0 = json.loads((run_folder(runs_dir, b, rows[0][0], 0) / "result.json").read_text())
        atomic_write_json(folder / "metadata.json", {
            "base_checks": base_checks(build_teacher(BENCHES[b].base).base),
            "command": f"rtdmd-bench reproduce {what} --seeds {seeds}", "bench": b, "suite": BENCHES[b].suite,
            "rows": [{"label": label, "method": m, "overrides": list(extra)} for label, m, extra in rows],
            "seeds": list(range(seeds)), "paired_reference": reference, "budget": cfg0["budget"],
            "budget_flops": cfg0["compute"]["budget_flops"], "recipe": f"rtdmd_bench/recipes/{b}.yaml",
            "rtdmd_bench": __version__, "git_commit": git_commit(), "versions": versions(),
            "wall_time_total_s": time.perf_counter() - t0, "workers": workers,
            "runs": {label: [str(run_folder(runs_dir, b, label, s)) for s in range(seeds)] for label, _, _ in rows},
        })
    console.print(f"[green]done[/green] in {time.perf_counter() - t0:.0f}s; tables and plots under {out}/")


BASE_CHECKS = ("teacher_check", "evaluator_accuracy", "classifier_held_out_accuracy")


def base_checks(base: Any) -> dict[str, Any]:
    """The base's measured checks (teacher accuracy, classifier / evaluator accuracy) from its
    optional `describe()`, not its cache paths; {} for a base without one (toy2d: exact densities)."""
    describe = getattr(base, "describe", None)
    return {k: v for k, v in describe().items() if k in BASE_CHECKS} if describe is not None else {}


def _prepare_caches(benches: tuple[str, ...], console: Any) -> None:
    """Build shared caches once, before workers start (so two workers never train the same net)."""
    from rtdmd_bench.evaluate import build_teacher

    for b in benches:
        console.print(f"preparing {b} (cached after the first time)")
        build_teacher(BENCHES[b].base)
