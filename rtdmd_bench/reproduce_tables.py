"""`rtdmd-bench reproduce TABLE`: the runs and evaluations behind a published table (results/paper/).

A table's rows that this project can train (a known method on a known base) become training runs,
one per seed, every run on its base at ONE matched FLOP budget: the official RTDMD recipe's
(`train.budget` of `rtdmd` on that base, i.e. rtdmd_bench/recipes/<base>.yaml `_all`: the official
run's FLOPs as `plan` counts them), or `--budget`. Teacher rows become `eval --base` jobs with the
teacher's multi-step sampler (Euler, the row's NFE as steps, the base's default guidance: the tables
do not state these, so they are this module's choice and are printed). Every run and teacher is
scored with the suites the table's metrics name in `computed_by` (one `eval` per group of suites
sharing their `--set`), which fix the table's protocol: prompt files, resolution, sampler, seed and
images per prompt. Rows that cannot be run (a base or method this project does not have, a
third-party model) are listed with the table's own reason. An abstract-level table (no base, no
protocol) is planned by `reproduce_abstract` on the `--base` and `--suite`s the user names.
GPU-hours of a run: `run_gpu_hours` (a recorded step time per stage when benchmarks/step_cost.py has
one for that base, method, stage and dtype on an H100, else plan's estimate; the source is printed).

Resuming: a run is done when its folder holds result.json and the config.yaml the grid asks for
now; an evaluation is done when RUN/eval/<suite>.json exists and is newer than result.json (else it
scored an earlier checkpoint); a teacher's when its folder's teacher_job.yaml (base config, sampler,
steps, guidance) is the one asked for and the result exists. A folder made with another config is
moved aside (`reproduce.set_aside_if_stale`) before it runs again; a dry run only says it would be.
Running the jobs (local, torchrun, slurm) is `reproduce_launch`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rtdmd_bench.errors import UserError
from rtdmd_bench.step_costs import RECORD_DIR

TEACHER_SAMPLER = "euler"
"""Teacher rows: Euler on the base's scheduler schedule (RTDMD's normal mode) for the row's NFE steps."""
TEACHER_JOB = "teacher_job.yaml"
"""In a teacher folder: the base config and sampler its evaluation used (the reuse check)."""
State = Literal["new", "resume", "stale", "done"]


@dataclass(frozen=True)
class Step:
    """One command of a job: `argv` after `rtdmd-bench`."""

    kind: Literal["train", "eval"]
    argv: tuple[str, ...]
    state: State
    """new: never started; resume: started, continues; stale: made with another config, set aside
    first; done: skipped."""
    produces: tuple[str, ...]  # files it writes (result.json, eval/<suite>.json)


@dataclass(frozen=True)
class Job:
    """One row of the grid (a run with its evaluations, or a teacher's evaluation): one array task."""

    row: str  # the table's row label
    kind: Literal["run", "teacher"]
    method: str  # method key, or "" for a teacher
    base: str
    seed: int | None
    folder: Path
    steps: tuple[Step, ...]
    flops: float | None  # training FLOPs (the matched budget); None: a teacher, or a budget in teacher forwards
    gpu_hours: float | None  # H100 GPU-hours of the training FLOPs (`run_gpu_hours`)
    memory_per_gpu: float | None  # bytes, plan.compute_plan's estimate; None off the real bases
    config: dict[str, Any] = field(default_factory=dict)  # what the folder's config must equal
    config_file: str = "config.yaml"
    note: str = ""  # why a folder would be set aside
    gpu_hours_from: str = ""  # "recorded: <file> (...)" or "estimated: ..." (per stage for rtdmd)

    @property
    def todo(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.state != "done")


