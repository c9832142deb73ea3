"""Gradient accumulation (`train.micro_batches`): a step split into micro-batches takes the same
optimiser step as the whole step (issue 10, item 14: the GPU count changes speed, not the result)."""

from __future__ import annotations

import math

import pytest
import torch

from methods.acdmd import ACDMD
from methods.dmd2 import DMD2
from methods.rtdmd import RTDMD
from rtdmd_bench.compute import ComputeMeter, MeteredBase
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet

TOY = dict(hidden=32, depth=2, fit_steps=20, fit_batch=128)


def _toy():
    from rtdmd_bench.bases.toy2d import Toy2D
    from rtdmd_bench.rewards.toy import QuadraticReward
    base = Toy2D(Toy2D.Config(**TOY))
    meter = ComputeMeter(budget_flops=1e12)
    base.prepare(meter)
    rewards = RewardSet({"toy-quadratic": QuadraticReward(QuadraticReward.Config())}, {"toy-quadratic": 1.0})
    return MeteredBase(base, meter), rewards, meter


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


CASES = {
    "dmd2": (DMD2, DMD2.Config(num_fake_per_gen=2), (0, 1)),  # a generator step and a fake-only step
    "acdmd": (ACDMD, ACDMD.Config(num_fake_per_gen=2), (0, 1)),
    "rtdmd-stage1": (RTDMD, RTDMD.Config(stage1_fraction=1.0, group_size=2, stage1=ACDMD.Config(num_fake_per_gen=2)), (0, 1)),
    "rtdmd-stage2": (RTDMD, RTDMD.Config(stage1_fraction=0.0, group_size=2, num_batches_per_epoch=2, ema_interval=1), (0, 1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_micro_batches_take_the_same_step_as_the_whole_batch(name):
    cls, cfg, steps = CASES[name]
    runs = []
    for micro in (1, 2, 4):
        base, rewards, meter = _toy()
        m = cls(cfg, base, rewards, meter)
        logs = [m.train_step(Batch(base.train_prompts() * 2, seed=20 + s, micro_batches=micro), s) for s in steps]
        with m.generator():
            ema = _flat(base.trainable("student"))
        runs.append((_flat(base.trainable("student")), _flat(base.trainable("fake")), ema, logs, meter.used))
    ref = runs[0]
    for student, fake, ema, logs, used in runs[1:]:
        torch.testing.assert_close(student, ref[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fake, ref[1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ema, ref[2], rtol=1e-4, atol=1e-6)
        assert used == pytest.approx(ref[4], rel=1e-9)  # the same work, counted per micro-batch
        for got, want in zip(logs, ref[3]):
            assert got.keys() == want.keys()
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-3, abs=1e-6), k


def test_micro_batch_rows_and_draws_are_the_whole_steps():
    batch = Batch([f"p{i}" for i in range(8)], seed=3, micro_batches=4)
    chunks = batch.chunks()
    assert [c.local(c.prompts) for c in chunks] == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"], ["p6", "p7"]]
    whole = Batch(batch.prompts, seed=3).random().randn((8, 2))
    parts = torch.cat([c.random().randn((2, 2)) for c in chunks])
    assert torch.equal(parts, whole)
    shared = {c.random().integer(0, 1000) for c in chunks}
    assert shared == {Batch(batch.prompts, seed=3).random().integer(0, 1000)}
    with pytest.raises(RuntimeError, match="micro-batch"):
        chunks[0].shard.gather(torch.zeros(2))
    with pytest.raises(UserError, match="micro-batches"):
        Batch([f"p{i}" for i in range(6)], seed=3, micro_batches=4).chunks()[0].local([f"p{i}" for i in range(6)])


def test_train_refuses_micro_batches_for_methods_without_them(tmp_path):
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.train import train

    cfg = resolve_config("gdmd", "toy2d", ["train.micro_batches=2", "base.fit_steps=20", "train.budget=1e8"])
    with pytest.raises(UserError, match="micro-batches"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder was written
    with pytest.raises(UserError, match="micro_batches"):
        train(resolve_config("dmd2", "toy2d", ["train.micro_batches=0"]), tmp_path / "run0")


def test_the_train_loop_with_micro_batches_reproduces_the_plain_run(tmp_path):
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.train import train

    sets = ["base.fit_steps=20", "train.batch_size=16", "train.budget=2e8", "train.threads=1"]
    a = train(resolve_config("dmd2", "toy2d", sets), tmp_path / "a")
    b = train(resolve_config("dmd2", "toy2d", sets + ["train.micro_batches=4"]), tmp_path / "b")
    assert a["steps"] == b["steps"] and math.isclose(a["compute"]["used_flops"], b["compute"]["used_flops"])
