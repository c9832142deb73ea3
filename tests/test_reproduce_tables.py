"""`reproduce TABLE`: the grid of every published table, its dry run (FLOPs, GPU-hours, memory,
files, commands that the CLI parses back), resuming from finished folders, and the launchers
(torchrun commands; a submitit job array run by submitit's local and debug executors)."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import get_args

import click
import pytest
import typer
import yaml

from rtdmd_bench import cli, plan as plan_mod
from rtdmd_bench.errors import UserError
from rtdmd_bench.references import PAPER_DIR, reference_ids
from rtdmd_bench.reproduce_launch import Launcher, SlurmOptions, job_commands, launch, render, submit_array
from rtdmd_bench.reproduce_tables import Job, Step, TablePlan, build_plan, prepare_folders

ROOT = Path(__file__).resolve().parents[1]
# By hand from results/paper/*.json: rows with a method and base of this project, and teacher rows (base, NFE).
EXPECTED = {
    "rtdmd-sd3m-table1": ({("gdmd", "sd3"), ("rtdmd", "sd3")}, {("sd3", 100)}, {"R_dm"}),
    "rtdmd-flux2-4b-table2": ({("rtdmd", "flux2-4b")}, {("flux2-4b", 50), ("flux2-9b", 50)},
                              {"Z-Image 6B", "Z-Image-Turbo 6B", "FLUX.2 4B", "FLUX.2 9B", "Z-Image 6B w/ TDM-R1"}),
}


def recipe_budget(base: str) -> float:
    """The recipe's budget read from its YAML by hand (the second path to plan's FLOPs)."""
    return float(yaml.safe_load((ROOT / "rtdmd_bench" / "recipes" / f"{base}.yaml").read_text())["_all"]["train.budget"])


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, TablePlan]:
    runs = tmp_path_factory.mktemp("runs")
    return {t: build_plan(t, seeds=2, runs_dir=runs, gpus=8) for t in EXPECTED}


def test_every_reference_table_is_planned():
    from test_reproduce_abstract import ABSTRACT  # the abstract-level tables' plans are tested there

    assert set(reference_ids()) == set(EXPECTED) | set(ABSTRACT)  # a new table needs a line here


def test_the_grid_is_the_trainable_rows_times_seeds_and_the_teacher_rows(plans):
    for table, (runs, teachers, skipped) in EXPECTED.items():
        p = plans[table]
        assert {(j.method, j.base, j.seed) for j in p.jobs if j.kind == "run"} == {
            (m, b, s) for m, b in runs for s in (0, 1)}
        assert {(j.base, j.config["steps"]) for j in p.jobs if j.kind == "teacher"} == teachers
        assert {label for label, _ in p.skipped} == skipped


def test_every_run_gets_the_official_recipes_budget_and_plans_hours_and_memory(plans):
    for table, p in plans.items():
        for job in (j for j in p.jobs if j.kind == "run"):
            budget = recipe_budget(job.base)
            if job.seed:  # the same method and base as seed 0's: memory checked once
                assert job.memory_per_gpu == next(j for j in p.jobs if j.method == job.method and j.seed == 0).memory_per_gpu
                continue
            assert job.flops == budget and job.config["train"]["budget"] == str(p.budgets[job.base][0])
            assert job.gpu_hours == pytest.approx(budget / (989e12 * 0.35) / 3600)  # H100 peak x 35 %
            micro = 72 // 8  # the recipes' train.batch_size 72 over 8 GPUs, one micro-batch
            assert job.config["train"]["batch_size"] == 72 and job.config["train"]["micro_batches"] == 1
            full = plan_mod.compute_plan(job.method, job.base, "bf16", "ddp", 8, micro_batch=micro, measure_costs=False)
            assert job.memory_per_gpu == sum(full.memory_per_gpu.values())


def test_budget_option_overrides_every_run(tmp_path):
    p = build_plan("rtdmd-sd3m-table1", budget="3e19", runs_dir=tmp_path)
    assert {j.flops for j in p.jobs if j.kind == "run"} == {3e19}
    assert all("--budget" in j.steps[0].argv and "3e19" in j.steps[0].argv for j in p.jobs if j.kind == "run")
    with pytest.raises(UserError, match="cannot parse budget"):
        build_plan("rtdmd-sd3m-table1", budget="lots", runs_dir=tmp_path)


def test_each_job_evaluates_with_every_suite_of_the_tables_computed_by(plans):
    for table, p in plans.items():
        doc = json.loads((PAPER_DIR / f"{table}.json").read_text())
        wanted = {f"eval/{c['suite']}.json" for m in doc["metrics"].values() for c in m["computed_by"] or ()}
        for job in p.jobs:
            assert {f for s in job.steps if s.kind == "eval" for f in s.produces} == wanted


def _parse(argv: list[str]) -> click.Context:
    """Parse a printed command with the CLI's own parser (no command is run)."""
    group = typer.main.get_command(cli.app)
    parent = click.Context(group, info_name="rtdmd-bench")
    sub = group.get_command(parent, argv[0])
    assert sub is not None, argv
    return sub.make_context(argv[0], list(argv[1:]), parent=parent)


