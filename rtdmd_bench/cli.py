"""`rtdmd-bench`: train, evaluate and compare few-step distillation + RL methods at matched compute.

Every user-fixable problem prints one message, without a traceback, and exits with status 2: a usage
error (unknown option or command, a missing value or argument, text for a number, a value outside
an option's choices or range) as typer/click detect it, and a `UserError` the code raises (unknown
name, bad --set, a config value out of range, unparsable budget, not a run folder, corrupt
checkpoint, missing weights or prompt files). Closed sets of values are Literal types, so `--help`
lists them and the parser refuses anything else.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape

from rtdmd_bench import registry
from rtdmd_bench.config import Parallelism
from rtdmd_bench.errors import NonFiniteLoss, UserError

console = Console(stderr=False)
err = Console(stderr=True)

app = typer.Typer(
    name="rtdmd-bench",
    help=("Train and evaluate few-step text-to-image distillation + RL methods (RTDMD, AC-DMD, "
          "DMD2, DMD+RL, GDMD, GNDM) side by side on the same base, prompts, metrics and FLOP "
          "budget.\n\nStart with `rtdmd-bench list`, then e.g. `rtdmd-bench train --method dmd2 "
          "--base toy2d --budget 2e11` and `rtdmd-bench reproduce toy`."),
    no_args_is_help=True, add_completion=False, rich_markup_mode=None,
)


def _version(value: bool) -> None:
    """`--version`: the package version and the git commit of the code, then exit."""
    if value:
        from rtdmd_bench import __version__
        from rtdmd_bench.runs import git_commit

        commit = git_commit()
        console.print(f"rtdmd-bench {__version__}" + ("" if commit == "unknown" else f" (git {commit})"),
                      highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version (and git commit) and exit.")) -> None:
    """Train and evaluate few-step distillation + RL methods at matched compute."""


def _folder(path: Path, option: str) -> Path:
    """`path` as a folder to write into: refused (before anything is written) when it, or the
    nearest part of it that exists, is not a folder."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise UserError(f"{option} {path} is not a folder{where}: pass a folder to write into")
    return path


SET_HELP = ("Override a config field, repeatable: SECTION.FIELD=VALUE with SECTION one of run, train, "
            "method, base, reward.<name> (e.g. --set method.lr_generator=1e-4). Unknown keys are errors "
            "that list the valid ones; `rtdmd-bench config METHOD BASE` shows every field.")


Kind = Literal["methods", "bases", "suites", "rewards"]
"""`list` choices: `registry.KINDS` spelled here for --help (a test checks the two agree)."""


@app.command("list")
def list_cmd(kind: Optional[Kind] = typer.Argument(None, help="What to list (default: all).")) -> None:
    """List registered methods, bases, suites and rewards with one line each (imports no model code)."""
    from rich.table import Table

    kinds = [kind] if kind else list(registry.KINDS)
    for k in kinds:
        t = Table(title=k, show_header=False, title_justify="left")
        t.add_column("name", style="bold cyan")
        t.add_column("what")
        for name, entry in sorted(registry.table(k).items()):
            t.add_row(name, entry.summary)
        if k == "suites":
            for name, members in registry.SUITE_GROUPS.items():
                t.add_row(name, "group: " + ", ".join(members))
        console.print(t)


@app.command("config")
def config_cmd(method: str = typer.Argument(..., help="method name"), base: str = typer.Argument(..., help="base name"),
               set_: list[str] = typer.Option([], "--set", help=SET_HELP),
               no_recipe: bool = typer.Option(False, help="Show defaults without the base's recipe.")) -> None:
    """Print the fully resolved config of METHOD on BASE (recipe + overrides), with each field's doc."""
    import dataclasses

    from rich.table import Table

    from rtdmd_bench.config import field_docs, resolve_config

    cfg = resolve_config(method, base, set_, use_recipe=not no_recipe)
    t = Table(title=f"{method} on {base}")
    for col in ("key", "value", "meaning"):
        t.add_column(col)
    sections = [("run", cfg.run), ("train", cfg.train), ("method", cfg.method), ("base", cfg.base)]
    sections += [(f"reward.{n}", c) for n, c in cfg.rewards.items()]
    while sections:
        name, obj = sections.pop(0)
        docs = field_docs(type(obj))
        nested = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):  # e.g. rtdmd's method.stage1: list its fields after
                nested.append((f"{name}.{f.name}", value))
            else:
                t.add_row(f"{name}.{f.name}", repr(value), docs.get(f.name, ""))
        sections[:0] = nested
    console.print(t)


