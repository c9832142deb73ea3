"""A corpus of wrong inputs (issue 13, "Robustness"): every one ends with a non-zero exit status (2,
for usage errors and user errors alike: cli.main), exactly one error message and no traceback or
Rich panel, and changes nothing on disk: neither the reference run folder (trained once for the
module) nor the folder the command runs in.

The commands run in-process through `rtdmd_bench.cli.main`, the console script's entry point, so
its handler is exercised exactly as `rtdmd-bench ...` runs it; two subprocess cases check that the
console script behaves the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml
from safetensors.torch import save_file

from rtdmd_bench import cli
from rtdmd_bench.runs import RunDir

# A small toy2d run (as tests/test_train_cli.py's): a few seconds.
FAST = ["base.fit_steps=200", "train.batch_size=64", "train.checkpoint_every=100", "train.threads=1"]
PANEL = ("╭", "╰", "│", "┃")  # Rich panel and traceback borders


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained toy2d run, trained once per module by the console script."""
    root = tmp_path_factory.mktemp("reference")
    sets = [x for s in FAST for x in ("--set", s)]
    subprocess.run([sys.executable, "-m", "rtdmd_bench", "train", "--method", "dmd2", "--base", "toy2d",
                    "--budget", "2e9", "--out", str(root), "--run-id", "ref", *sets], check=True,
                   capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return root / "ref"


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and '/' for every folder) under `root`."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
    return out


# ------------------------------------------------------------------ ways to spoil a copy of the run

def edit_config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def spoil(run: Path) -> None:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        change(cfg)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return spoil


def write(rel: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / rel).write_bytes(data)


def latest_file(run: Path, name: str) -> Path:
    return RunDir(run).latest_checkpoint() / name


