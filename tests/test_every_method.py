"""Every registered method, with the overrides it declares for tiny batches
(`smoke_test_overrides`): on toy2d, two steps train both networks, advance the meter and log finite
losses, and a run killed between checkpoints resumes to the same weights. (On the real diffusers
path: tests/test_tiny_sd3_methods.py; with two processes: tests/test_distributed_training.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from rtdmd_bench import registry
from rtdmd_bench.config import resolve_config
from rtdmd_bench.runs import RunDir
from rtdmd_bench.train import batch_for, build, train

TOY = ["base.fit_steps=200", "train.batch_size=16", "train.threads=1", "train.log_every=1"]
TOY_BUDGET = "train.budget=1.2e8"  # a few steps of every method; rtdmd reaches stage 2


def smoke_overrides(method: str) -> list[str]:
    """What the method declares for the smoke tests (nothing: its defaults)."""
    return list(getattr(registry.resolve("methods", method), "smoke_test_overrides", ()))


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def test_every_method_declares_overrides_that_resolve():
    for method in registry.names("methods"):
        resolve_config(method, "toy2d", TOY + smoke_overrides(method))  # unknown keys would raise


@pytest.mark.parametrize("method", registry.names("methods"))
def test_two_steps_on_toy2d_train_both_networks_and_charge_the_meter(method):
    b = build(resolve_config(method, "toy2d", TOY + smoke_overrides(method)))
    student0, fake0, used0 = _flat(b.base.trainable("student")), _flat(b.base.trainable("fake")), b.meter.used
    for step in range(2):  # under the smoke overrides one of them is a generator step
        logs = b.method.train_step(batch_for(step, 0, b.pools, 16), step)
        assert logs and all(math.isfinite(v) for v in logs.values()), logs
    assert not torch.equal(_flat(b.base.trainable("student")), student0)
    assert not torch.equal(_flat(b.base.trainable("fake")), fake0)
    assert b.meter.used > used0


@pytest.mark.parametrize("method", registry.names("methods"))
def test_a_run_killed_between_checkpoints_resumes_to_the_same_weights_and_metrics(method, tmp_path):
    # Lines every 3 steps: the line at step 3 holds the means of steps 1-3, two of them from before the kill.
    cfg = resolve_config(method, "toy2d", TOY + smoke_overrides(method) + [TOY_BUDGET, "train.checkpoint_every=2",
                                                                           "train.log_every=3"])
    straight = train(cfg, tmp_path / "straight")
    assert train(cfg, tmp_path / "killed", stop_after_steps=3) == {}  # the last checkpoint is step 2
    resumed = train(cfg, tmp_path / "killed", resume=True)
    assert resumed["steps"] == straight["steps"] >= 4
    assert resumed["compute"]["used_flops"] == straight["compute"]["used_flops"]
    a, b = (load_file(str(RunDir(tmp_path / r).latest_checkpoint() / "tensors.safetensors"))
            for r in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [[{k: v for k, v in r.items() if k != "wall_time"} for r in RunDir(tmp_path / r).metrics()]
             for r in ("straight", "killed")]
    assert lines[0] == lines[1] and lines[0][0]["step"] == 3 and lines[0][0]["n_steps"] == 3
