"""Print and run a `reproduce TABLE` plan (`reproduce_tables.TablePlan`).

Launchers (`--launcher`):
- local: each job's commands one after another in subprocesses of this Python (`python -m
  rtdmd_bench ...`), one process per command;
- torchrun: the same, each command under `torchrun --nproc_per_node N -m rtdmd_bench ...` (N =
  --gpus-per-node; train and eval both share their work over the process group);
- slurm: the grid as one job array through submitit (pip install -e .[cluster]): one array task per
  job (a run with its evaluations, or a teacher's evaluations), each running its commands under
  torchrun on one node with --gpus-per-node GPUs. Stale folders are set aside and teacher job files
  written here, before submission, so tasks only run commands.

Launching writes <runs>/<table>/reproduce.json (rows and seeds -> folders, budgets, result files).
The printed commands are copy-pasteable (`rtdmd-bench ...`, the console entry point; the runs
themselves use `python -m rtdmd_bench`, the same program).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from rtdmd_bench.errors import UserError

Launcher = Literal["local", "torchrun", "slurm"]


@dataclass(frozen=True)
class SlurmOptions:
    """submitit/Slurm settings of the job array (`--slurm-*`, `--gpus-per-node`, `--timeout-min`)."""

    partition: str = ""
    """Slurm partition (empty: the cluster's default)."""
    gpus_per_node: int = 8
    """GPUs (and torchrun processes) per array task."""
    timeout_min: int = 4320
    """Time limit of one array task, minutes (a run that hits it resumes when resubmitted)."""
    cpus_per_task: int = 16
    """CPUs per array task."""
    array_parallelism: int = 16
    """How many array tasks may run at once."""
    account: str = ""
    """Slurm account (empty: none given)."""


def prefix(launcher: Launcher, gpus: int, printed: bool = False) -> list[str]:
    """The program part of a command: `rtdmd-bench` (printed) or `python -m rtdmd_bench`; under
    torchrun (also inside a slurm task with more than one GPU) `torchrun --nproc_per_node N -m
    rtdmd_bench`, run as `python -m torch.distributed.run` (the same program; a batch job's PATH
    need not hold the environment's scripts)."""
    if launcher == "torchrun" or (launcher == "slurm" and gpus > 1):
        program = ["torchrun"] if printed else [sys.executable, "-m", "torch.distributed.run"]
        return program + ["--nproc_per_node", str(gpus), "-m", "rtdmd_bench"]
    return ["rtdmd-bench"] if printed else [sys.executable, "-m", "rtdmd_bench"]


def job_commands(job: Any, launcher: Launcher, gpus: int, printed: bool = False) -> list[list[str]]:
    """The commands still to run for one job (done steps left out), in order."""
    return [prefix(launcher, gpus, printed) + list(step.argv) for step in job.todo]


def run_commands(commands: Sequence[Sequence[str]]) -> int:
    """Run commands one after another (the job function of every launcher); stop at the first that
    fails with a UserError naming it. Returns how many ran."""
    for i, cmd in enumerate(commands):
        done = subprocess.run(list(cmd), check=False)
        if done.returncode != 0:
            raise UserError(f"command {i + 1} of {len(commands)} failed with exit status {done.returncode}: "
                            f"{shlex.join(cmd)}; fix it and rerun reproduce (finished work is kept)")
    return len(commands)


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2 ** 30:.1f} GiB"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(plan: Any, launcher: Launcher, slurm: SlurmOptions) -> list[str]:
    """The dry-run text: (an abstract table's choices and unknowns), budget, runs with FLOPs, GPU-hours
    (and where each comes from) and memory, protocol, files, commands."""
    gpus = plan.gpus
    lines = [f"reproduce {plan.table}: {plan.title}", *plan.header,
             f"runs under {plan.folder}; {plan.seeds} seed(s) per row "
             f"(--seeds); {gpus} GPU(s) per job (--gpus-per-node); launcher {launcher}"]
    for base, (budget, how) in plan.budgets.items():
        lines.append(f"budget on {base}: {budget} FLOPs: {how}")
    lines += ["", "jobs (row | method | base | seed | FLOPs | H100 GPU-hours | memory per GPU | state | folder):"]
    total = 0.0
    for job in plan.jobs:
        state = ", ".join(f"{s.kind} {s.state}" for s in job.steps)
        lines.append(f"  {job.row} | {job.method or 'teacher (eval --base)'} | {job.base} | "
                     f"{'-' if job.seed is None else job.seed} | {_num(job.flops, '.4g')} | "
                     f"{_num(job.gpu_hours, ',.0f')} | {_gib(job.memory_per_gpu)} | {state} | {job.folder}")
        total += job.gpu_hours or 0.0
        if job.note:
            lines.append(f"    would be set aside: {job.note}")
    lines.append(f"  training total: {total:,.0f} H100 GPU-hours, {total / gpus:,.1f} h on {gpus} GPU(s); memory per "
                 f"GPU: plan's estimate for the run's micro-batch (train.batch_size / ({gpus} GPU(s) x "
                 "train.micro_batches)) and train.parallel")
    sources = {(j.method, j.base): j.gpu_hours_from for j in plan.jobs if j.kind == "run" and j.gpu_hours_from}
    if sources:
        lines += ["  GPU-hours from (plan.stage_gpu_hours; seeds alike):"] + [
            f"    {method} on {base}: {source}" for (method, base), source in sources.items()]
    if plan.skipped:
        lines += ["", "rows not run:"] + [f"  {label}: {why}" for label, why in plan.skipped]
    lines += ["", "evaluation protocol:"] + [f"  {p}" for p in plan.protocol]
    lines += ["", "prompt files:"] + [f"  {'present' if ok else 'missing (downloaded and verified on first use)'}: "
                                      f"{name} -> {path}" for name, path, ok in plan.prompt_files]
    lines += ["", "weights (local hub cache, no network):"] + [
        f"  {'present' if ok else 'missing'}: {repo} ({who})" for repo, who, ok in plan.weights]
    todo = [job for job in plan.jobs if job.todo]
    lines += ["", f"commands ({sum(len(j.todo) for j in todo)} to run, "
                  f"{sum(len(j.steps) - len(j.todo) for j in plan.jobs)} done and skipped):"]
    if launcher == "slurm":
        lines.append(f"  a submitit job array of {len(todo)} task(s) (partition {slurm.partition or 'default'}, "
                     f"{gpus} GPU(s) per node, {slurm.timeout_min} min, at most {slurm.array_parallelism} at once); "
                     "task i runs job i's commands in order:")
    for i, job in enumerate(todo):
        if launcher == "slurm":
            lines.append(f"  # task {i}: {job.row}" + ("" if job.seed is None else f", seed {job.seed}"))
        lines += [shlex.join(cmd) for cmd in job_commands(job, launcher, gpus, printed=True)]
    return lines


