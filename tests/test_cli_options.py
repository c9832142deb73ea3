"""Closed sets of CLI values are Literal types that agree with the code that uses them, `--help`
lists them, and `--version` prints the package version and git commit (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from rtdmd_bench import cli, config, plan, registry, reproduce
from rtdmd_bench.errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtdmd_bench", *args], capture_output=True, text=True, cwd=cwd)


def test_literal_choices_agree_with_the_code_that_uses_them():
    assert get_args(cli.Kind) == registry.KINDS
    assert get_args(cli.Benchmark) == tuple(reproduce.GROUPS)
    assert get_args(cli.PlanPrecision) == tuple(plan.WEIGHT_BYTES)
    assert get_args(cli.PlanGpu) == tuple(plan.GPU_PEAK_FLOPS)
    assert get_args(config.Parallelism) == ("ddp", "fsdp")
    with pytest.raises(UserError, match="ddp or fsdp"):  # what plan refuses is outside the Literal
        plan.compute_plan("dmd2", "sd3", parallelism="tp")


@pytest.mark.parametrize("command,choices", [
    (["plan"], ["bf16", "fp32", "ddp", "fsdp", "h100", "a100"]),
    (["eval"], ["cps", "euler", "euler-pipeline", "euler-few-step"]),
    (["list"], list(registry.KINDS)),
    (["reproduce"], ["toy", "toy2d", "digits", "shapes"]),
    (["prepare"], ["digits", "shapes", "geneval-train"]),
])
def test_help_lists_every_choice(command, choices):
    out = run(*command, "--help")
    assert out.returncode == 0
    assert all(c in out.stdout for c in choices), out.stdout


def test_version_prints_the_package_version_and_the_git_commit():
    out = run("--version", cwd=ROOT)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith(f"rtdmd-bench {version} (git {commit}"), out.stdout


def test_no_arguments_prints_the_help_and_exits_0(tmp_path):
    out = run(cwd=tmp_path)
    assert out.returncode == 0 and "Usage:" in out.stdout and "train" in out.stdout and out.stderr == ""