@dataclass
class TablePlan:
    table: str  # reference id
    title: str
    folder: Path  # runs go under it
    seeds: int
    gpus: int
    budgets: dict[str, tuple[str, str]]  # base -> (budget as given to train, how it was chosen)
    jobs: list[Job]
    skipped: list[tuple[str, str]]  # (row label, why not run)
    protocol: list[str]  # lines: each column's suites, prompts, images per prompt, seed; the sampler
    prompt_files: list[tuple[str, str, bool]]  # (name, cached path, present and verified)
    weights: list[tuple[str, str, bool]]  # (hub id or what, used by, present)
    header: list[str] = field(default_factory=list)  # printed first: an abstract-level plan's choices and unknowns


def _unknown(row: dict[str, Any], key: str, fallback: str) -> str:
    return (row.get("unknown") or {}).get(key) or fallback


def suite_groups(doc: dict[str, Any]) -> list[tuple[tuple[str, ...], list[tuple[str, str]]]]:
    """The table's suites from its metrics' `computed_by`, grouped by their --set options:
    [(set options, [(registry name, result name)])], in the table's order, each once."""
    groups: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for metric in doc["metrics"].values():
        for c in metric.get("computed_by") or ():
            entry = (c["registry"], c["suite"])
            members = groups.setdefault(tuple(c.get("set") or ()), [])
            if entry not in members:
                members.append(entry)
    return list(groups.items())


def protocol_lines(doc: dict[str, Any]) -> list[str]:
    """What the table's evaluation fixes, column by column, and the samplers the jobs use."""
    from suites import rtdmd_protocol as p

    lines = []
    for m in doc["metrics"].values():
        if not m.get("computed_by"):
            continue
        pr = m.get("prompts") or {}
        used = pr.get("lines_used") or " or ".join(map(str, pr.get("lines_used_candidates") or [])) or "?"
        suites = ", ".join(f"{c['suite']} (--suite {c['registry']} {' '.join('--set ' + s for s in c['set'])})"
                           f" -> {c['metric']}" for c in m["computed_by"])
        lines.append(f"{m['column']}: {suites}; prompts {pr.get('name', '?')} ({pr.get('lines', '?')} lines, "
                     f"{used} used), {m.get('images_per_prompt')} image(s) per line, seed {m.get('seed')}")
    if any(reg.startswith("rtdmd-") for _, members in suite_groups(doc) for reg, _ in members):
        lines.append(f"students: the suites' RTDMD protocol: {p.STEPS} CPS steps, eta {p.ETA}, guidance {p.GUIDANCE}, "
                     f"seed {p.SEED}, {p.RESOLUTION} px on every real base, bf16 uint8 rounding")
    else:
        lines.append("students: each method's own few-step sampler, the suites' prompts and seeds")
    lines.append(f"teachers: {TEACHER_SAMPLER} sampler with the row's NFE as steps and the base's default "
                 "guidance (the table states neither: this module's choice), same suites, prompts and seeds")
    return lines


def memory_per_gpu(method: str, base: str, cfg: Any, gpus: int) -> float | None:
    """plan.compute_plan's per-GPU memory (bytes) for the run's micro-batch; None off the real bases."""
    from rtdmd_bench.bases.real_configs import REAL_BASES
    from rtdmd_bench.plan import WEIGHT_BYTES

    if base not in REAL_BASES:
        return None
    precision = cfg.base.weights_dtype if cfg.base.weights_dtype in WEIGHT_BYTES else "bf16"
    micro = math.ceil(cfg.train.batch_size / (gpus * cfg.train.micro_batches))
    return _plan_memory(method, base, precision, cfg.train.parallel, gpus, micro)


@functools.lru_cache(maxsize=None)
def _plan_memory(method: str, base: str, precision: str, parallel: str, gpus: int, micro: int) -> float:
    """Cached: a meta-device build of the base per call (about a second each)."""
    from rtdmd_bench.plan import compute_plan

    p = compute_plan(method, base, precision, parallel, gpus, micro_batch=micro, measure_costs=False)
    return float(sum(p.memory_per_gpu.values()))


def stale_note(folder: Path, cfg: dict[str, Any], config_file: str = "config.yaml") -> str:
    """'' if `folder` is absent or holds `config_file` equal to `cfg`; else why it would be set aside
    (`reproduce.set_aside_if_stale` without moving anything)."""
    from rtdmd_bench.reproduce import _comparable, differences, with_defaults

    found = folder / config_file
    if not folder.exists():
        return ""
    if not found.exists():
        return f"{folder}: no {config_file} to compare"
    diff = differences(_comparable(with_defaults(yaml.safe_load(found.read_text()))), _comparable(cfg))
    return f"{folder}: config changed ({'; '.join(diff[:4])})" if diff else ""


def _eval_steps(target: list[str], folder: Path, groups: list[Any], fresh: bool, after: Path | None = None) -> list[Step]:
    """One `eval` per suite group with the suites whose result is missing (all of them when `fresh`);
    a result older than `after` (a run's result.json: made from an earlier checkpoint) counts as missing."""
    def done(res: str) -> bool:
        path = folder / "eval" / f"{res}.json"
        return (not fresh and path.exists()
                and (after is None or path.stat().st_mtime >= after.stat().st_mtime))

    steps = []
    for sets, members in groups:
        missing = [(reg, res) for reg, res in members if not done(res)]
        finished = [(reg, res) for reg, res in members if (reg, res) not in missing]
        if finished:
            steps.append(Step("eval", (), "done", tuple(f"eval/{res}.json" for _, res in finished)))
        if missing:
            argv = ["eval", *target, *[x for reg, _ in missing for x in ("--suite", reg)],
                    *[x for s in sets for x in ("--set", s)]]
            steps.append(Step("eval", tuple(argv), "new", tuple(f"eval/{res}.json" for _, res in missing)))
    return steps


def run_gpu_hours(method: str, base: str, cfg: Any, flops: float, gpus: int,
                  recorded_dir: Path = RECORD_DIR, gpu: str = "h100") -> tuple[float, str]:
    """(GPU-hours, where from) of a run spending `flops`: `plan.stage_gpu_hours` per stage, i.e. a
    recorded step time of this base, method, stage and weights dtype on `gpu` when
    benchmarks/step_cost.py has one, else plan's estimate. A two-stage method (rtdmd) splits the
    budget by its resolved `method.stage1_fraction`, as training does; every other method is one
    stage. Samples per GPU per step (for the record's batch note): train.batch_size / gpus, and
    method.stage2_batch_size / gpus in stage 2."""
    from rtdmd_bench.plan import WEIGHT_BYTES, stage_gpu_hours

    precision = getattr(cfg.base, "weights_dtype", "bf16")
    precision = precision if precision in WEIGHT_BYTES else "bf16"
    fraction = getattr(cfg.method, "stage1_fraction", None)
    batches = [cfg.train.batch_size]
    shares = [flops] if fraction is None else [fraction * flops, (1 - fraction) * flops]  # (stages,)
    if fraction is not None:
        batches.append(getattr(cfg.method, "stage2_batch_size", 0) or cfg.train.batch_size)
    hours, sources = 0.0, []
    for stage, (share, batch) in enumerate(zip(shares, batches), start=1):
        h, source = stage_gpu_hours(share, base, gpu, method, stage, precision, recorded_dir, math.ceil(batch / gpus))
        hours += h
        sources.append(source)
    if fraction is None:
        return hours, sources[0]
    split = f"{fraction:.4g} / {1 - fraction:.4g} of the budget by method.stage1_fraction"
    if len(set(sources)) == 1:
        return hours, f"stages 1 and 2 ({split}), each {sources[0]}"
    return hours, f"stages 1 and 2 ({split}): " + "; ".join(f"stage {i} {s}" for i, s in enumerate(sources, start=1))


