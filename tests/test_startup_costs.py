"""What a CPU run pays once and per step (issue 15, "Time"): heavy packages stay unimported on the
toy path, and the shortcuts taken on the hot path (lazily listed parameters, remembered lookups,
remembered evaluation noise) give exactly what the long way gives."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from rtdmd_bench.bases.toy2d import Toy2D
from rtdmd_bench.compute import ComputeMeter, MeteredBase
from rtdmd_bench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# Model libraries the real bases, rewards and suites need; a toy2d run must not pay for them.
NOT_ON_THE_TOY_PATH = ("diffusers", "transformers", "open_clip", "accelerate", "peft", "scipy.stats", "sklearn",
                       "matplotlib")


@pytest.mark.slow
def test_cli_toy2d_train_with_curve_and_eval_imports_no_model_library(tmp_path):
    """`rtdmd-bench train` on toy2d with the bench's curve and evaluation suite, in a fresh process:
    none of the model libraries is imported (sys.modules at the end)."""
    script = (
        "import json, sys\n"
        "sys.argv = ['rtdmd-bench'] + sys.argv[1:]\n"
        "from rtdmd_bench.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print(json.dumps({{m: m in sys.modules for m in {list(NOT_ON_THE_TOY_PATH)!r}}}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, "train", "--method", "dmd2", "--base", "toy2d", "--budget", "2e9",
         "--set", "train.curve_points=2", "--set", "train.curve_suite=toy-tilt",
         "--set", "train.curve_images_per_prompt=20", "--eval", "toy-tilt", "--out", str(tmp_path), "--run-id", "r"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (tmp_path / "r" / "eval" / "toy-tilt.json").exists()  # it did train, take the curve and evaluate
    assert loaded == {m: False for m in NOT_ON_THE_TOY_PATH}


class CountingToy(Toy2D):
    """toy2d that counts how often the meter asks for a role's trainable parameters."""

    asked = 0

    def trainable(self, role):
        CountingToy.asked += 1
        return super().trainable(role)


def test_metered_base_lists_parameters_only_when_it_measures(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    cfg = Toy2D.Config(fit_steps=5, fit_batch=128, hidden=16)
    base = CountingToy(cfg)
    base.prepare(ComputeMeter())
    meter = ComputeMeter()
    mb = MeteredBase(base, meter)
    cond = base.encode(base.train_prompts()[:3])
    CountingToy.asked = 0
    for _ in range(4):  # one shape, with grad: measured once, charged four times
        mb.velocity("student", torch.zeros(3, 2), torch.full((3,), 0.5), cond)
    assert CountingToy.asked == 1 and meter.measured_calls == 1
    # The charge equals the one measured with the parameter list given up front (the old call).
    reference = ComputeMeter()
    reference.call("student", base.velocity, "student", torch.zeros(3, 2), torch.full((3,), 0.5), cond,
                   cfg=None, step=None, params=list(base.nets["student"].parameters()))
    assert meter.flops["student"]["fwd"] == 4 * reference.flops["student"]["fwd"] > 0
    assert meter.flops["student"]["bwd"] == 4 * reference.flops["student"]["bwd"] > 0


def test_toy2d_encode_is_the_prompt_index_and_names_unknown_prompts():
    base = Toy2D()
    names = base.train_prompts()
    batch = [names[i] for i in (3, 0, 0, 2, 1, 3)]
    assert base.encode(batch).tolist() == [3, 0, 0, 2, 1, 3]
    assert base.encode(batch).dtype == torch.long
    with pytest.raises(UserError, match="unknown toy2d prompt 'a cat'"):
        base.encode([names[0], "a cat"])


def test_digits_prompt_classes_are_remembered_but_still_checked():
    from rtdmd_bench.digits.data import parse_prompts

    assert parse_prompts(["a handwritten digit seven", "3", "number two", "3"] * 2).tolist() == [7, 3, 2, 3] * 2
    for _ in range(2):  # a malformed prompt is refused every time, not remembered as a class
        with pytest.raises(UserError, match="cannot read a digit class"):
            parse_prompts(["3", "a handwritten cat"])


def test_versions_are_the_installed_ones_and_a_copy():
    from rtdmd_bench.runs import versions

    first = versions()
    assert first["torch"] == metadata.version("torch") and first["numpy"] == metadata.version("numpy")
    first["torch"] = "edited"
    assert versions()["torch"] == metadata.version("torch")


def _noise_by_hand(seed: int, prompt_index: int, j: int, num_steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    digest = hashlib.sha256(f"eval|{seed}|{prompt_index}|{j}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
    return torch.randn((num_steps + 1, *shape), generator=g)


def test_remembered_evaluation_noise_is_the_per_image_draw():
    from rtdmd_bench import samples

    samples._NOISE_MEMO.clear()
    expected = torch.stack([_noise_by_hand(5, 2, j, 4, (2,)) for j in range(3, 9)], dim=1)  # (5, 6, 2)
    first = samples._noises((2,), 5, 2, range(3, 9), 4)
    assert torch.equal(first, expected)
    first.add_(1.0)  # a caller writing into its noise does not change what the next caller gets
    again = samples._noises((2,), 5, 2, range(3, 9), 4)
    assert torch.equal(again, expected)
    assert torch.equal(samples._noises((2,), 5, 2, range(3, 9), 4, keep=1), expected[:1])
    assert torch.equal(samples._noises((2,), 6, 2, range(3, 9), 4)[:, 0], _noise_by_hand(6, 2, 3, 4, (2,)))
    total = sum(t.numel() * t.element_size() for t in samples._NOISE_MEMO.values())
    assert total <= samples._NOISE_MEMO_BYTES