@pytest.mark.parametrize("launcher", get_args(Launcher))
def test_dry_run_lists_each_run_its_flops_and_commands_the_cli_parses(plans, launcher):
    for table, p in plans.items():
        text = render(p, launcher, SlurmOptions(gpus_per_node=8))
        joined = "\n".join(text)
        for job in p.jobs:
            assert str(job.folder) in joined
            if job.flops is not None:
                assert f"| {recipe_budget(job.base):.4g} |" in joined
        commands = [shlex.split(line) for line in text if line.startswith(("rtdmd-bench ", "torchrun "))]
        assert len(commands) == sum(len(j.todo) for j in p.jobs)
        for cmd in commands:
            argv = cmd[cmd.index("rtdmd_bench") + 1:] if cmd[0] == "torchrun" else cmd[1:]
            if cmd[0] == "torchrun":
                assert cmd[:5] == ["torchrun", "--nproc_per_node", "8", "-m", "rtdmd_bench"]
            ctx = _parse(argv)
            if argv[0] == "train":
                assert ctx.params["budget"] == p.budgets[ctx.params["base"]][0] and ctx.params["seed"] in (0, 1)
            else:
                assert ctx.params["suite"] and ctx.params["set_"][0].startswith("suite.variant=")
        if launcher == "slurm":
            assert f"job array of {sum(1 for j in p.jobs if j.todo)} task(s)" in joined


def test_dry_run_names_prompt_files_and_weights_with_presence(plans, tmp_path, monkeypatch):
    p = plans["rtdmd-flux2-4b-table2"]
    names = {n for n, _, _ in p.prompt_files}
    assert {"rtdmd-drawbench: drawbench", "rtdmd-geneval: geneval-rtdmd", "rtdmd-ocr: ocr",
            "rtdmd:pickscore/train.txt"} <= names
    repos = {r: ok for r, _, ok in p.weights}
    for needed in ("black-forest-labs/FLUX.2-klein-base-4B", "black-forest-labs/FLUX.2-klein-4B",
                   "black-forest-labs/FLUX.2-klein-base-9B", "MizzenAI/HPSv3", "Qwen/Qwen3-VL-8B-Instruct",
                   "facebook/mask2former-swin-small-coco-instance", "THUDM/ImageReward"):
        assert needed in repos
    # A snapshot in the hub cache counts as present; nothing is fetched.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "models--THUDM--ImageReward" / "snapshots" / "abc").mkdir(parents=True)
    again = build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path / "runs")
    assert {r: ok for r, _, ok in again.weights}["THUDM/ImageReward"] is True
    assert {r: ok for r, _, ok in again.weights}["xswu/HPSv2"] is False


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_finished_runs_and_evaluations_are_skipped_and_a_started_run_resumes(tmp_path):
    first = build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path)
    run, teacher = next(j for j in first.jobs if j.method == "rtdmd"), next(j for j in first.jobs if j.kind == "teacher")
    _write(run.folder / "config.yaml", yaml.safe_dump(run.config, sort_keys=False))
    _write(run.folder / "result.json", "{}")
    _write(run.folder / "eval" / "rtdmd-64-drawbench.json", "{}")
    gdmd = next(j for j in first.jobs if j.method == "gdmd")
    _write(gdmd.folder / "config.yaml", yaml.safe_dump(gdmd.config, sort_keys=False))  # started, no result
    _write(gdmd.folder / "eval" / "rtdmd-64-drawbench.json", "{}")  # of a checkpoint before the end: redone
    _write(teacher.folder / "teacher_job.yaml", yaml.safe_dump(teacher.config, sort_keys=False))
    for name in ("rtdmd-64-drawbench", "rtdmd-full-drawbench"):
        _write(teacher.folder / "eval" / f"{name}.json", "{}")

    again = {j.folder: j for j in build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path).jobs}
    todo = [list(s.argv) for s in again[run.folder].todo]
    assert todo == [["eval", "--run", str(run.folder), "--suite", "rtdmd-drawbench", "--set", "suite.variant=full"]]
    assert [s.argv[:3] for s in again[gdmd.folder].todo] == [("train", "--resume", str(gdmd.folder))] + [
        ("eval", "--run", str(gdmd.folder))] * 2
    assert again[teacher.folder].todo == ()
    text = "\n".join(render(build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path), "local", SlurmOptions()))
    assert "commands (4 to run, 4 done and skipped)" in text  # to run: rtdmd full, gdmd resume + 2; done: the rest
    # An evaluation older than the run's result.json scored an earlier checkpoint: run again.
    result = (run.folder / "result.json").stat().st_mtime
    os.utime(run.folder / "eval" / "rtdmd-64-drawbench.json", (result - 60, result - 60))
    older = next(j for j in build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path).jobs if j.folder == run.folder)
    assert [s.argv[-1] for s in older.todo] == ["suite.variant=64", "suite.variant=full"]


