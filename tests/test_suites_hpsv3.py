"""The `hpsv3` suite: RTDMD's prompt file registered and verified, stand-in naming by every route,
the value = mean of the per-image mu, freeing the scorer, and the CLI end to end on tiny-sd3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.evaluate import build_suite
from rtdmd_bench.prompt_files import RTDMD_RAW
from rtdmd_bench.rewards.tiny import TinyHPSv3
from suites import prompt_sets


def test_rtdmd_hpsv3_prompt_file_is_registered(shared_data):
    spec = prompt_sets.OFFICIAL["hpsv3"]
    path = shared_data / "hpsv3" / "test.txt"
    assert spec.url == RTDMD_RAW + "hpsv3/test.txt"
    assert prompt_sets.sha256_of(path) == spec.sha256
    prompts = prompt_sets.load_prompts(path)
    assert len(prompts) == spec.lines == 1024 and len(set(prompts)) == 1024


@pytest.mark.parametrize("sets", [{"models": "stand-in"}, {"scorer": "tiny-hpsv3"}, {"hpsv3.models": "stand-in"}])
def test_every_stand_in_route_is_labelled(sets):
    suite = build_suite("hpsv3", {"limit": "1", **sets})
    assert suite.name == "hpsv3[stand-in]" and suite.version.startswith("hpsv3/stand-in-1")
    assert suite.rewards()["hpsv3"].name == "tiny-hpsv3[stand-in]"


def test_official_defaults_without_loading():
    suite = build_suite("hpsv3", {})
    assert (suite.name, suite.version, suite.seed, suite.images_per_prompt) == ("hpsv3", "hpsv3/transformers5-1", 42, 1)
    assert suite.scorer_names() == ("hpsv3",) and suite.cfg.hpsv3.dtype == "bfloat16"
    assert registry.resolve("rewards", "hpsv3").differentiable is False


def test_suite_value_is_the_mean_of_mu_and_scorer_settings_pass_through(tmp_path):
    (tmp_path / "p.txt").write_text("a fox\na boat\na fox\n")
    suite = build_suite("hpsv3", {"models": "stand-in", "prompts": str(tmp_path / "p.txt"), "batch_size": "2",
                                  "hpsv3.dtype": "float32", "hpsv3.batch_size": "1"})
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = suite.score(x, suite.prompts())
    per_image = TinyHPSv3(TinyHPSv3.Config(dtype="float32"))(x, ["a fox", "a boat", "a fox"])
    assert res["hpsv3"] == pytest.approx(sum(per_image.tolist()) / 3, abs=1e-6)  # duplicate lines count again
    assert res["scorers"]["hpsv3"]["config"]["dtype"] == "float32" and "STAND-IN" in res["note"]
    assert suite.release() == 1 and suite._rewards is None


@pytest.mark.slow
def test_cli_eval_on_tiny_sd3_with_the_stand_in(tmp_path, shared_data):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "rtdmd_bench", "eval", "--base", "tiny-sd3", "--suite", "hpsv3",
            "--out", str(tmp_path / "out"), "--batch-size", "2", "--set", "suite.models=stand-in",
            "--set", "suite.limit=2", "--set", f"suite.prompts={shared_data / 'hpsv3' / 'test.txt'}"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    files = list((tmp_path / "out" / "eval").glob("*.json"))
    assert [f.name for f in files] == ["hpsv3[stand-in].json"]
    res = json.loads(files[0].read_text())
    assert res["suite"] == "hpsv3[stand-in]" and res["num_prompts"] == 2 and res["seed"] == 42
    assert torch.isfinite(torch.tensor(res["metrics"]["hpsv3"])) and "STAND-IN" in res["metrics"]["note"]