def _progress(description: str, disable: bool = False):
    """A rich progress bar on stderr (`disable`: ranks other than 0 of a multi-process run), on the
    console every bar shares, so bars opened inside (building the digits networks) nest below it."""
    from rtdmd_bench.progress import progress_bar

    return progress_bar(disable=disable)


@app.command()
def train(
    method: str = typer.Option(None, help="Method name (`rtdmd-bench list methods`)."),
    base: str = typer.Option(None, help="Base name (`rtdmd-bench list bases`)."),
    budget: Optional[str] = typer.Option(None, help="FLOP budget: 2e12, 2T, 500G, or teacher-forward equivalents like 20ktf."),
    seed: Optional[int] = typer.Option(None, help="Training seed."),
    rewards: Optional[str] = typer.Option(None, help="Rewards as NAME[=WEIGHT],... (default: the base recipe's)."),
    beta: Optional[float] = typer.Option(None, help="Tilt temperature beta of p* ∝ p_teacher exp(r/beta)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    base_path: Optional[Path] = typer.Option(None, help="Local folder with the base's weights (real bases)."),
    out: Path = typer.Option(Path("runs"), help="Folder that holds run folders."),
    run_id: Optional[str] = typer.Option(None, help="Run folder name (default: method-base-seed-time)."),
    resume: Optional[Path] = typer.Option(None, help="Resume the run in this folder from its latest checkpoint."),
    eval_: list[str] = typer.Option([], "--eval", help="Suites to evaluate when training ends (repeatable)."),
) -> None:
    """Train METHOD on BASE until the FLOP budget is spent; checkpoints, metrics and result.json go to
    runs/<run-id>/. `--resume RUN` continues a killed run to the same result. Under `accelerate launch`
    or `torchrun` every process trains on its share of the global batch (DDP; FSDP2 with
    --set train.parallel=fsdp) and the budget counts all of them."""
    from rtdmd_bench import distributed
    from rtdmd_bench.compute import format_flops, parse_budget
    from rtdmd_bench.config import from_dict, resolve_config
    from rtdmd_bench.runs import RunDir
    from rtdmd_bench.train import train as train_loop

    if resume is not None:
        run = RunDir.open(resume)
        cfg = from_dict(run.read_config(), str(run.path / "config.yaml"))
        run_dir = run.path
        if any(x is not None for x in (method, base, budget, seed, rewards, beta)) or set_:
            raise UserError("--resume continues a run with its saved config; drop the other options")
    else:
        if not method or not base:
            raise UserError("give --method and --base (see `rtdmd-bench list`), or --resume RUN")
        overrides = list(set_)
        for key, value in (("train.budget", budget), ("run.seed", seed), ("run.beta", beta)):
            if value is not None:
                overrides.append(f"{key}={value}")
        if rewards is not None:
            overrides.append(f"run.rewards={rewards}")
        if base_path is not None:
            overrides.append(f"base.base_path={base_path}")
        cfg = resolve_config(method, base, overrides)
        parse_budget(cfg.train.budget)  # fail before anything is built or written
        rid = run_id or f"{method}-{base}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        if distributed.world_size_from_env() > 1:  # every rank must write to rank 0's folder
            distributed.setup_for(cfg)
            rid = distributed.agree(rid)
        import dataclasses
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_id=rid))
        run_dir = _folder(out, "--out") / rid
        if (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir} or another --run-id")
        distributed.setup_for(cfg).barrier()  # checked before written
    par = distributed.setup_for(cfg)
    if par.mode == "fsdp" and par.shard.world > 1 and eval_:
        raise UserError("--eval does not work with train.parallel=fsdp (evaluation shards prompts and needs "
                        "whole models): run `rtdmd-bench eval --run RUN` after training")
    suites = None
    if eval_:  # their prompts and scorer models are checked now, not after training
        from rtdmd_bench.evaluate import build_suites

        suites = build_suites(eval_)
    main = par.main
    if main:
        from rtdmd_bench.plan import run_summary

        for line in run_summary(cfg, par.shard.world):
            console.print(line, highlight=False)
    with _progress("train", disable=not main) as prog:
        task = prog.add_task(f"{cfg.run.method} on {cfg.run.base}", total=1.0, info="")

        def on_progress(step: int, used: float, total: float) -> None:
            prog.update(task, completed=min(1.0, used / total), info=f"step {step} · {format_flops(used)}/{format_flops(total)} FLOPs")

        result = train_loop(cfg, run_dir, resume=resume is not None, on_progress=on_progress)
    if main:
        console.print(f"[green]done[/green]: {run_dir}  steps {result['steps']}  "
                      f"FLOPs {format_flops(result['compute']['used_flops'])}  wall {result['wall_time_s']:.1f}s"
                      + (f"  processes {result['processes']}" if result["processes"] > 1 else ""))
    if eval_:
        from rtdmd_bench.evaluate import evaluate_suites

        for res in evaluate_suites(eval_, run=run_dir, built_suites=suites):
            _print_metrics(res)