def test_a_folder_made_with_another_config_is_set_aside_only_when_launching(tmp_path):
    first = build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path)
    run = next(j for j in first.jobs if j.method == "rtdmd")
    old = json.loads(json.dumps(run.config))
    old["method"]["lr_fake"] = 0.123
    _write(run.folder / "config.yaml", yaml.safe_dump(old, sort_keys=False))
    _write(run.folder / "result.json", "{}")
    p = build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path)
    stale = next(j for j in p.jobs if j.method == "rtdmd")
    assert stale.steps[0].state == "stale" and "method.lr_fake: 0.123" in stale.note
    assert stale.steps[0].argv[:3] == ("train", "--method", "rtdmd") and len(stale.todo) == 3
    assert "would be set aside" in "\n".join(render(p, "local", SlurmOptions()))
    assert (run.folder / "result.json").exists()  # a dry run moves nothing
    notes = prepare_folders(p)
    assert not run.folder.exists() and (tmp_path / "rtdmd-sd3m-table1" / "rtdmd-sd3-s0.stale-1" / "result.json").exists()
    assert any("rtdmd-sd3-s0.stale-1" in n for n in notes)
    teacher = next(j for j in p.jobs if j.kind == "teacher")
    assert yaml.safe_load((teacher.folder / "teacher_job.yaml").read_text()) == teacher.config


def test_launcher_commands():
    job = Job("row", "run", "rtdmd", "sd3", 0, Path("r"), (Step("train", ("train", "--resume", "r"), "resume", ()),
                                                          Step("eval", (), "done", ())), 1.0, 1.0, 1.0)
    assert job_commands(job, "local", 1) == [[sys.executable, "-m", "rtdmd_bench", "train", "--resume", "r"]]
    assert job_commands(job, "local", 1, printed=True) == [["rtdmd-bench", "train", "--resume", "r"]]
    assert job_commands(job, "torchrun", 4, printed=True) == [["torchrun", "--nproc_per_node", "4", "-m", "rtdmd_bench",
                                                               "train", "--resume", "r"]]
    assert job_commands(job, "torchrun", 4) == [[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
                                                 "-m", "rtdmd_bench", "train", "--resume", "r"]]
    assert job_commands(job, "slurm", 8)[0][:5] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "8"]
    assert job_commands(job, "slurm", 1)[0][:3] == [sys.executable, "-m", "rtdmd_bench"]
    assert get_args(cli.Launcher) == get_args(Launcher)


def _trivial_plan(tmp_path: Path, argv: tuple[str, ...]) -> TablePlan:
    jobs = [Job(f"row{i}", "teacher", "", "toy2d", None, tmp_path / f"t{i}",
                (Step("eval", argv + (str(tmp_path / f"out{i}.txt"),), "new", ()),), None, None, None,
                {"i": i}, "teacher_job.yaml") for i in range(2)]
    return TablePlan("tiny", "tiny", tmp_path, 1, 1, {}, jobs, [], [], [], [])


class _Quiet:
    def print(self, *a, **k) -> None:
        pass