def run_job(row: str, method: str, base: str, seed: int, budget: str, root: Path, groups: list[Any],
            gpus: int, recorded_dir: Path = RECORD_DIR) -> Job:
    """A row's training run for one seed, with its evaluations, in root/<method>-<base>-s<seed>."""
    from rtdmd_bench.compute import parse_budget
    from rtdmd_bench.config import resolve_config

    run_id = f"{method}-{base}-s{seed}"
    cfg = resolve_config(method, base, [f"train.budget={budget}", f"run.seed={seed}"])
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_id=run_id))  # as `train --run-id` sets it
    folder = root / run_id
    want = cfg.to_dict()
    note = stale_note(folder, want)
    if note:
        state: State = "stale"
    elif (folder / "result.json").exists():
        state = "done"
    elif (folder / "config.yaml").exists():
        state = "resume"
    else:
        state = "new"
    argv = (["train", "--resume", str(folder)] if state == "resume" else
            ["train", "--method", method, "--base", base, "--seed", str(seed), "--budget", budget,
             "--out", str(root), "--run-id", run_id])
    steps = [Step("train", tuple(argv) if state != "done" else (), state, ("result.json",))]
    # A run not finished yet is evaluated again once it is (any result there is of an earlier checkpoint).
    steps += _eval_steps(["--run", str(folder)], folder, groups, fresh=state != "done", after=folder / "result.json")
    b = parse_budget(budget)
    flops = b.amount if b.unit == "flops" else None
    hours, source = (run_gpu_hours(method, base, cfg, flops, gpus, recorded_dir) if flops is not None
                     else (None, "a budget in teacher forwards: no FLOPs to turn into GPU-hours"))
    return Job(row, "run", method, base, seed, folder, tuple(steps), flops, hours,
               memory_per_gpu(method, base, cfg, gpus), want, "config.yaml", note, source)


def teacher_job(row: str, base: str, nfe: int, root: Path, groups: list[Any]) -> Job:
    """A teacher row: `eval --base` with its multi-step sampler, results in root/teacher-<base>-<sampler><nfe>."""
    from rtdmd_bench.config import resolve_config

    base_cfg = resolve_config("dmd2", base, []).to_dict()["base"]  # the base section does not depend on the method
    guidance = base_cfg.get("default_cfg")
    folder = root / f"teacher-{base}-{TEACHER_SAMPLER}{nfe}"
    want = {"base": base, "base_config": base_cfg, "sampler": TEACHER_SAMPLER, "steps": nfe, "guidance": guidance}
    want = yaml.safe_load(yaml.safe_dump(want, sort_keys=False))  # as the job file holds it (tuples as lists)
    note = stale_note(folder, want, TEACHER_JOB)
    target = ["--base", base, "--teacher-sampler", TEACHER_SAMPLER, "--teacher-steps", str(nfe), "--out", str(folder)]
    if guidance is not None:
        target += ["--teacher-cfg", str(guidance)]
    steps = _eval_steps(target, folder, groups, fresh=bool(note))
    return Job(row, "teacher", "", base, None, folder, tuple(steps), None, None, None, want, TEACHER_JOB, note)


def table_budget(base: str, budget: str | None) -> tuple[str, str]:
    """(budget, how chosen): --budget, else the official RTDMD recipe's on `base`."""
    from rtdmd_bench.compute import parse_budget
    from rtdmd_bench.config import resolve_config

    if budget is not None:
        parse_budget(budget)
        return budget, "--budget"
    official = str(resolve_config("rtdmd", base, []).train.budget)
    return official, (f"the official RTDMD recipe's (rtdmd_bench/recipes/{base}.yaml train.budget: the official "
                      "run's FLOPs as plan counts them), for every method on this base")