def launch(plan: Any, launcher: Launcher, slurm: SlurmOptions, console: Any, cluster: str | None = None) -> list[Any]:
    """Run the plan's jobs: local/torchrun here one after another; slurm as a submitit job array
    (`cluster`: submitit's "local" or "debug" executor instead of Slurm, for tests). Returns the
    submitit jobs (slurm) or []."""
    from rtdmd_bench.reproduce_tables import prepare_folders

    for note in prepare_folders(plan):
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    write_record(plan, launcher)
    todo = [job for job in plan.jobs if job.todo]
    if not todo:
        console.print(f"{plan.table}: every run and evaluation is done", markup=False)
        return []
    gpus = plan.gpus
    if launcher != "slurm":
        for i, job in enumerate(todo):
            console.print(f"[{i + 1}/{len(todo)}] {job.row} ({job.folder})", markup=False, highlight=False)
            run_commands(job_commands(job, launcher, gpus))
        return []
    return submit_array([job_commands(job, launcher, gpus) for job in todo], plan.folder / "slurm", slurm, cluster)


def write_record(plan: Any, launcher: Launcher) -> Path:
    """<runs>/<table>/reproduce.json: which folder holds which row and seed, the budgets and the suites'
    result files, so the measured rows can be put beside the table's (rewritten at every launch)."""
    from rtdmd_bench.files import atomic_write_json

    plan.folder.mkdir(parents=True, exist_ok=True)
    path = plan.folder / "reproduce.json"
    atomic_write_json(path, {
        "table": plan.table, "seeds": plan.seeds, "gpus_per_job": plan.gpus, "launcher": launcher,
        "budgets": {b: {"budget": v, "how": how} for b, (v, how) in plan.budgets.items()},
        "jobs": [{"row": j.row, "kind": j.kind, "method": j.method or None, "base": j.base, "seed": j.seed,
                  "folder": str(j.folder), "flops": j.flops,
                  "results": [f for s in j.steps if s.kind == "eval" for f in s.produces]} for j in plan.jobs],
        "not_run": [{"row": label, "why": why} for label, why in plan.skipped],
        "abstract_plan": plan.header,  # an abstract-level table: the user's base and suites, what stays unknown
    })
    return path


def submit_array(commands: list[list[list[str]]], folder: Path, slurm: SlurmOptions,
                 cluster: str | None = None) -> list[Any]:
    """One array task per element of `commands` (its commands run in order by `run_commands`)."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install -e .[cluster]") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": slurm.gpus_per_node, "cpus_per_task": slurm.cpus_per_task,
                              "slurm_array_parallelism": slurm.array_parallelism}
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.account:
        params["slurm_account"] = slurm.account
    executor.update_parameters(**params)
    return executor.map_array(run_commands, commands)