def test_slurm_array_runs_under_submitits_debug_executor(tmp_path, monkeypatch):
    # Each array task runs its job's commands; the program is swapped for a one-liner writing its file.
    monkeypatch.setattr("rtdmd_bench.reproduce_launch.prefix",
                        lambda launcher, gpus, printed=False: [sys.executable, "-c",
                                                               "import sys; open(sys.argv[2], 'w').write(sys.argv[1])"])
    p = _trivial_plan(tmp_path, ("task",))
    jobs = launch(p, "slurm", SlurmOptions(partition="gpu", gpus_per_node=1), _Quiet(), cluster="debug")
    assert len(jobs) == 2 and [j.result() for j in jobs] == [1, 1]
    assert [(tmp_path / f"out{i}.txt").read_text() for i in range(2)] == ["task", "task"]
    assert (tmp_path / "t0" / "teacher_job.yaml").exists()
    record = json.loads((tmp_path / "reproduce.json").read_text())
    assert [(j["row"], j["folder"]) for j in record["jobs"]] == [("row0", str(tmp_path / "t0")), ("row1", str(tmp_path / "t1"))]


@pytest.mark.slow  # submitit's local executor starts a Python process per task (~5 s here)
def test_slurm_array_runs_under_submitits_local_executor(tmp_path):
    out = tmp_path / "version.txt"
    cmd = [sys.executable, "-c", "import subprocess, sys; open(sys.argv[1], 'w').write(subprocess.run("
           "[sys.executable, '-m', 'rtdmd_bench', '--version'], capture_output=True, text=True).stdout)", str(out)]
    (job,) = submit_array([[cmd]], tmp_path / "slurm", SlurmOptions(gpus_per_node=1, timeout_min=5), cluster="local")
    assert job.result() == 1
    assert out.read_text().startswith("rtdmd-bench ")
    with pytest.raises(Exception, match="exit status 3"):
        submit_array([[[sys.executable, "-c", "raise SystemExit(3)"]]], tmp_path / "s2", SlurmOptions(gpus_per_node=1),
                     cluster="local")[0].result()


def test_reproduce_cli_refuses_table_options_for_the_cpu_benchmark_and_unknown_names(capsys):
    with pytest.raises(UserError, match="apply to a published table"):
        cli.app(["reproduce", "toy", "--dry-run"], standalone_mode=False)
    # an unknown name is a usage error naming both kinds of choice (exit 2 through cli.main)
    with pytest.raises(typer.BadParameter, match="neither a CPU benchmark .*toy2d.* nor a reference table .*rtdmd-sd3m-table1"):
        cli.app(["reproduce", "nope", "--dry-run"], standalone_mode=False)


@pytest.mark.slow  # a subprocess importing the diffusers base configs (~10-30 s on a loaded machine)
def test_dry_run_from_the_command_line_offline(tmp_path):
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "rtdmd_bench", "reproduce", "rtdmd-flux2-4b-table2", "--dry-run",
                           "--launcher", "torchrun", "--runs-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "torchrun --nproc_per_node 8 -m rtdmd_bench train --method rtdmd --base flux2-4b" in done.stdout
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    refused = subprocess.run([sys.executable, "-m", "rtdmd_bench", "reproduce", "rdm-gndm-abstract", "--dry-run"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "rdm-gndm-abstract is an abstract-level table" in refused.stderr
    abstract = subprocess.run([sys.executable, "-m", "rtdmd_bench", "reproduce", "rdm-gndm-abstract", "--dry-run",
                               "--base", "sd3", "--suite", "fid-t", "--runs-dir", str(tmp_path)],
                              capture_output=True, text=True, env=env)
    assert abstract.returncode == 0, abstract.stderr
    assert "rtdmd-bench train --method gndm --base sd3 --seed 0" in abstract.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # plan measures rtdmd's LoRA and decode costs on the meta device (~18 s)
def test_memory_without_measured_costs_is_plans_memory():
    quick = plan_mod.compute_plan("rtdmd", "sd3", measure_costs=False)
    full = plan_mod.compute_plan("rtdmd", "sd3")
    assert quick.memory_per_gpu == full.memory_per_gpu and quick.stages == [] and len(full.stages) == 2
    assert math.isclose(full.official_flops, recipe_budget("sd3"), rel_tol=1e-3)  # the recipe's budget is plan's FLOPs


def tiny_table(folder: Path) -> Path:
    """RTDMD's SD3-M table turned into a CPU one: its teacher and RTDMD rows on toy2d (dmd2, a 4-step
    teacher), every column scored by toy-tilt. Valid against the schema; used only by this test."""
    doc = json.loads((PAPER_DIR / "rtdmd-sd3m-table1.json").read_text())
    teacher, ours = doc["rows"][0], doc["rows"][3]
    teacher.update(base_key="toy2d", nfe=4)
    ours.update(base_key="toy2d", method_key="dmd2")
    doc.update(id="tiny-toy2d", rows=[teacher, ours], claims=[])
    for m in doc["metrics"].values():
        m["computed_by"] = [{**m["computed_by"][0], "suite": "toy-tilt", "registry": "toy-tilt", "set": [],
                             "metric": "kl_target"}]
    path = folder / "tiny-toy2d.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow  # a real toy2d run and two toy-tilt evaluations through the local launcher (~20 s CPU)
def test_local_launcher_runs_a_table_then_finds_everything_done(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    table = tiny_table(tmp_path)
    p = build_plan(table, budget="2e8", runs_dir=tmp_path / "runs", gpus=1)
    assert [(j.kind, j.method, j.base) for j in p.jobs] == [("teacher", "", "toy2d"), ("run", "dmd2", "toy2d")]
    launch(p, "local", SlurmOptions(gpus_per_node=1), _Quiet())
    run = tmp_path / "runs" / "tiny-toy2d" / "dmd2-toy2d-s0"
    result = json.loads((run / "result.json").read_text())
    assert result["compute"]["budget_flops"] == 2e8
    assert json.loads((run / "eval" / "toy-tilt.json").read_text())["metrics"]["kl_target"] >= 0
    assert (tmp_path / "runs" / "tiny-toy2d" / "teacher-toy2d-euler4" / "eval" / "toy-tilt.json").exists()
    again = build_plan(table, budget="2e8", runs_dir=tmp_path / "runs", gpus=1)
    assert all(not j.todo for j in again.jobs)  # resumed reproduction: nothing left to run


def _record(folder: Path, rates: dict[tuple[str, int], float]) -> Path:
    """A step-cost record (results/benchmarks format) of an H100 on sd3 bf16 with the given achieved FLOP/s."""
    rows = [{"method": m, "stage": st, "batch": 9, "step_time_s": 1.0, "flops_per_step": rate,
             "achieved_flops_per_s": rate, "peak_memory_bytes": 1} for (m, st), rate in rates.items()]
    path = folder / "step_cost_nvidia-h100-80gb-hbm3_sd3_bf16.json"
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "base": "sd3", "base_init": "random",
                                "dtype": "bf16", "date": "2026-11-29 08:00 UTC", "rows": rows}))
    return path


