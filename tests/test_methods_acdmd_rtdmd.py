"""AC-DMD and RTDMD: the AC-DMD terms against independent computations, RTDMD's SubGRPO rollout,
advantage filtering, hybrid loss composition, the stage switch and resume, and toy2d smoke tests."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from methods.acdmd import ACDMD
from methods.rtdmd import RTDMD
from rtdmd_bench.compute import ComputeMeter, MeteredBase
from rtdmd_bench.core import acdmd_terms as ac
from rtdmd_bench.core import dmd, rl
from rtdmd_bench.core.parallel import BatchRandom, Shard
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet

TOY = dict(hidden=32, depth=2, fit_steps=20, fit_batch=128)  # tiny: the fit takes well under a second


def toy(budget: float = 1e12):
    from rtdmd_bench.bases.toy2d import Toy2D
    from rtdmd_bench.rewards.toy import QuadraticReward
    base = Toy2D(Toy2D.Config(**TOY))
    meter = ComputeMeter(budget_flops=budget)
    base.prepare(meter)
    rewards = RewardSet({"toy-quadratic": QuadraticReward(QuadraticReward.Config())}, {"toy-quadratic": 1.0}, beta=1.0)
    return MeteredBase(base, meter), rewards, meter


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def stage2_only(**kw) -> RTDMD.Config:
    """Stage 2 from the first step (fraction 0), small groups."""
    return RTDMD.Config(stage1_fraction=0.0, group_size=4, **kw)


# ---------------------------------------------------------------- AC-DMD terms
def test_renoise_level_stays_in_the_sub_interval_and_the_clamp():
    g = BatchRandom(0)
    s = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.975] * 200)
    for dist in ("uniform", "logit_normal"):
        t = ac.renoise_level(s, g, dist, 0.01, 0.02, 0.98)
        assert bool((t > s).all()) and bool((t >= 0.02).all())
        assert bool((t[s < 0.9] <= 0.98).all()) and bool((t >= s + 0.01 - 1e-6).all())


def test_fake_score_loss_matches_weighted_ambient_mse_without_consistency():
    rng = BatchRandom(1)
    g = rng.generator
    x_s, n = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    s, t = torch.full((6,), 0.5), torch.linspace(0.55, 0.95, 6)
    a, b = (1 - t) / (1 - s), torch.sqrt(t ** 2 - ((1 - t) / (1 - s)) ** 2 * s ** 2)
    sub = ac.SubInterval(x_s, s, t, n, a[:, None] * x_s + b[:, None] * n)
    w_lin = torch.randn(2, 2, generator=g)
    fake = lambda x, sig: x @ w_lin + sig[:, None]  # noqa: E731 - any differentiable field
    loss, _ = ac.fake_score_loss(fake, sub, ac.ACDMDConfig(), rng, consistency=False)
    # Independent: v* = -x_s/(1-s) + (t + (1-t) s^2/(1-s)^2)/b n, weight min(1, 10 b^2).
    target = -x_s / (1 - s)[:, None] + ((t + (1 - t) * s ** 2 / (1 - s) ** 2) / b)[:, None] * n
    expected = (torch.clamp(10 * b ** 2, max=1.0) * ((fake(sub.x_t, t) - target) ** 2).mean(1)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_consistency_reuses_the_anchor_and_equals_the_core_estimator():
    rng = BatchRandom(2)
    x0 = torch.randn(5, 2, generator=rng.generator)
    sub = ac.sub_interval(x0, torch.zeros(5), torch.full((5,), 0.6), rng)
    calls = []

    def fake(x, sig):
        calls.append(x)
        return 0.7 * x - 0.1 * sig[:, None]

    cfg = ac.ACDMDConfig()
    loss, logs = ac.fake_score_loss(fake, sub, cfg, BatchRandom(3), consistency=True)
    assert len(calls) == 3  # v at x_t once (reused as the anchor) + h at the two CPS moves
    # Same draws, the core estimator with a plain h (which re-evaluates the anchor).
    g2 = torch.Generator().manual_seed(3)
    delta = torch.randint(1, 201, (5,), generator=g2).float() / 1000
    n1, n2 = torch.randn(5, 2, generator=g2), torch.randn(5, 2, generator=g2)
    h = lambda x, sig: x - sig[:, None] * fake(x, sig)  # noqa: E731
    cons = dmd.consistency_loss(h, sub.x_t, sub.t, fake(sub.x_t, sub.t), (sub.t - delta).clamp_min(0), cfg.eta, n1, n2)
    assert logs["loss_consistency"] == pytest.approx(float(cons), rel=1e-5)
    assert float(loss) == pytest.approx(logs["loss_fake_ac"] + 0.01 * float(cons), rel=1e-5)


def test_generator_dm_loss_gradient_is_the_normalised_shared_noise_difference():
    rng = BatchRandom(4)
    g = rng.generator
    x_s = torch.randn(4, 2, generator=g).requires_grad_(True)
    s, t = torch.full((4,), 0.5), torch.full((4,), 0.8)
    sub = ac.sub_interval(x_s, s, t, rng)
    v_real, v_fake, z = (torch.randn(4, 2, generator=g) for _ in range(3))
    ac.generator_dm_loss(x_s, sub, v_real, v_fake, 0.9, z, "mean_abs").backward()
    # Independent CPS maps t -> s with the SAME z: the noise cancels in the difference.
    c, sn = math.cos(0.45 * math.pi), math.sin(0.45 * math.pi)

    def cps(v):
        x0, eps = sub.x_t - 0.8 * v, sub.x_t + 0.2 * v
        return 0.5 * x0 + 0.5 * (c * eps + sn * z)

    g_dm = (cps(v_fake) - cps(v_real)) / (x_s.detach() - cps(v_real)).abs().mean(1, keepdim=True)
    assert torch.allclose(x_s.grad, g_dm / x_s.numel(), atol=1e-6)


# ---------------------------------------------------------------- RTDMD stage 2 pieces
def test_subset_and_group_noise_are_shared_inside_a_real_rtdmd_rollout():
    base, rewards, meter = toy()
    ranks = [RTDMD(stage2_only(), base, rewards, meter) for _ in range(2)]
    seen = []
    for rank, m in enumerate(ranks):
        orig = m.group_rollout

        def capture(prompts, cond, subset, seed, gen, orig=orig, rank=rank):
            # A simulated rank: same batch seed, different rank-local RNG for the free noise.
            r = orig(prompts, cond, subset, seed, BatchRandom(1000 + rank))
            seen.append((subset, r))
            return r

        m.group_rollout = capture
    state = ranks[0].state_dict()
    for m in ranks:
        m.load_state_dict(state)
        m.train_step(Batch(prompts=base.train_prompts()[:3] * 4, seed=11), step=0)
    (sub0, r0), (sub1, r1) = seen
    assert sub0 == sub1 == rl.choose_subset(3, 2, 11) and len(sub0) == 2
    free = [j for j in range(3) if j not in sub0]
    for j in range(3):
        z = r0.noises[j].view(3, 4, 2)  # (groups, K, D)
        within_equal = bool((z == z[:, :1]).all())
        assert within_equal == (j in free)
    for j in free:
        assert torch.equal(r0.noises[j], r1.noises[j])  # every rank draws the same shared noise
        z = r0.noises[j].view(3, 4, 2)
        assert not torch.equal(z[0, 0], z[1, 0])  # but groups differ
    assert not torch.equal(r0.noises[sub0[0]], r1.noises[sub0[0]])


class HalfConstantReward:
    """r = x_0 for prompts other than the first toy prompt, 0 for it (its group has no signal)."""

    name, differentiable = "half-constant", True

    def __init__(self, constant_prompt: str) -> None:
        self.constant_prompt = constant_prompt

    def __call__(self, images, prompts):
        mask = torch.tensor([p != self.constant_prompt for p in prompts], dtype=images.dtype)
        return images[:, 0] * mask


def _one_chunk(prompts, x0):
    from types import SimpleNamespace

    from rtdmd_bench.core.reward_tilted import Chunk
    return [Chunk(prompts, None, BatchRandom(0), Shard(), SimpleNamespace(xs=[x0]))]


def test_zero_advantage_samples_are_dropped_from_the_ppo_term():
    base, _, meter = toy()
    prompts = base.train_prompts()[:2]
    rewards = RewardSet({"h": HalfConstantReward(prompts[0])}, {"h": 1.0}, beta=1.0)
    reps = [p for p in prompts for _ in range(4)]
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    batch = Batch(prompts=reps, seed=3)
    # The suite's former rule drops the constant group (its weighted advantage is exactly 0)...
    strict = RTDMD(stage2_only(drop_rule="strict"), base, rewards, meter)
    a, keep, _ = strict.advantages(_one_chunk(reps, x0), reps, batch)
    assert keep.tolist() == [False] * 4 + [True] * 4
    # ...the official one keeps it: re-standardised it is -mean/std, tiny but not exactly 0.
    official = RTDMD(stage2_only(num_batches_per_epoch=1), base, rewards, meter)
    a_off, keep_off, _ = official.advantages(_one_chunk(reps, x0), reps, batch)
    assert keep_off.tolist() == [v != 0.0 for v in a_off.tolist()] and bool(keep_off[:4].all())
    assert float(a_off[:4].abs().max()) < 1e-6
    # PPO on the kept samples only: changing the dropped samples' advantages changes nothing.
    lp = torch.randn(8, generator=torch.Generator().manual_seed(1))
    a2 = a.clone()
    a2[:4] = 100.0
    assert float(rl.ppo_clip_loss(lp, lp.detach(), a, 1e-5, 5.0, keep)) == \
        pytest.approx(float(rl.ppo_clip_loss(lp, lp.detach(), a2, 1e-5, 5.0, keep)))
    # A reward that is constant everywhere: every advantage is exactly 0. Strict: nothing kept;
    # official: a sub-batch of random samples is kept (padding), with advantage 0. PPO term 0 in both.
    flat_rewards = RewardSet({"h": HalfConstantReward(prompts[0])}, {"h": 1.0})
    for rule, kept_frac in (("strict", 0.0), ("official", 1.0)):
        m = RTDMD(stage2_only(reward_term="grpo", drop_rule=rule), base, flat_rewards, meter)
        logs = m.train_step(Batch(prompts=[prompts[0]] * 2, seed=3), step=0)
        assert logs["adv_kept_frac"] == kept_frac and logs["loss_ppo"] == 0.0


@pytest.mark.parametrize("term", ["hybrid", "grpo", "backprop"])
def test_hybrid_loss_has_both_parts_and_ablations_drop_one(term):
    base, rewards, meter = toy()
    cfg = stage2_only(reward_term=term)
    logs = RTDMD(cfg, base, rewards, meter).train_step(Batch(prompts=base.train_prompts()[:2], seed=5), step=0)
    assert ("loss_ppo" in logs) == (term != "backprop")
    assert ("loss_bp" in logs) == (term != "grpo")
    # Independent recomposition of the generator loss (official: averaged over trained steps).
    total = cfg.lambda_dm * logs["loss_dm"] + logs.get("loss_ppo", 0.0) + cfg.lambda_r * logs.get("loss_bp", 0.0)
    steps = cfg.subset_size + 1 if term != "backprop" else 1
    assert logs["loss_generator"] == pytest.approx(total / steps, rel=1e-4, abs=1e-9)
    if term != "grpo":  # the quadratic reward is <= 0 < tau, so the hinge is always active
        assert logs["loss_bp"] == pytest.approx(cfg.tau - logs["bp_reward_mean"], rel=1e-5)


def test_beta_reward_weighting_is_lambda_dm_over_beta_and_latent_size():
    base, rewards, meter = toy()
    m = RTDMD(stage2_only(reward_weighting="beta"), base, replace(rewards, beta=0.5), meter)
    assert m.reward_backprop_weight() == pytest.approx(1e-3 / (0.5 * 2))
    assert RTDMD(stage2_only(), base, rewards, meter).reward_backprop_weight() == 1e-4


def test_rtdmd_rejects_settings_it_cannot_run():
    base, rewards, _ = toy()
    with pytest.raises(UserError, match="finite --budget"):
        RTDMD(RTDMD.Config(), base, rewards, ComputeMeter())
    with pytest.raises(UserError, match="subset_size"):
        RTDMD(stage2_only(subset_size=4), base, rewards, ComputeMeter(budget_flops=1.0))


# ---------------------------------------------------------------- stage switch and resume
def test_stage_switch_happens_at_the_fraction_and_survives_resume():
    base, rewards, meter = toy(budget=1.5e7)
    cfg = RTDMD.Config(stage1_fraction=0.1, group_size=2)
    m = RTDMD(cfg, base, rewards, meter)
    used_before = []
    step = 0
    while m.switch_step is None:
        used_before.append(meter.used)
        stage = m.train_step(Batch(prompts=base.train_prompts()[:2], seed=100 + step), step)["stage"]
        step += 1
    k = m.switch_step
    assert stage == 2.0 and k == step - 1
    assert used_before[k] >= 0.1 * 1.5e7 > used_before[k - 1]
    assert m.state.opt_g.param_groups[0]["lr"] == cfg.lr
    # Resume into a fresh method on a fresh base: the same next step, bit for bit. (Deep copies,
    # as a checkpoint file would give: optimiser state dicts hold the live moment tensors.)
    snapshot, meter_state = copy.deepcopy(m.state_dict()), copy.deepcopy(meter.state_dict())
    base2, _, meter2 = toy(budget=1.5e7)
    m2 = RTDMD(cfg, base2, rewards, meter2)
    m2.load_state_dict(snapshot)
    meter2.load_state_dict(meter_state)
    assert m2.switch_step == k and m2.state.opt_g.param_groups[0]["lr"] == cfg.lr
    batch = Batch(prompts=base.train_prompts()[:2], seed=999)
    assert m.train_step(batch, step) == m2.train_step(batch, step)
    assert torch.equal(flat(base.trainable("student")), flat(base2.trainable("student")))


def test_stage2_starts_from_the_stage1_ema_generator():
    base, rewards, meter = toy(budget=1e9)
    m = RTDMD(RTDMD.Config(stage1_fraction=0.5, group_size=2), base, rewards, meter)
    m.train_step(Batch(prompts=base.train_prompts()[:2], seed=1), step=9)  # a stage-1 generator step
    ema = torch.cat([s.flatten() for s in m.state.ema.shadow])
    assert not torch.equal(ema, flat(base.trainable("student")))
    m._enter_stage2(10)
    assert torch.equal(flat(base.trainable("student")), ema)


# ---------------------------------------------------------------- smoke tests
@pytest.mark.parametrize("make", [
    lambda: (ACDMD, ACDMD.Config(), 9),  # step 9: the TTUR-10 generator step
    lambda: (ACDMD, ACDMD.Config(fake_step_conditioning=True, fake_t_dist="logit_normal", num_fake_per_gen=1), 0),
    lambda: (RTDMD, RTDMD.Config(stage1_fraction=0.5, group_size=2), 9),
    lambda: (RTDMD, stage2_only(), 0),
    lambda: (RTDMD, stage2_only(dm_term="dmd", log_prob="exact", subset_size=3), 0),
], ids=["acdmd", "acdmd-ablations", "rtdmd-stage1", "rtdmd-stage2", "rtdmd-stage2-ablations"])
def test_one_step_on_toy2d_trains_both_networks(make):
    cls, cfg, step = make()
    base, rewards, meter = toy(budget=1e12)
    m = cls(cfg, base, rewards, meter)
    student0, fake0, used0 = flat(base.trainable("student")), flat(base.trainable("fake")), meter.used
    logs = m.train_step(Batch(prompts=base.train_prompts(), seed=7), step=step)
    assert not torch.equal(flat(base.trainable("student")), student0)
    assert not torch.equal(flat(base.trainable("fake")), fake0)
    assert meter.used > used0
    assert logs and all(math.isfinite(v) for v in logs.values())
    with m.generator():  # the EMA swap restores the live weights afterwards
        pass
    assert m.name in ("acdmd", "rtdmd") and "Harahan/RTDMD" in m.source
    live = flat(base.trainable("student"))
    m.load_state_dict(m.state_dict())
    assert torch.equal(flat(base.trainable("student")), live)


@pytest.mark.slow
def test_rtdmd_run_killed_after_the_switch_resumes_to_the_same_weights(tmp_path):
    """Through the real loop and checkpoint files: the switch step and stage-2 state round-trip."""
    import json

    from safetensors.torch import load_file

    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.runs import RunDir
    from rtdmd_bench.train import train
    sets = ["base.fit_steps=200", "train.batch_size=4", "train.checkpoint_every=5", "train.log_every=1",
            "train.threads=1", "train.budget=6e8", "method.stage1_fraction=0.3", "method.group_size=4"]
    cfg = resolve_config("rtdmd", "toy2d", sets)
    straight = train(cfg, tmp_path / "a")
    stages = [json.loads(line).get("stage") for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    first_stage2 = stages.index(2.0) + 1  # steps are logged 1-based
    train(cfg, tmp_path / "b", stop_after_steps=first_stage2 + 7)  # last checkpoint is past the switch
    resumed = train(cfg, tmp_path / "b", resume=True)
    assert resumed["steps"] == straight["steps"] and 1.0 in stages
    a, b = (load_file(str(RunDir(tmp_path / r).latest_checkpoint() / "tensors.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