def classify_rows(doc: dict[str, Any]) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """(trainable rows, teacher rows, [(label, why not run)]) by the rows' base_key / method_key."""
    from rtdmd_bench import registry

    bases, methods = registry.table("bases"), registry.table("methods")
    train, teachers, skipped = [], [], []
    for row in doc["rows"]:
        base, method = row.get("base_key"), row.get("method_key")
        if base is None:
            skipped.append((row["label"], "base unknown: " + _unknown(row, "base_key", "not stated")))
        elif base not in bases:
            skipped.append((row["label"], f"base {base!r} is not a base of this project"))
        elif row["role"] == "teacher":
            if row.get("nfe"):
                teachers.append(row)
            else:
                skipped.append((row["label"], "teacher steps unknown: " + _unknown(row, "nfe", "NFE not stated")))
        elif method is None:
            skipped.append((row["label"], "method unknown: " + _unknown(row, "method_key", "not stated")))
        elif method not in methods:
            skipped.append((row["label"], f"method {method!r} is not a method of this project"))
        else:
            train.append(row)
    return train, teachers, skipped


def build_plan(table: str | Path, seeds: int = 1, budget: str | None = None, runs_dir: Path = Path("runs/reproduce"),
               gpus: int = 8, base: str | None = None, suites: tuple[str, ...] | list[str] = (),
               teacher_steps: int | None = None, recorded_dir: Path = RECORD_DIR) -> TablePlan:
    """The grid of a reference table (module docstring); a UserError when nothing of it can be run.
    An abstract-level table needs `base` and `suites` (`reproduce_abstract`); a full table fixes them."""
    from rtdmd_bench.references import load_reference, reference_path
    from rtdmd_bench.reproduce_needs import prompt_files_needed, weights_needed

    if seeds < 1 or gpus < 1:
        raise UserError(f"--seeds and --gpus-per-node must be >= 1, got {seeds} and {gpus}")
    doc = load_reference(table)
    if doc["level"] == "abstract":
        from rtdmd_bench.reproduce_abstract import build_abstract_plan

        return build_abstract_plan(doc, base, list(suites), seeds, budget, runs_dir, gpus, teacher_steps, recorded_dir)
    if base is not None or suites or teacher_steps is not None:
        raise UserError(f"--base, --suite and --teacher-steps apply to an abstract-level table; {doc['id']} fixes "
                        "its rows' bases and teacher steps and its columns' suites")
    groups = suite_groups(doc)
    train, teachers, skipped = classify_rows(doc)
    why = []
    if not groups:
        why.append("no suite of this project computes its columns (every metric's computed_by is unknown: "
                   + "; ".join(f"{k}: {(m.get('unknown') or {}).get('computed_by', 'not given')}"
                               for k, m in doc["metrics"].items()) + ")")
    if not train and not teachers:
        why.append("no row can be run (" + "; ".join(f"{label}: {r}" for label, r in skipped) + ")"
                   if skipped else "the table has no rows")
    if why:
        raise UserError(f"cannot reproduce {doc['id']} ({doc['level']}-level): " + "; and ".join(why)
                        + f". Nothing to plan; its figures stay in {reference_path(table)}.")
    root = Path(runs_dir) / doc["id"]
    budgets = {b: table_budget(b, budget) for b in dict.fromkeys(r["base_key"] for r in train)}
    jobs = [teacher_job(r["label"], r["base_key"], int(r["nfe"]), root, groups) for r in teachers]
    jobs += [run_job(r["label"], r["method_key"], r["base_key"], s, budgets[r["base_key"]][0], root, groups, gpus,
                     recorded_dir) for r in train for s in range(seeds)]
    return TablePlan(doc["id"], doc["title"], root, seeds, gpus, budgets, jobs, skipped, protocol_lines(doc),
                     prompt_files_needed(jobs, groups), weights_needed(jobs, groups))


def prepare_folders(plan: TablePlan) -> list[str]:
    """Before launching: stale folders moved aside, teacher folders given their job file. Returns notes."""
    from rtdmd_bench.reproduce import set_aside_if_stale
    from rtdmd_bench.runs import atomic_write_text

    notes = []
    for job in plan.jobs:
        if job.note:
            notes.append(set_aside_if_stale(job.folder, job.config, config_file=job.config_file))
        if job.kind == "teacher" and job.todo:
            job.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(job.folder / TEACHER_JOB, yaml.safe_dump(job.config, sort_keys=False))
    return [n for n in notes if n]