def _parse_suite_sets(items: list[str]) -> dict[str, str]:
    """`suite.FIELD=V` (every suite) and `NAME.FIELD=V` (only suite NAME) -> {"FIELD": V, "NAME.FIELD": V}
    as `evaluate.suite_overrides` reads them."""
    from rtdmd_bench.config import split_override

    out = {}
    for item in items:
        key, value = split_override(item)
        head = key.split(".", 1)[0]
        if "." not in key or (head != "suite" and head not in registry.table("suites")):
            raise UserError(f"eval --set {item!r}: keys start with 'suite.' (every suite, e.g. suite.limit=64) or "
                            "with a suite's name (that suite only, e.g. rtdmd-ocr.scoring.python=PATH)")
        out[key[len("suite."):] if head == "suite" else key] = value
    return out


def _print_metrics(res: dict[str, Any]) -> None:
    if not res:  # ranks other than 0 generate their shard and leave the scoring to rank 0
        return
    from rich.table import Table

    t = Table(title=escape(f"{res['suite']} ({res['suite_version']})"))  # "[stand-in]" is not markup
    t.add_column("metric")
    t.add_column("value", justify="right")
    from rtdmd_bench.report import numeric_metrics

    for k, v in numeric_metrics(res["metrics"]).items():  # nested dicts (per-reward means) flattened
        t.add_row(k, f"{v:.4g}")
    console.print(t)


TeacherSampler = Literal["cps", "euler", "euler-pipeline", "euler-few-step"]
"""`eval --teacher-sampler` choices: `evaluate.SamplerKind` spelled here so that --help lists them
without importing torch (a test checks the two agree)."""


