"""Run folders under stress (issue 13, "Robustness"): a run killed before its first checkpoint
resumes by starting over; a run folder is claimed by one writer (two `train` commands with one
run id, a `train --resume` or an `eval` of a run still training: one proceeds, the others stop
with one message and change nothing; a killed holder never blocks a resume); a failed write (full
disk, no permission) ends in one message, removes its temporary files and keeps the last good
checkpoint; the sample cache regenerates bad entries and is keyed by the checkpoint's content."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rtdmd_bench import run_lock
from rtdmd_bench.config import resolve_config
from rtdmd_bench.errors import UserError
from rtdmd_bench.runs import RunDir
from rtdmd_bench.train import train

FAST = ["base.fit_steps=200", "train.batch_size=64", "train.checkpoint_every=100", "train.log_every=10",
        "train.threads=1"]
SMALL = "train.budget=2e9"  # 69 steps: ends before its first checkpoint at step 100
LONGER = "train.budget=6e9"  # 203 steps: checkpoints at 100 and 200, then the final one


def cli(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")  # (rich wraps long paths otherwise)
    return subprocess.run([sys.executable, "-m", "rtdmd_bench", *args], capture_output=True, text=True, env=env, **kw)


def one_line(text: str) -> str:
    return " ".join(text.split())


def tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).latest_checkpoint() / "tensors.safetensors"))


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def logged(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in RunDir(run).metrics()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (hidden files too)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of LONGER."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(resolve_config("dmd2", "toy2d", FAST + [LONGER]), run)
    return run


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished SMALL run, copied by the tests that need one."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(resolve_config("dmd2", "toy2d", FAST + [SMALL]), run)
    return run


# ---------------------------------------------------------------- resume before the first checkpoint
def test_a_run_killed_before_its_first_checkpoint_resumes_to_the_uninterrupted_result(finished, tmp_path):
    cfg = resolve_config("dmd2", "toy2d", FAST + [SMALL])
    killed = tmp_path / "killed"
    assert train(cfg, killed, stop_after_steps=30) == {}
    assert RunDir(killed).latest_checkpoint() is None and len(RunDir(killed).metrics()) == 3  # steps 10, 20, 30
    resumed = train(cfg, killed, resume=True)
    assert same_tensors(finished, killed)  # bit-identical
    first = json.loads((finished / "result.json").read_text())
    assert (resumed["steps"], resumed["compute"]) == (first["steps"], first["compute"])
    assert logged(killed) == logged(finished)  # the killed attempt's lines are gone, none twice


def test_resume_of_a_folder_with_only_its_config_trains_it_from_that_config(finished, tmp_path):
    from typer.testing import CliRunner

    from rtdmd_bench.cli import app

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished / "config.yaml", run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"step": 10, "flops": 1.0, "loss_fake": 9.0}\n{"step": 20, "fl')  # torn
    out = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert out.exit_code == 0, out.output
    assert same_tensors(finished, run) and logged(run) == logged(finished)


# ---------------------------------------------------------------- one writer per run folder
HOLDER = """
import sys, time
from pathlib import Path
from rtdmd_bench import run_lock
with run_lock.hold(Path(sys.argv[1]), sys.argv[2], shared=sys.argv[2] == "eval"):
    print("held", flush=True)
    time.sleep(600)
"""


def holder(run: Path, purpose: str) -> subprocess.Popen:
    """A light process that claims `run` for `purpose` (train: exclusive, eval: shared) and sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), purpose], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def in_use(pid: int, doing: str) -> str:
    return f"is in use by process {pid} on host {socket.gethostname()} ({doing} since"


def test_a_held_run_folder_refuses_training_and_evaluation_and_is_left_unchanged(finished, tmp_path):
    from rtdmd_bench.evaluate import evaluate_suites

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    cfg = resolve_config("dmd2", "toy2d", FAST + [SMALL])
    proc = holder(run, "train")
    try:
        before = snapshot(run)
        with pytest.raises(UserError, match="is in use") as e:
            train(cfg, run, resume=True)
        assert in_use(proc.pid, "training") in str(e.value)
        with pytest.raises(UserError, match="is in use") as e:
            next(evaluate_suites(["toy-tilt"], run=run))
        assert in_use(proc.pid, "training") in str(e.value)
        fresh = tmp_path / "fresh"  # a new run whose folder another process has just claimed
        fresh.mkdir()
        other = holder(fresh, "train")
        with pytest.raises(UserError, match="is in use"):
            train(cfg, fresh)
        assert snapshot(fresh) == {run_lock.LOCK_NAME: (fresh / run_lock.LOCK_NAME).read_bytes()}  # its record only
        kill(other)
        assert snapshot(run) == before  # nothing written, the lock file included
    finally:
        kill(proc)
    # The killed holder's record is still in the lock file; its claim died with it.
    assert str(proc.pid) in (run / run_lock.LOCK_NAME).read_text()
    assert train(cfg, run, resume=True)["steps"] == json.loads((finished / "result.json").read_text())["steps"]


def test_evaluations_share_a_run_folder_but_exclude_training(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    proc = holder(run, "eval")
    try:
        assert run_lock.claim(run, "eval", shared=True) is None  # a second evaluation may write beside it
        run_lock.release(run)
        message = run_lock.claim(run, "train")
        assert message is not None and in_use(proc.pid, "evaluating") in message
    finally:
        kill(proc)
    assert run_lock.claim(run, "train") is None  # the evaluation died: its claim is gone, its line skipped
    try:
        assert (run / run_lock.LOCK_NAME).read_text().count("\n") == 1  # this claim alone
        assert run_lock.claim(run, "eval", shared=True) is None  # nested in this process (train --eval)
        run_lock.release(run)
        assert run_lock.claim(run, "train") is None
        run_lock.release(run)
    finally:
        run_lock.release(run)
    assert (run / run_lock.LOCK_NAME).read_text() == ""  # the last holder empties it
    probe = holder(run, "train")  # and another process can now claim it
    kill(probe)


def test_a_new_run_into_a_folder_that_holds_a_run_is_refused_under_the_claim(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(resolve_config("dmd2", "toy2d", FAST + [SMALL, "run.seed=5"]), run)
    assert snapshot(run) == before


@pytest.mark.slow
def test_two_trains_with_one_run_id_started_together_leave_one_consistent_run(tmp_path):
    sets = [x for s in FAST + ["train.checkpoint_every=200"] for x in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")  # (rich wraps long paths otherwise)
    command = [sys.executable, "-m", "rtdmd_bench", "train", "--method", "dmd2", "--base", "toy2d", "--budget", "2e10",
               "--out", str(tmp_path), "--run-id", "same", *sets]
    logs = {seed: open(tmp_path / f"stderr{seed}", "w") for seed in (1, 2)}  # (a full pipe would stall a process)
    procs = {seed: subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.DEVNULL, stderr=logs[seed],
                                    env=env)
             for seed in (1, 2)}
    rcs = {seed: p.wait(timeout=600) for seed, p in procs.items()}
    for log in logs.values():
        log.close()
    errs = {seed: (tmp_path / f"stderr{seed}").read_text() for seed in (1, 2)}
    winners = [seed for seed, rc in rcs.items() if rc == 0]
    assert len(winners) == 1, {s: (rc, errs[s][-2000:]) for s, rc in rcs.items()}
    (won,) = winners
    (lost,) = {1, 2} - {won}
    err, rc = errs[lost], rcs[lost]
    assert rc == 2 and "Traceback" not in err, err
    # Refused by the claim while the winner trains, or (had it already finished) by its config.yaml.
    assert in_use(procs[won].pid, "training") in one_line(err) or "already holds a run" in one_line(err), err
    run = tmp_path / "same"
    saved = RunDir(run).read_config()
    assert saved["run"]["seed"] == won and json.loads((run / "result.json").read_text())["seed"] == won
    reference = tmp_path / "reference"
    sets = FAST + ["train.checkpoint_every=200", "train.budget=2e10", f"run.seed={won}"]
    train(resolve_config("dmd2", "toy2d", sets), reference)
    assert same_tensors(reference, run) and logged(reference) == logged(run)


@pytest.mark.slow
def test_resume_or_eval_of_a_run_still_training_is_refused(tmp_path):
    sets = [x for s in FAST for x in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")  # (rich wraps long paths otherwise)
    with open(tmp_path / "stderr", "w") as log:  # (a full pipe would stall the process)
        proc = subprocess.Popen([sys.executable, "-m", "rtdmd_bench", "train", "--method", "dmd2", "--base", "toy2d",
                                 "--budget", "5e10", "--out", str(tmp_path), "--run-id", "busy", *sets],
                                stdout=subprocess.DEVNULL, stderr=log, env=env)
    run = tmp_path / "busy"
    deadline = time.time() + 300
    while not (run / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    others = [subprocess.Popen([sys.executable, "-m", "rtdmd_bench", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
              for args in (["train", "--resume", str(run)], ["eval", "--run", str(run), "--suite", "toy-tilt"])]
    results = [(p.communicate(timeout=600), p.returncode) for p in others]
    still_training = proc.poll() is None
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr").read_text()
    assert still_training, "the run finished before the others tried: raise its budget"
    for (_, other_err), rc in results:
        assert rc == 2 and in_use(proc.pid, "training") in one_line(other_err), other_err
        assert "Traceback" not in other_err
    # One run, written by one process: every step logged once, in order, up to the result's.
    steps = [r["step"] for r in RunDir(run).metrics()]
    assert steps == sorted(set(steps)) and steps[-1] == json.loads((run / "result.json").read_text())["steps"]
    assert not (run / "eval").exists()


def launch_two(*args: str) -> list[subprocess.CompletedProcess]:
    """`python -m rtdmd_bench ARGS` as two ranks of one process group, with the variables torchrun
    sets (torchrun itself cannot pass `eval --run`: its argparse takes --run for its --run-path)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "rtdmd_bench", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000", RANK=str(r), LOCAL_RANK=str(r),
                                       WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)))
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]  # (a rank left waiting for the other: the timeout)
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


@pytest.mark.slow
def test_in_a_process_group_rank_0_claims_and_every_rank_stops_or_goes_on_with_it(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    evaluate = ["eval", "--run", str(run), "--suite", "toy-tilt", "--set", "suite.images_per_prompt=100"]
    proc = holder(run, "train")
    try:
        for args in (["train", "--resume", str(run)], evaluate):
            for rank in launch_two(*args):
                assert rank.returncode == 2 and in_use(proc.pid, "training") in one_line(rank.stderr), rank.stderr
    finally:
        kill(proc)
    assert not (run / "eval").exists()
    for rank in launch_two(*evaluate):
        assert rank.returncode == 0, rank.stderr[-3000:]
    assert (run / "eval" / "toy-tilt.json").is_file() and (run / run_lock.LOCK_NAME).read_text() == ""


# ---------------------------------------------------------------- failed writes
def _fail_at_step_200(monkeypatch, where: str) -> None:
    """Make the write `where` of the step-200 checkpoint fail as a full disk (or, for `latest`, a
    folder without write permission) makes it fail."""
    import rtdmd_bench.files as files
    import rtdmd_bench.runs as runs

    if where == "tensors":  # safetensors reports its I/O errors as SafetensorError
        real_save = runs.save_file

        def save(tensors, path, *a, **kw):
            if "step_00000200" in path:
                real_save(tensors, path, *a, **kw)  # half a file on disk, as a full disk leaves it
                Path(path).write_bytes(Path(path).read_bytes()[:1000])
                raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
            return real_save(tensors, path, *a, **kw)
        monkeypatch.setattr(runs, "save_file", save)
    elif where == "rename":  # moving the complete temporary folder into place
        real_replace = os.replace

        def replace(src, dst):
            if Path(src).name == ".tmp_step_00000200":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real_replace(src, dst)
        monkeypatch.setattr(runs.os, "replace", replace)
    else:  # the `latest` pointer, after the step folder is in place
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name == "latest" and "step_00000200" in Path(src).read_text():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
            return real_replace(src, dst)
        monkeypatch.setattr(files.os, "replace", replace)  # (the os module: one patch for every caller)


@pytest.mark.parametrize("where,why", [("tensors", "No space left on device"),
                                       ("rename", "no space left on the device"), ("latest", "permission denied")])
def test_a_failed_checkpoint_write_ends_in_one_message_and_the_run_resumes(where, why, straight, tmp_path, monkeypatch):
    cfg = resolve_config("dmd2", "toy2d", FAST + [LONGER])
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _fail_at_step_200(m, where)
        with pytest.raises(UserError) as e:
            train(cfg, run)
    message = str(e.value)
    written = run / "checkpoints" / ("latest" if where == "latest" else "step_00000200")
    assert f"could not write {written}" in message and why in message
    last = run / "checkpoints" / "step_00000100"
    assert f"The last good checkpoint is {last}" in message and f"rtdmd-bench train --resume {run}" in message
    assert not list((run / "checkpoints").glob(".*")), "temporary files left behind"
    assert RunDir(run).latest_checkpoint() == last
    assert RunDir(run).load_checkpoint()[0] == 100
    result = train(cfg, run, resume=True)
    assert result["steps"] == json.loads((straight / "result.json").read_text())["steps"]
    assert same_tensors(straight, run) and logged(straight) == logged(run)


class FullDisk:
    """A file whose write puts 7 characters on disk and then fails, as on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[:7])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_metrics_write_leaves_no_half_line_and_the_cli_prints_one_message(tmp_path, monkeypatch, capsys):
    import builtins

    import rtdmd_bench.cli as cli_module
    import rtdmd_bench.runs as runs

    appends = []

    def full_disk_open(path, mode="r", *a, **kw):  # the second metrics line hits a full disk
        f = builtins.open(path, mode, *a, **kw)
        if Path(path).name == "metrics.jsonl" and mode == "a":
            appends.append(path)
            return FullDisk(f) if len(appends) == 2 else f
        return f

    monkeypatch.setattr(runs, "open", full_disk_open, raising=False)
    sets = [x for s in FAST for x in ("--set", s)]
    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", "train", "--method", "dmd2", "--base", "toy2d", "--budget", "2e9",
                                      "--out", str(tmp_path), "--run-id", "run", *sets])
    with pytest.raises(SystemExit) as e:
        cli_module.main()
    assert e.value.code == 2
    err = one_line(capsys.readouterr().err)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert f"could not write {metrics} (no space left on the device)" in err and "Traceback" not in err
    assert "has no checkpoint yet" in err and f"--resume {tmp_path / 'run'}" in err
    assert [r["step"] for r in RunDir(tmp_path / "run").metrics()] == [10]
    assert metrics.read_text().endswith("}\n")  # the 7 characters of the second line are gone


@pytest.mark.slow
def test_a_real_failed_write_from_safetensors_ends_in_one_message(finished, tmp_path):
    """No injection: the process may write no file above 64 KiB (RLIMIT_FSIZE), so safetensors' own
    writer fails on the ~1 MB checkpoint as it does on a full disk. (`finished` has cached the toy
    base's networks, which the process could not write.)"""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    sets = [x for s in FAST for x in ("--set", s)]
    out = cli("train", "--method", "dmd2", "--base", "toy2d", "--budget", "2e9", "--out", str(tmp_path),
              "--run-id", "run", *sets, "--set", "train.checkpoint_every=50", preexec_fn=limit)
    err = one_line(out.stderr)
    ckpts = tmp_path / "run" / "checkpoints"
    assert out.returncode == 2 and "Traceback" not in err, err
    assert f"could not write {ckpts / 'step_00000050'} (SafetensorError" in err and "has no checkpoint yet" in err
    assert sorted(p.name for p in ckpts.iterdir()) == []


# ---------------------------------------------------------------- the sample cache
def _eval(run: Path) -> dict:
    from rtdmd_bench.evaluate import build_suite, evaluate_run

    return evaluate_run(build_suite("toy-tilt", {"images_per_prompt": 100}), run, 0)["metrics"]


def test_checkpoint_digest_is_the_sha256_of_the_tensors_file(finished):
    run = RunDir(finished)
    ckpt = run.latest_checkpoint()
    expected = hashlib.sha256((ckpt / "tensors.safetensors").read_bytes()).hexdigest()
    assert run.checkpoint_digest() == expected


def test_a_checkpoint_saved_without_a_recorded_digest_is_hashed_when_asked(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt = RunDir(run).latest_checkpoint()
    state = json.loads((ckpt / "state.json").read_text())
    del state["tensors_sha256"]
    (ckpt / "state.json").write_text(json.dumps(state))
    assert RunDir(run).checkpoint_digest() == hashlib.sha256((ckpt / "tensors.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["truncated", "wrong count", "float64", "no images"])
def test_a_bad_sample_cache_entry_is_regenerated_with_a_warning(damage, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    clean = _eval(run)
    entry = sorted((run / "samples").rglob("*.safetensors"))[1]
    good = load_file(str(entry))["images"].clone()  # (not a view of the file, which is damaged below)
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "wrong count":
        save_file({"images": good[:10].contiguous()}, str(entry))
    elif damage == "float64":
        save_file({"images": good.double()}, str(entry))
    else:
        save_file({"other": good}, str(entry))
    with pytest.warns(UserWarning, match=re.escape(f"sample cache entry {entry} is ") + ".*generating it again"):
        again = _eval(run)
    assert again == clean
    assert torch.equal(load_file(str(entry))["images"], good)  # overwritten with the right images


def test_a_run_trained_again_into_its_folder_is_not_scored_with_the_old_samples(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    first = _eval(run)
    old_ckpt = RunDir(run).latest_checkpoint().name
    keys = {p.name for p in (run / "samples").iterdir()}
    for p in run.iterdir():  # everything but the sample cache: a new run into the same folder
        if p.name != "samples":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    cfg = resolve_config("dmd2", "toy2d", FAST + [SMALL, "run.seed=1"])
    train(cfg, run)
    assert RunDir(run).latest_checkpoint().name == old_ckpt  # same step: a step-named key would collide
    other = tmp_path / "other"
    train(cfg, other)
    assert _eval(run) == _eval(other) != first
    assert len({p.name for p in (run / "samples").iterdir()} - keys) == 1  # the new checkpoint's own key
