"""RTDMD's stage switch on LoRA bases (issue 10, item 4): the stage-1 adapters are frozen into the
model (the function is unchanged) and fresh Gaussian-init adapters train from there, as the
official merge_before_training + new LoRA does; checkpoints and export keep both."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from rtdmd_bench.bases.diffusers_flux2 import TinyFlux2  # noqa: E402
from rtdmd_bench.bases.diffusers_sd3 import TinySD3  # noqa: E402

PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]


def _base(cls):
    b = cls(cls.Config())
    b.prepare(None)
    return b


def _inputs(base):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, *base.latent_shape, generator=g), torch.tensor([0.9, 0.5]), base.encode(PROMPTS)


def _perturb(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("cls", [TinySD3, TinyFlux2], ids=["tiny-sd3 (shared weights)", "tiny-flux2 (own generator)"])
def test_restart_keeps_the_function_and_trains_a_fresh_adapter(cls):
    base = _base(cls)
    x, sigma, cond = _inputs(base)
    for role, seed in (("student", 1), ("fake", 2)):  # stage-1 training moved both adapters
        _perturb(base.trainable(role), seed)
    with torch.no_grad():
        before = {r: base.velocity(r, x, sigma, cond) for r in ("teacher", "student", "fake")}
    old = {r: list(base.trainable(r)) for r in ("student", "fake")}
    for role in ("student", "fake"):
        assert base.restart_adapter(role) is True
    with torch.no_grad():
        for r, v in before.items():  # stage-1 adapters frozen in, fresh ones start at B = 0: the same
            # function up to float rounding (peft sums the active adapters' deltas one by one)
            torch.testing.assert_close(base.velocity(r, x, sigma, cond), v, rtol=1e-5, atol=1e-6)
    for role in ("student", "fake"):
        new = base.trainable(role)
        assert {id(p) for p in new}.isdisjoint(id(p) for p in old[role])
        assert all(not p.requires_grad for p in old[role]) and all(p.requires_grad for p in new)
        b_weights = [p for name, p in zip(base._role_params(role), base._role_params(role).values())
                     if "lora_B" in name and not name.startswith("frozen")]
        assert b_weights and all(float(p.detach().abs().max()) == 0.0 for p in b_weights)  # Gaussian init: B = 0
    # A backward reaches only the fresh student adapter.
    loss = base.velocity("student", x, sigma, cond).square().mean()
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in base.trainable("student"))
    assert all(p.grad is None for p in old["student"] + old["fake"])


def test_restarted_state_round_trips_and_exports_both_adapters(tmp_path):
    base = _base(TinySD3)
    x, sigma, cond = _inputs(base)
    _perturb(base.trainable("student"), 3)
    base.restart_adapter("student")
    _perturb(base.trainable("student"), 4)  # stage 2 moved the fresh adapter too
    state = base.state_dict("student")
    assert any(k.startswith("frozen0.") for k in state) and any(not k.startswith("frozen0.") for k in state)
    other = _base(TinySD3)
    other.restart_adapter("student")  # a resumed run restarts before loading (RTDMD.load_state_dict)
    other.load_state_dict("student", state)
    with torch.no_grad():
        want = base.velocity("student", x, sigma, cond)
        torch.testing.assert_close(other.velocity("student", x, sigma, cond), want, rtol=0, atol=0)
        merged = base.merged_student()  # export merges the frozen and the fresh adapter
        got = base._forward(merged, x, sigma, {k: cond[k] for k in ("embeds", "pooled")})
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="already restarted"):
        base.restart_adapter("student")


def test_rtdmd_stage_switch_restarts_lora_adapters_unless_told_to_continue():
    from methods.rtdmd import RTDMD
    from rtdmd_bench.compute import ComputeMeter, MeteredBase
    from rtdmd_bench.interfaces import RewardSet

    for mode, fresh in (("restart", True), ("continue", False)):
        base = _base(TinySD3)
        meter = ComputeMeter(budget_flops=1e12)
        rewards = RewardSet({"r": _MeanReward()}, {"r": 1.0})
        m = RTDMD(dataclasses.replace(RTDMD.Config(stage2_adapters=mode), stage1_fraction=0.5),
                  MeteredBase(base, meter), rewards, meter)
        stage1_params = {id(p) for p in base.trainable("student")}
        m._enter_stage2(0)
        now = {id(p) for p in base.trainable("student")}
        assert now.isdisjoint(stage1_params) == fresh and (now == stage1_params) == (not fresh)
        assert {id(p) for p in m.state.student} == now  # the stage-2 optimiser trains what is trainable


class _MeanReward:
    name, differentiable = "mean", True

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))