@app.command("eval")
def eval_cmd(
    suite: list[str] = typer.Option(..., "--suite", help="Suite name, repeatable (`rtdmd-bench list suites`)."),
    run: Optional[Path] = typer.Option(None, help="Run folder to evaluate (its EMA generator)."),
    base: Optional[str] = typer.Option(None, help="Evaluate this base's teacher instead of a run."),
    teacher_steps: int = typer.Option(4, min=1, help="With --base: teacher sampler steps."),
    teacher_sampler: TeacherSampler = typer.Option(
        "cps", help="With --base: cps = few-step CPS on the student's schedule; euler = Euler on the base's "
        "scheduler schedule (set_timesteps(N), RTDMD's normal mode); euler-pipeline = Euler on the schedule the "
        "diffusers pipeline sets (differs on FLUX); euler-few-step = Euler on the few-step formula."),
    teacher_cfg: Optional[float] = typer.Option(
        None, help="With --base: teacher guidance scale (default: the base's default_cfg; 1 = unguided)."),
    set_: list[str] = typer.Option([], "--set", help="Suite config override suite.FIELD=VALUE (every suite) or "
                                   "NAME.FIELD=VALUE (suite NAME only; repeatable)."),
    base_set: list[str] = typer.Option([], "--base-set", help="With --base: base config override base.FIELD=VALUE."),
    out: Path = typer.Option(Path("runs/teacher-eval"), help="With --base: output folder."),
    seed: Optional[int] = typer.Option(None, help="Evaluation seed (image j of prompt i uses noise seeded by (seed, i, j)); "
                                       "default: the suite's protocol seed (e.g. 42 for DrawBench), else 0."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt file for the suite(s) (same as --set suite.prompts=PATH)."),
    batch_size: int = typer.Option(256, min=1, help="Generation batch size (scores do not depend on it)."),
) -> None:
    """Evaluate a run (or a base's teacher) with suites; each suite's JSON is written as soon as it finishes,
    and generated images are cached so a second suite on the same prompts generates nothing new."""
    import os

    from rtdmd_bench.evaluate import SamplerSpec, evaluate_suites, expand_suites
    from rtdmd_bench.progress import EvalBars, progress_bar

    out = _folder(out, "--out")
    sets = _parse_suite_sets(set_)
    if prompts is not None:
        sets["prompts"] = str(prompts)
    teacher = None
    if base is not None:
        teacher = SamplerSpec(role="teacher", num_steps=teacher_steps, kind=teacher_sampler, cfg=teacher_cfg, tag=base)
    main = int(os.environ.get("RANK", "0")) == 0  # the other processes of a process group show nothing
    with progress_bar(counts=True, disable=not main) as bar:
        bars = EvalBars(bar, len(expand_suites(suite)))
        for res in evaluate_suites(suite, run=run, base=base, teacher=teacher, overrides=sets, base_overrides=base_set,
                                   out=out, seed=seed, batch_size=batch_size, progress=bars):
            _print_metrics(res)


@app.command()
def sample(
    run: Path = typer.Option(..., metavar="RUN",
                             help="Run folder: its EMA generator (latest checkpoint) with its own sampler and steps."),
    prompt: list[str] = typer.Option([], "--prompt", metavar="TEXT",
                                     help="A prompt, repeatable (default: 4 of the base's training prompts)."),
    prompts: Optional[Path] = typer.Option(None, metavar="FILE", help="Prompt file instead of --prompt: .txt one a "
                                           "line, .json a list, .jsonl objects with \"prompt\"."),
    n: int = typer.Option(4, "--n", "-n", metavar="N", help="Images per prompt."),
    seed: int = typer.Option(0, help="Image j of prompt i uses noise seeded by (seed, i, j), as `eval` does."),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="Output folder (default "
                                       "RUN/sampled/<checkpoint>-seed<S>-n<N>-<prompts hash>)."),
    batch_size: int = typer.Option(64, help="Generation batch size (the images do not depend on it)."),
) -> None:
    """Write samples of a trained run: one PNG per image, a grid with a row per prompt and
    manifest.json (file -> prompt, seed, index; run, checkpoint, sampler); for 2-D samples (toy2d)
    points.csv and a scatter plot instead of images."""
    from rtdmd_bench.sample import sample_run

    manifest = sample_run(run, prompt, prompts, n, seed, out, batch_size, console=err)
    shown = manifest.get("grid") or manifest.get("scatter")
    files = f"{shown}, {manifest.get('points') or 'images/'}, manifest.json"
    console.print(f"wrote {len(manifest['samples'])} samples of {len(manifest['prompts'])} prompts to "
                  f"{manifest['out']} ({files})", markup=False, highlight=False, soft_wrap=True)


