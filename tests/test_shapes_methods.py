"""Every registered method (and rtdmd's GRPO-only and backprop-only forms) trains on the `shapes`
base unchanged: two steps move the student and the fake score and charge the meter. A tiny
teacher and proxy (own cache keys) keep it fast; the shapes-proxy reward is differentiable."""

from __future__ import annotations

import math

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.config import resolve_config
from rtdmd_bench.train import batch_for, build

TINY = ["base.teacher.train_steps=20", "base.teacher.dataset_size=128", "base.teacher.hidden=32",
        "base.teacher.blocks=1", "base.require_teacher_check=false", "base.check_samples_per_prompt=1",
        "base.check_steps=2", "base.progress=false", "reward.shapes-proxy.proxy.train_steps=5",
        "reward.shapes-proxy.proxy.dataset_size=64", "reward.shapes-proxy.proxy.held_out_size=16",
        "reward.shapes-proxy.proxy.channels=8", "reward.shapes-proxy.proxy.feature_dim=8",
        "reward.shapes-proxy.progress=false", "train.batch_size=16", "train.threads=1", "train.budget=1e30"]
ROWS = [(m, ()) for m in registry.names("methods")] + [
    ("rtdmd", ("method.reward_term=grpo",)), ("rtdmd", ("method.reward_term=backprop",))]


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", ROWS, ids=[f"{m}{'-' + e[0].split('=')[1] if e else ''}" for m, e in ROWS])
def test_two_steps_on_shapes_train_both_networks_and_charge_the_meter(method, extra):
    smoke = list(getattr(registry.resolve("methods", method), "smoke_test_overrides", ()))
    if method == "rtdmd":
        smoke.append("method.stage1_fraction=0")  # stage 2 (the reward terms) from the first step
    b = build(resolve_config(method, "shapes", TINY + smoke + list(extra)))
    student0, fake0, used0 = _flat(b.base.trainable("student")), _flat(b.base.trainable("fake")), b.meter.used
    for step in range(2):
        logs = b.method.train_step(batch_for(step, 0, b.pools, 16), step)
        assert logs and all(math.isfinite(v) for v in logs.values()), logs
    assert not torch.equal(_flat(b.base.trainable("student")), student0)
    assert not torch.equal(_flat(b.base.trainable("fake")), fake0)
    assert b.meter.used > used0


def test_the_proxy_reward_is_differentiable_and_bounded():
    b = build(resolve_config("dmd2", "shapes", TINY))
    proxy = b.rewards.rewards["shapes-proxy"]
    images = torch.rand(4, 3, 24, 24, requires_grad=True)
    r = proxy(images, ["a photo of a red circle"] * 4)
    assert r.shape == (4,) and bool(((r > 0) & (r < 1)).all())
    r.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.slow
def test_the_default_teacher_leaves_headroom_and_the_evaluator_is_accurate():
    # Trains the default teacher and measures the evaluator on first use (~3 minutes), cached after.
    from rtdmd_bench.bases.shapes import TEACHER_CHECK_FLOOR, prepare_shapes

    info = prepare_shapes()
    overall = info["teacher_check"]["overall"]
    assert TEACHER_CHECK_FLOOR <= overall <= 0.8, info["teacher_check"]  # learned the scenes, far from perfect
    assert info["teacher_check"]["position"] < 0.5 and info["teacher_check"]["color_attr"] < 0.5
    for source in ("renders", "decoded"):
        assert info["evaluator_accuracy"][source]["verdict_accuracy"] >= 0.98


def test_second_prepare_does_not_retrain_and_records_the_check(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from rtdmd_bench.bases import shapes as shapes_base
    from rtdmd_bench.config import resolve_config as resolve

    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(shapes_base, "evaluator_accuracy", lambda: {"measured": "elsewhere"})
    calls = []
    real = shapes_base.train_teacher
    monkeypatch.setattr(shapes_base, "train_teacher", lambda cfg, progress: calls.append(1) or real(cfg, progress))
    cfg = resolve("dmd2", "shapes", TINY).base
    first = shapes_base.prepare_shapes(cfg)
    mtime = Path(first["teacher"]).stat().st_mtime_ns
    second = shapes_base.prepare_shapes(cfg)
    assert calls == [1] and Path(first["teacher"]).stat().st_mtime_ns == mtime
    assert second["teacher_check"] == first["teacher_check"]
    meta = json.loads(Path(first["teacher_meta"]).read_text())
    assert list(meta["checks"].values()) == [first["teacher_check"]]
    assert first["evaluator_accuracy"] == {"measured": "elsewhere"}