def truncate_tensors(run: Path) -> None:
    path = latest_file(run, "tensors.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def foreign_tensors(run: Path) -> None:
    """A valid safetensors file that holds other tensors than the checkpoint's skeleton names."""
    import torch

    save_file({"something_else": torch.zeros(3)}, str(latest_file(run, "tensors.safetensors")))


SPOIL: dict[str, Callable[[Path], None]] = {
    "config-not-yaml": write("config.yaml", b"run: [unclosed\n  : {\n"),
    "config-scalar": write("config.yaml", b"just some text\n"),
    "config-empty": write("config.yaml", b""),
    "config-binary": write("config.yaml", bytes(range(128, 256)) * 4),
    "config-unknown-method": edit_config(lambda c: c["run"].update(method="dmd9")),
    "config-unknown-field": edit_config(lambda c: c["method"].update(learning_speed=3)),
    "config-no-train-section": edit_config(lambda c: c.pop("train")),
    "config-out-of-range": edit_config(lambda c: c["train"].update(batch_size=0)),
    "config-wider-network": edit_config(lambda c: c["base"].update(hidden=64)),
    "tensors-truncated": truncate_tensors,
    "tensors-not-safetensors": lambda run: latest_file(run, "tensors.safetensors").write_bytes(b"not a checkpoint"),
    "tensors-foreign": foreign_tensors,
    "tensors-missing": lambda run: latest_file(run, "tensors.safetensors").unlink(),
    "state-not-json": lambda run: latest_file(run, "state.json").write_text("{step: 3"),
    "latest-points-nowhere": write("checkpoints/latest", b"step_99999999\n"),
    "no-checkpoints": lambda run: shutil.rmtree(run / "checkpoints"),
}

TRAIN = ["train", "--method", "dmd2", "--base", "toy2d"]
EVAL_REF = ["eval", "--suite", "toy-tilt", "--run", "{ref}"]
FIDT = ["eval", "--suite", "fid-t", "--run", "{ref}", "--set", "suite.features=stand-in"]  # reads a prompt file


def s(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


# (id, command, spoiled copy of the reference run at {run} or None, text the message must contain)
CASES: list[tuple[str, list[str], str | None, str]] = [
    # command-line flags (typer/click usage errors)
    ("unknown-option", ["train", "--bogus"], None, "No such option"),
    ("unknown-command", ["frobnicate"], None, "No such command"),
    ("missing-option-value", ["eval", "--suite"], None, "requires an argument"),
    ("missing-set-value", ["train", "--set"], None, "requires an argument"),
    ("missing-argument", ["config", "dmd2"], None, "Missing argument"),
    ("missing-runs-argument", ["compare"], None, "Missing argument"),
    ("text-for-integer", ["eval", "--suite", "toy-tilt", "--base", "toy2d", "--batch-size", "abc"], None, "--batch-size"),
    ("text-for-seed", [*TRAIN, "--seed", "abc"], None, "--seed"),
    ("text-for-beta", [*TRAIN, "--beta", "zero"], None, "--beta"),
    ("invalid-sampler", ["eval", "--suite", "toy-tilt", "--base", "toy2d", "--teacher-sampler", "rk45"], None, "rk45"),
    ("invalid-precision", ["plan", "--method", "dmd2", "--base", "sd3", "--precision", "fp8"], None, "fp8"),
    ("invalid-parallelism", ["plan", "--method", "dmd2", "--base", "sd3", "--parallelism", "tp"], None, "tp"),
    ("invalid-list-kind", ["list", "bogus"], None, "bogus"),
    ("invalid-benchmark", ["reproduce", "nope"], None, "nope"),
    ("invalid-prepare", ["prepare", "nope"], None, "nope"),
    ("zero-batch-size", ["eval", "--suite", "toy-tilt", "--base", "toy2d", "--batch-size", "0"], None, "--batch-size"),
    ("zero-teacher-steps", ["eval", "--suite", "toy-tilt", "--base", "toy2d", "--teacher-steps", "0"], None, "--teacher-steps"),
    ("zero-seeds", ["reproduce", "toy", "--seeds", "0"], None, "--seeds"),
    ("zero-gpus", ["plan", "--method", "dmd2", "--base", "sd3", "--num-gpus", "0"], None, "--num-gpus"),
    # values the code checks
    ("no-method", ["train"], None, "--method"),
    ("unknown-method", ["train", "--method", "nope", "--base", "toy2d"], None, "unknown method 'nope'"),
    ("unknown-base", ["train", "--method", "dmd2", "--base", "moon"], None, "unknown base 'moon'"),
    ("unknown-plan-method", ["plan", "--method", "nope", "--base", "sd3"], None, "unknown method 'nope'"),
    ("out-is-a-file", [*TRAIN, "--out", "afile"], None, "not a folder"),
    ("out-inside-a-file", [*TRAIN, "--out", "afile/runs"], None, "afile is a file"),
    ("eval-out-is-a-file", ["eval", "--suite", "toy-tilt", "--base", "toy2d", "--out", "afile"], None, "not a folder"),
    ("compare-out-is-a-file", ["compare", "{ref}", "--out", "afile"], None, "not a folder"),
    ("prepare-out-is-a-folder", ["prepare", "geneval-train", "--out", "folder"], None, "is a folder"),
    ("prepare-out-inside-a-file", ["prepare", "geneval-train", "--out", "afile/train.jsonl"], None, "afile is a file"),
    ("run-and-base", [*EVAL_REF, "--base", "toy2d"], None, "exactly one of"),
    ("neither-run-nor-base", ["eval", "--suite", "toy-tilt"], None, "exactly one of"),
    ("unknown-suite", ["eval", "--suite", "nope", "--run", "{ref}"], None, "unknown suite 'nope'"),
    ("resume-with-options", ["train", "--resume", "{ref}", "--seed", "3"], None, "drop the other options"),
    ("run-id-taken", [*TRAIN, "--out", "{refparent}", "--run-id", "ref"], None, "already holds a run"),
    ("budget-text", [*TRAIN, "--budget", "lots"], None, "budget"),
    ("budget-zero", [*TRAIN, "--budget", "0"], None, "budget"),
    ("unknown-reward", [*TRAIN, "--rewards", "nope"], None, "unknown reward 'nope'"),
    ("reward-weight-text", [*TRAIN, "--rewards", "toy-quadratic=abc"], None, "NAME=WEIGHT"),
    ("beta-zero", [*TRAIN, "--beta", "0"], None, "run.beta = 0.0 is out of range: it must be > 0"),
    ("beta-negative", [*TRAIN, "--beta", "-1"], None, "run.beta = -1.0 is out of range"),
    ("compare-nothing", ["compare", "nowhere"], None, "is not a run folder"),
    ("train-eval-unusable-suite", [*TRAIN, "--eval", "fid"], None, "caption file"),  # checked before training
    # --set values
    ("set-unknown-section", [*TRAIN, *s("model.x=1")], None, "valid sections"),
    ("set-unknown-field", [*TRAIN, *s("method.lr=1")], None, "valid keys here"),
    ("set-text-for-int", [*TRAIN, *s("train.batch_size=abc")], None, "expected an integer"),
    ("set-float-for-int", [*TRAIN, *s("train.batch_size=1.5")], None, "expected an integer"),
    ("set-zero-batch", [*TRAIN, *s("train.batch_size=0")], None, "train.batch_size = 0 is out of range: it must be >= 1"),
    ("set-negative-lr", [*TRAIN, *s("method.lr_generator=-1")], None, "method.lr_generator = -1.0 is out of range"),
    ("set-nan-lr", [*TRAIN, *s("method.lr_fake=nan")], None, "finite"),
    ("set-betas-count", [*TRAIN, *s("method.betas=0.5")], None, "expected 2 comma-separated values"),
    ("set-betas-range", [*TRAIN, *s("method.betas=1.5,0.9")], None, "method.betas[0] = 1.5 is out of range: it must be in [0, 1)"),
    ("set-eta-range", [*TRAIN, *s("method.eta=2")], None, "method.eta = 2.0 is out of range: it must be in [0, 1]"),
    ("set-ema-range", [*TRAIN, *s("method.ema_decay=1.5")], None, "method.ema_decay"),
    ("set-bad-choice", [*TRAIN, *s("method.dm_normalize=sometimes")], None, "not one of"),
    ("set-bad-bool", [*TRAIN, *s("method.backward_simulation=maybe")], None, "boolean"),
    ("set-parallel-choice", [*TRAIN, *s("train.parallel=tp")], None, "not one of"),
    ("set-no-equals", [*TRAIN, *s("method.lr_generator")], None, "KEY=VALUE"),
    ("set-empty-key", [*TRAIN, *s("=1")], None, "valid sections"),
    ("set-reward-not-in-run", [*TRAIN, *s("reward.nope.x=1")], None, "not in this run's rewards"),
    ("set-zero-modes", [*TRAIN, *s("base.num_modes=0")], None, "base.num_modes = 0"),
    ("set-zero-log-every", [*TRAIN, *s("train.log_every=0")], None, "train.log_every = 0"),
    ("set-zero-steps", [*TRAIN, *s("method.num_steps=0")], None, "method.num_steps = 0"),
    ("set-negative-budget", [*TRAIN, *s("train.budget=-1")], None, "budget"),
    ("set-group-of-fields", ["train", "--method", "rtdmd", "--base", "toy2d", *s("method.stage1=3")], None, "group of fields"),
    ("set-group-of-one", ["train", "--method", "rtdmd", "--base", "toy2d", *s("method.group_size=1")], None, "method.group_size = 1"),
    ("set-nested-range", ["train", "--method", "rtdmd", "--base", "toy2d", *s("method.stage1.lr_fake=-3")], None,
     "method.stage1.lr_fake = -3.0"),
    ("eval-set-no-suite", [*EVAL_REF, *s("batch_size=1")], None, "keys start with 'suite.'"),
    ("eval-set-unknown-field", [*EVAL_REF, *s("suite.nope=1")], None, "valid keys here"),
    ("eval-set-out-of-range", [*EVAL_REF, *s("suite.images_per_prompt=0")], None, "toy-tilt.images_per_prompt = 0"),
    ("eval-set-unknown-suite", [*EVAL_REF, *s("nope-suite.limit=1")], None, "keys start with 'suite.'"),
    ("eval-set-other-suite", [*EVAL_REF, *s("fid-t.limit=1")], None, "not among the suites evaluated"),
    ("eval-set-text", [*EVAL_REF, *s("suite.knn_k=abc")], None, "expected an integer"),
    # prompt files
    ("prompts-missing", [*FIDT, "--prompts", "missing.txt"], None, "does not exist"),
    ("prompts-empty", [*FIDT, "--prompts", "empty.txt"], None, "no prompts"),
    ("prompts-binary", [*FIDT, "--prompts", "binary.txt"], None, "not UTF-8 text"),
    ("prompts-folder", [*FIDT, "--prompts", "folder"], None, "is a folder"),
    ("prompts-bad-json", [*FIDT, "--prompts", "bad.json"], None, "not JSON"),
    ("exclude-binary", ["prepare", "geneval-train", "--out", "train.jsonl", "--exclude", "binary.txt"], None, "not UTF-8"),
    # run folders
    ("run-missing", ["eval", "--suite", "toy-tilt", "--run", "nowhere"], None, "is not a run folder"),
    ("run-is-a-file", ["eval", "--suite", "toy-tilt", "--run", "afile"], None, "is not a run folder"),
    ("run-empty-folder", ["eval", "--suite", "toy-tilt", "--run", "folder"], None, "is not a run folder"),
    ("resume-missing", ["train", "--resume", "nowhere"], None, "is not a run folder"),
    ("config-not-yaml", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "config-not-yaml", "cannot be read as YAML"),
    ("resume-config-not-yaml", ["train", "--resume", "{run}"], "config-not-yaml", "cannot be read as YAML"),
    ("config-scalar", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "config-scalar", "not a valid run config"),
    ("resume-config-empty", ["train", "--resume", "{run}"], "config-empty", "not a valid run config"),
    ("config-binary", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "config-binary", "cannot be read as YAML"),
    ("config-unknown-method", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "config-unknown-method", "unknown method 'dmd9'"),
    ("resume-config-unknown-field", ["train", "--resume", "{run}"], "config-unknown-field", "learning_speed"),
    ("config-no-train-section", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "config-no-train-section", "'train' section"),
    ("resume-config-out-of-range", ["train", "--resume", "{run}"], "config-out-of-range", "train.batch_size = 0"),
    ("config-wider-network", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "config-wider-network", "does not fit"),
    # checkpoints
    ("tensors-truncated", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "tensors-truncated", "corrupt"),
    ("resume-tensors-truncated", ["train", "--resume", "{run}"], "tensors-truncated", "corrupt"),
    ("tensors-not-safetensors", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "tensors-not-safetensors", "corrupt"),
    ("resume-tensors-not-safetensors", ["train", "--resume", "{run}"], "tensors-not-safetensors", "corrupt"),
    ("tensors-foreign", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "tensors-foreign", "corrupt"),
    ("resume-tensors-missing", ["train", "--resume", "{run}"], "tensors-missing", "corrupt"),
    ("resume-state-not-json", ["train", "--resume", "{run}"], "state-not-json", "corrupt"),
    ("latest-points-nowhere", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "latest-points-nowhere", "corrupt"),
    ("eval-no-checkpoint", ["eval", "--suite", "toy-tilt", "--run", "{run}"], "no-checkpoints", "no checkpoint"),
]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The folder a command runs in, with the files the cases name."""
    (tmp_path / "afile").write_text("hello\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)  # not UTF-8
    (tmp_path / "bad.json").write_text("[\"a prompt\", \n")
    (tmp_path / "folder").mkdir()
    return tmp_path


def run_main(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`rtdmd-bench ARGS` in-process through the console script's entry point: (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # a wrong input never ends normally
        cli.main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_corpus_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("args,spoil,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_input_gives_one_message_exit_2_and_changes_nothing(reference, workspace, monkeypatch, capsys,
                                                                   args, spoil, needle):
    run = workspace / "run"
    if spoil is not None:
        shutil.copytree(reference, run)
        SPOIL[spoil](run)
    before_ref, before_ws = tree_hashes(reference), tree_hashes(workspace)
    argv = [a.format(ref=reference, run=run, refparent=reference.parent) for a in args]
    code, out, err = run_main(argv, workspace, monkeypatch, capsys)
    assert code == 2, (code, out, err)
    text = out + err
    assert "Traceback" not in text and not any(c in text for c in PANEL), text
    assert err.count("error:") == 1 and "error:" not in out, err
    message = err[err.index("error:"):]
    assert needle in " ".join(message.split()), message
    assert tree_hashes(reference) == before_ref, "the reference run changed"
    assert tree_hashes(workspace) == before_ws, "the command wrote into its folder"


def test_usage_errors_are_one_line(workspace, monkeypatch, capsys):
    usage = [c[1] for c in CASES[:19]]  # the typer/click cases above
    for args in usage:
        code, out, err = run_main(args, workspace, monkeypatch, capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (args, out, err)
        assert err.startswith("error: ") and "--help" in err, err


@pytest.mark.parametrize("args,needle", [(["train", "--bogus"], "No such option: --bogus"),
                                         (["plan", "--method", "dmd2", "--base", "sd3", "--precision", "fp8"], "fp8")])
def test_console_script_prints_one_line_and_exits_2(tmp_path, args, needle):
    out = subprocess.run([sys.executable, "-m", "rtdmd_bench", *args], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []
