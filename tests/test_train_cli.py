"""The training loop, checkpoints, resume after SIGKILL, NaN handling and the CLI's bad-input
behaviour (foundation items 1, 8, 9 and "Bad input")."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rtdmd_bench.config import resolve_config
from rtdmd_bench.errors import NonFiniteLoss
from rtdmd_bench.runs import RunDir
from rtdmd_bench.train import train

# A small, fast toy run: a short init fit, small batches, frequent checkpoints.
FAST = ["base.fit_steps=200", "train.batch_size=64", "train.checkpoint_every=100", "train.log_every=50",
        "train.threads=1"]


def cli(*args, cwd=None, check=False, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rtdmd_bench", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, check=check, **kw)


def test_training_stops_on_budget_and_records_flop_breakdown(tmp_path):
    cfg = resolve_config("dmd2", "toy2d", FAST + ["train.budget=2e9"])
    result = train(cfg, tmp_path / "run")
    comp = result["compute"]
    assert comp["used_flops"] >= 2e9 and comp["used_flops"] < 2e9 * 1.2  # stops right after the budget
    assert {"student", "fake", "teacher"} <= set(comp["roles"])
    assert comp["roles"]["student"]["bwd"] > 0 and comp["roles"]["fake"]["bwd"] > 0
    assert comp["init_flops"] > 0 and "init" not in {r for r in comp["roles"] if comp["roles"][r]["fwd"] == 0}
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["git_commit"] and saved["versions"]["torch"] and saved["config"]["run"]["method"] == "dmd2"
    assert (tmp_path / "run" / "config.yaml").exists()
    assert RunDir(tmp_path / "run").latest_checkpoint().name == f"step_{result['steps']:08d}"


def _final_tensors(run: Path) -> dict:
    ck = RunDir(run).latest_checkpoint()
    return load_file(str(ck / "tensors.safetensors"))


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_result(tmp_path):
    args = ["train", "--method", "dmd2", "--base", "toy2d", "--budget", "6e10", "--out", str(tmp_path)]
    sets = [x for s in FAST for x in ("--set", s)]
    cli(*args, "--run-id", "straight", *sets, check=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "rtdmd_bench", *args, "--run-id", "killed", *sets],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "result.json").exists(), "run finished before it could be killed"
    cli("train", "--resume", str(tmp_path / "killed"), check=True)
    a, b = _final_tensors(tmp_path / "straight"), _final_tensors(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "straight" / "result.json").read_text())
    rb = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert ra["steps"] == rb["steps"] and ra["compute"]["used_flops"] == rb["compute"]["used_flops"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(RunDir(tmp_path / "straight").metrics()) == strip(RunDir(tmp_path / "killed").metrics())


def test_nan_loss_stops_naming_step_and_term_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import methods.dmd2 as dmd2

    real = dmd2.DMD2.train_step

    def poisoned(self, batch, step):
        logs = real(self, batch, step)
        if step == 150:
            logs["loss_fake"] = float("nan")
        return logs

    monkeypatch.setattr(dmd2.DMD2, "train_step", poisoned)
    cfg = resolve_config("dmd2", "toy2d", FAST + ["train.budget=1e12"])
    with pytest.raises(NonFiniteLoss, match=r"'loss_fake'.*step 150"):
        train(cfg, tmp_path / "run")
    assert RunDir(tmp_path / "run").latest_checkpoint().name == "step_00000100"
    RunDir(tmp_path / "run").load_checkpoint()  # still loads


@pytest.mark.parametrize("args,needle", [
    (["train", "--method", "nope", "--base", "toy2d"], "unknown method 'nope'"),
    (["train", "--method", "dmd2", "--base", "moon"], "unknown base 'moon'"),
    (["train", "--method", "dmd2", "--base", "toy2d", "--set", "method.lr=1"], "valid keys here"),
    (["train", "--method", "dmd2", "--base", "toy2d", "--budget", "lots"], "cannot parse budget"),
    (["train", "--method", "dmd2", "--base", "toy2d", "--rewards", "nope"], "unknown reward 'nope'"),
    (["eval", "--suite", "nope", "--run", "."], "is not a run folder"),
    (["compare", "/nonexistent"], "is not a run folder"),
])
def test_bad_input_gives_one_clear_message_and_exit_2(tmp_path, args, needle):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


def test_corrupt_checkpoint_is_a_clear_error_and_is_left_alone(tmp_path):
    cfg = resolve_config("dmd2", "toy2d", FAST + ["train.budget=2e9"])
    train(cfg, tmp_path / "run")
    ck = RunDir(tmp_path / "run").latest_checkpoint() / "tensors.safetensors"
    ck.write_bytes(b"garbage")
    out = cli("train", "--resume", str(tmp_path / "run"))
    assert out.returncode == 2 and "corrupt" in out.stderr and "Traceback" not in out.stderr
    assert ck.read_bytes() == b"garbage"


def test_help_of_every_command_is_useful():
    top = cli("--help")
    assert top.returncode == 0 and "matched" not in top.stderr
    for cmd in ("list", "train", "eval", "compare", "reproduce", "plan", "prepare", "config"):
        out = cli(cmd, "--help")
        assert out.returncode == 0, (cmd, out.stderr)
        assert len(out.stdout.split()) > 20, cmd


def test_list_shows_every_kind():
    out = cli("list")
    assert out.returncode == 0
    for name in ("rtdmd", "acdmd", "dmd2", "toy2d", "digits", "toy-tilt", "toy-quadratic"):
        assert name in out.stdout