def test_run_gpu_hours_come_from_a_recorded_step_time_per_stage(tmp_path):
    path = _record(tmp_path, {("rtdmd", 1): 4e14, ("rtdmd", 2): 2e14, ("gdmd", 1): 3e14})
    p = build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path / "runs", recorded_dir=tmp_path)
    budget = recipe_budget("sd3")
    split = float(yaml.safe_load((ROOT / "rtdmd_bench" / "recipes" / "sd3.yaml").read_text())["rtdmd"]
                  ["method.stage1_fraction"])  # 0.637
    rtdmd, gdmd = (next(j for j in p.jobs if j.method == m) for m in ("rtdmd", "gdmd"))
    assert rtdmd.gpu_hours == pytest.approx(budget * split / 4e14 / 3600 + budget * (1 - split) / 2e14 / 3600)
    assert gdmd.gpu_hours == pytest.approx(budget / 3e14 / 3600)
    assert "recorded:" in gdmd.gpu_hours_from and str(path) in gdmd.gpu_hours_from
    assert "2026-11-29" in gdmd.gpu_hours_from and "estimated" not in rtdmd.gpu_hours_from
    text = "\n".join(render(p, "local", SlurmOptions()))
    assert f"gdmd on sd3: {gdmd.gpu_hours_from}" in text and f"| {gdmd.gpu_hours:,.0f} |" in text
    # no record for gndm: the estimate, said so; a record for stage 1 only: the stages' sources differ
    _record(tmp_path, {("rtdmd", 1): 4e14})
    q = build_plan("rdm-gndm-abstract", base="sd3", suites=["fid-t"], runs_dir=tmp_path / "runs", recorded_dir=tmp_path)
    gndm = next(j for j in q.jobs if j.method == "gndm")
    assert gndm.gpu_hours == pytest.approx(budget / (989e12 * 0.35) / 3600) and gndm.gpu_hours_from.startswith("estimated")
    mixed = next(j for j in build_plan("rtdmd-sd3m-table1", runs_dir=tmp_path / "runs", recorded_dir=tmp_path).jobs
                 if j.method == "rtdmd")
    assert mixed.gpu_hours == pytest.approx(budget * split / 4e14 / 3600 + budget * (1 - split) / (989e12 * 0.35) / 3600)
    assert "stage 1 recorded:" in mixed.gpu_hours_from and "stage 2 estimated:" in mixed.gpu_hours_from