@app.command("geneval-agreement")
def geneval_agreement_cmd(
    run: Optional[Path] = typer.Option(None, help="Run folder: its GenEval samples (cached by `eval`, else generated)."),
    images: Optional[Path] = typer.Option(None, help="Folder in GenEval's layout (<idx>/metadata.jsonl + samples/NNNN.png)."),
    set_: list[str] = typer.Option([], "--set", help="GenEval suite override suite.FIELD=VALUE, e.g. "
                                   "suite.official.python=PATH, suite.official.checkout=DIR, suite.official.detector=DIR."),
    out: Optional[Path] = typer.Option(None, help="JSON output (default RUN/eval/geneval-agreement.json or "
                                       "IMAGES/geneval-agreement.json)."),
    seed: Optional[int] = typer.Option(None, help="With --run: evaluation seed, as for `eval` (default 0)."),
    batch_size: int = typer.Option(256, min=1, help="With --run: generation batch size."),
) -> None:
    """Score the same GenEval images with the suite's transformers detector and with GenEval's own
    scorer (needs its environment and a GPU); print per-tag agreement, Cohen's kappa and the
    difference of the GenEval figures, and write them as JSON (format: suites/geneval_agreement.py)."""
    from rtdmd_bench.agreement import agreement_study
    from suites.geneval_agreement import format_table

    result, path = agreement_study(run, images, _parse_suite_sets(set_), out, seed, batch_size)
    console.print(format_table(result), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {path}", markup=False, highlight=False)


ExportFormat = Literal["lora", "pipeline"]
"""`export --format` choices (`rtdmd_bench.export.ExportFormat`, spelled here so --help needs no torch)."""


@app.command()
def export(
    run: Path = typer.Option(..., help="Run folder whose student (EMA generator, latest checkpoint) to export."),
    format_: ExportFormat = typer.Option(..., "--format", help="lora = diffusers LoRA file for "
                                         "pipe.load_lora_weights(DIR); pipeline = a whole diffusers pipeline, LoRA fused."),
    out: Path = typer.Option(..., help="New (or empty) folder to write; export_info.json there gives the call."),
) -> None:
    """Export a run's student on a diffusers base to the diffusers format, with export_info.json naming
    the pipeline call that reproduces the suite's deterministic few-step sampler."""
    from rtdmd_bench.export import export_run

    info = export_run(run, format_, out)
    console.print(f"wrote {info['format']} export of {info['run_id']} ({info['checkpoint']}) to {out}", markup=False)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (seeds of the same config are grouped) or teacher evaluation folders."),
    suite: Optional[str] = typer.Option(None, help="Only this suite's metrics."),
    reference: Optional[str] = typer.Option(None, help="A published table (id in results/paper, or a .json path) to show beside the runs."),
    baseline: Optional[str] = typer.Option(None, help="Row the paired differences are taken against (a label or method; default: teacher, else dmd2, else the first)."),
    allow_unmatched: bool = typer.Option(False, "--allow-unmatched", help="Show rows whose FLOP budgets (>2%) or evaluation settings differ, flagged, instead of refusing."),
    resamples: int = typer.Option(10000, min=100, help="Paired bootstrap resamples over prompts."),
    bootstrap_seed: int = typer.Option(0, help="Seed of the paired bootstrap."),
    out: Path = typer.Option(Path("results/compare"), help="Folder for the Markdown/JSON/CSV/LaTeX tables."),
    name: str = typer.Option("compare", help="File stem of the written tables."),
) -> None:
    """Per base and suite: mean ± 95% seed CI, published rows beside them (--reference), and paired
    bootstrap differences over prompts to a baseline row; refuses unmatched budgets or settings and
    different metric definitions in one column."""
    from rtdmd_bench import compare_tables
    from rtdmd_bench.compare import build_sections
    from rtdmd_bench.references import load_reference

    out = _folder(out, "--out")
    ref = load_reference(reference) if reference else None
    sections = build_sections(runs, suite, ref, baseline, allow_unmatched, resamples, bootstrap_seed)
    for s in sections:
        for _, title, table in compare_tables.section_tables(s, ref):
            console.print(table.rich(title=f"{s.base} / {s.suite} - {title}"))
        for line in compare_tables.legend(s, ref):
            console.print(line, markup=False, soft_wrap=True)
    for p in compare_tables.write(sections, ref, out, name):
        console.print(f"wrote {p}", markup=False, soft_wrap=True)


@app.command()
def report(
    sources: list[str] = typer.Argument(..., help="Results folders (with table.csv, e.g. results/toy2d), run folders "
                                        "or folders of runs (one page per base), reference table ids or .json paths."),
    out: Path = typer.Option(Path("results/report"), help="Folder for the pages (<name>.html, <name>.md, index.html)."),
) -> None:
    """Write one self-contained HTML page (and a Markdown twin) per table: the table, reward vs
    fidelity with each method's Pareto front, metrics vs training FLOPs and sample grids."""
    from rtdmd_bench.html_report import write_report

    for p in write_report(sources, _folder(out, "--out")):
        console.print(f"wrote {p}", markup=False, highlight=False)


Benchmark = Literal["toy", "toy2d", "digits", "shapes", "cpu-all", "toy-beta"]
"""`reproduce` CPU benchmarks: `reproduce.GROUPS` spelled here for --help (a test checks the two agree).
Any other name is a reference table (results/paper/, `rtdmd_bench/reproduce_tables.py`)."""
Launcher = Literal["local", "torchrun", "slurm"]
"""`reproduce TABLE --launcher` choices (`reproduce_launch.Launcher`; a test checks the two agree)."""


