"""benchmarks/loop_overhead.py compares the harness with a bare loop: the comparison only means
something if both loops take the same updates, so a few steps of each must give the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rtdmd_bench.compute import ComputeMeter
from rtdmd_bench.runs import RunDir


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loop_overhead.py"
    spec = importlib.util.spec_from_file_location("loop_overhead", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _same_updates(base: str, sets: tuple[str, ...], tmp_path: Path) -> None:
    bench = _bench()
    # 6 steps: generator steps at 0 and 5 (num_fake_per_gen = 5), a fake-score step every step; the
    # harness's checkpoint at step 6 holds its weights (the budget outlasts it).
    cfg = bench.bench_config(base, sets + ("train.checkpoint_every=6", "train.curve_points=0"))
    from rtdmd_bench.train import train

    train(cfg, tmp_path / "run", stop_after_steps=6)
    step, state = RunDir(tmp_path / "run").load_checkpoint()
    assert step == 6
    nets = bench.bare_loop(cfg, 6)
    bare = {"student": nets.base.state_dict("student"), "fake": nets.base.state_dict("fake"),
            "ema": nets.ema.state_dict()}
    start = type(nets.base)(cfg.base)  # the starting weights: the run must have moved away from them
    start.prepare(ComputeMeter())
    for role in ("student", "fake"):
        for k, v in bare[role].items():
            assert torch.equal(state["method"][role][k], v), (role, k)
        assert any(not torch.equal(v, start.state_dict(role)[k]) for k, v in bare[role].items())
    for k, v in bare["ema"].items():
        assert torch.equal(state["method"]["ema"][k], v), k
    # the optimisers took the same number of steps (one Adam step count per parameter)
    assert int(state["method"]["opt_g"]["state"][0]["step"]) == 2
    assert int(state["method"]["opt_f"]["state"][0]["step"]) == 6


def test_bare_loop_takes_the_harness_updates_on_toy2d(tmp_path):
    _same_updates("toy2d", ("train.batch_size=32",), tmp_path)


@pytest.mark.slow
def test_bare_loop_takes_the_harness_updates_on_digits(tmp_path):
    _same_updates("digits", ("train.batch_size=8",), tmp_path)