@app.command()
def reproduce(
    what: str = typer.Argument("toy", metavar="BENCHMARK|TABLE", help=(
        "toy = toy2d + digits (CPU, the default); one of toy2d, digits, shapes (the compositional CPU base); "
        "cpu-all = toy2d + digits + shapes; toy-beta = every method on toy2d at several beta (not part of toy); "
        "or a published table of results/paper/ (rtdmd-sd3m-table1, rtdmd-flux2-4b-table2, ...) by id or .json path.")),
    out: Path = typer.Option(Path("results"), help="Where the tables and plots go (CPU benchmark)."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Seeds per method [default: 5 on the CPU benchmark; "
                                        "toy-beta: 2 per method and beta; a table: 1]."),
    workers: int = typer.Option(2, min=1, help="Parallel training processes (CPU benchmark; one torch thread each)."),
    runs_dir: Path = typer.Option(Path("runs/reproduce"), help="Where the runs go (resumable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="TABLE: print the plan (runs, FLOPs, GPU-hours, memory, "
                                 "files, commands) and run nothing."),
    budget: Optional[str] = typer.Option(None, help="TABLE: the matched FLOP budget of every run (default: the "
                                         "official RTDMD recipe's on the table's base)."),
    launcher: Launcher = typer.Option("local", help="TABLE: local = here, one command after another; torchrun = "
                                      "each command under torchrun; slurm = a submitit job array."),
    gpus_per_node: int = typer.Option(8, min=1, help="TABLE with torchrun/slurm: processes (GPUs) per job."),
    slurm_partition: str = typer.Option("", help="TABLE with slurm: partition (default: the cluster's)."),
    slurm_account: str = typer.Option("", help="TABLE with slurm: account."),
    timeout_min: int = typer.Option(4320, min=1, help="TABLE with slurm: time limit of one array task, minutes."),
    cpus_per_task: int = typer.Option(16, min=1, help="TABLE with slurm: CPUs per array task."),
    array_parallelism: int = typer.Option(16, min=1, help="TABLE with slurm: array tasks running at once."),
    base: Optional[str] = typer.Option(None, help="Abstract-level TABLE (required): the base every job runs on "
                                       "(the abstract states none)."),
    suite: Optional[list[str]] = typer.Option(None, help="Abstract-level TABLE (required, repeatable): a suite that "
                                              "scores every job (the abstract states no protocol)."),
    teacher_steps: Optional[int] = typer.Option(None, min=1, help="Abstract-level TABLE naming a teacher: its "
                                                "sampler's steps (default: the base's teacher NFE in a full table)."),
) -> None:
    """Train every method on the CPU benchmark under one matched FLOP budget, evaluate, and write
    tables (Markdown/CSV/LaTeX) and plots under results/; or, for a published TABLE, train its rows'
    methods at one matched budget and evaluate them and its teachers with the table's protocol
    (finished runs and evaluations are skipped, so a reproduction resumes)."""
    if what not in reproduce_groups():
        from rtdmd_bench.reproduce_launch import SlurmOptions, launch, render
        from rtdmd_bench.reproduce_tables import build_plan

        from rtdmd_bench.references import reference_ids

        if not what.endswith(".json") and what not in reference_ids():  # a usage error, as a bad choice is
            raise typer.BadParameter(f"{what!r} is neither a CPU benchmark ({', '.join(reproduce_groups())}) nor a "
                                     f"reference table ({', '.join(reference_ids())}) nor a table's .json file",
                                     param_hint="'BENCHMARK|TABLE'")
        gpus = 1 if launcher == "local" else gpus_per_node
        plan = build_plan(what, seeds or 1, budget, _folder(runs_dir, "--runs-dir"), gpus, base, suite or (),
                          teacher_steps)
        slurm = SlurmOptions(slurm_partition, gpus, timeout_min, cpus_per_task, array_parallelism, slurm_account)
        if dry_run:
            for line in render(plan, launcher, slurm):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        for job in launch(plan, launcher, slurm, console):
            console.print(f"submitted {job.job_id}", markup=False, highlight=False)
        return
    if dry_run or budget is not None or launcher != "local" or base or suite or teacher_steps:
        raise UserError("--dry-run, --budget, --launcher, --base, --suite and --teacher-steps apply to a published "
                        "table (reproduce TABLE); "
                        f"`reproduce {what}` is the embedded CPU benchmark")
    from rtdmd_bench.reproduce import reproduce as run_reproduce

    run_reproduce(what, _folder(out, "--out"), seeds, workers, _folder(runs_dir, "--runs-dir"), console)


def reproduce_groups() -> tuple[str, ...]:
    """The CPU benchmark names (`Benchmark`)."""
    from typing import get_args

    return get_args(Benchmark)


@app.command()
def prepare(what: Literal["digits", "shapes", "geneval-train"] = typer.Argument(
                ..., help="digits / shapes: cache the base's networks; geneval-train: write prompts to --out"),
            force: bool = typer.Option(False, help="digits / shapes: rebuild even if cached."),
            out: Optional[Path] = typer.Option(None, help="geneval-train: the jsonl file to write."),
            n: int = typer.Option(5000, min=1, help="geneval-train: number of prompts."),
            seed: int = typer.Option(0, help="geneval-train: seed of the draw."),
            exclude: Optional[Path] = typer.Option(None, help="geneval-train: evaluation metadata to leave out.")) -> None:
    """Build cached artefacts (training does it on first use) or the geneval-partial reward's prompts."""
    if what == "geneval-train":
        from rtdmd_bench.rewards.geneval_partial import write_training_metadata

        written = write_training_metadata(out, n, seed, exclude)
        console.print(f"wrote {written} GenEval-style training prompts to {out}", markup=False, soft_wrap=True)
        return
    if what == "shapes":
        from rtdmd_bench.bases.shapes import Shapes, prepare_shapes
        from rtdmd_bench.rewards.shapes import ShapesProxy, load_proxy

        info = {**prepare_shapes(Shapes.Config(), force=force),
                "proxy": load_proxy(ShapesProxy.Config().proxy, force=force)[1]}
    else:
        from rtdmd_bench.bases.digits import Digits, prepare_digits

        info = prepare_digits(Digits.Config(), force=force)
    for k, v in info.items():
        console.print(f"{k}: {v}")


PlanPrecision = Literal["bf16", "fp32"]
"""`plan --precision` choices: `plan.WEIGHT_BYTES` spelled here for --help (a test checks the two agree)."""

PlanGpu = Literal["h100", "a100"]
"""`plan --gpu` choices: `plan.GPU_PEAK_FLOPS` spelled here for --help (a test checks the two agree)."""


@app.command()
def plan(method: str = typer.Option(..., help="Method name."), base: str = typer.Option(..., help="Real base name."),
         precision: PlanPrecision = typer.Option("bf16", help="Weights and activations precision."),
         parallelism: Parallelism = typer.Option("ddp", help="ddp = whole model per GPU; fsdp = sharded."),
         num_gpus: int = typer.Option(8, min=1, help="GPUs."),
         gpu: PlanGpu = typer.Option("h100", help="The GPU of the GPU-hours (a step time benchmarks/step_cost.py "
                                     "recorded on it is used when there is one).")) -> None:
    """Estimate parameters per role, trainable LoRA parameters, memory per GPU and FLOPs of a real base
    (built on the meta device: no weights needed)."""
    registry.entry("methods", method)
    from rtdmd_bench.plan import main as plan_main

    plan_main(method=method, base=base, precision=precision, parallelism=parallelism, num_gpus=num_gpus, gpu=gpu)


def _usage_errors() -> tuple[type, ...]:
    """Usage errors' classes: click's, and typer's own root class since typer 0.29 raises a vendored
    copy of click's exceptions (`typer.TyperException`), which click's handler does not catch."""
    import click

    return (click.ClickException, getattr(typer, "TyperException", click.ClickException))


def _usage_message(e: Exception) -> str:
    """One line: the parser's message and where to read the command's help."""
    command = getattr(getattr(e, "ctx", None), "command_path", "")  # no context: an option's value is missing
    return f"{e.format_message()} (see `{command} --help`)" if command else f"{e.format_message()} (see --help)"  # type: ignore[attr-defined]


def _fail(kind: str, message: str, code: int) -> None:
    # soft_wrap: the message keeps its own lines (a terminal wraps them), so it stays one line to copy
    err.print(f"[bold red]{kind}:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point: user and usage errors become one message and exit status 2."""
    try:
        # standalone_mode=False: errors come here instead of typer's printing; no arguments = --help
        code = app(args=sys.argv[1:] or ["--help"], standalone_mode=False)
    except (UserError, registry.UnknownName) as e:
        _fail("stopped" if isinstance(e, NonFiniteLoss) else "error", str(e), 2)
    except KeyboardInterrupt:
        err.print("interrupted; resume with `rtdmd-bench train --resume RUN`")
        sys.exit(130)
    except _usage_errors() as e:  # usage errors carry exit code 2; other click errors (a file) 1
        _fail("error", _usage_message(e), e.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        _fail("error", "aborted", 1)
    else:  # `--help`, `--version` and typer.Exit(code) end here with their exit code
        if isinstance(code, int) and code:
            sys.exit(code)


if __name__ == "__main__":
    main()
