"""dmd-rl, gdmd, gndm/gndmr: loss terms against independent computations, and one-step smoke tests
of their variants on toy2d (parameters change, meter advances, finite losses). Every registered
method's own smoke and resume tests: tests/test_every_method.py."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from methods.dmd_rl import DMDRL
from methods.gdmd import GDMD
from methods.gndm import GNDM, GNDMR
from rtdmd_bench.compute import ComputeMeter, MeteredBase, MeteredReward
from rtdmd_bench.core import dmd, rewards_terms
from rtdmd_bench.core.parallel import BatchRandom
from rtdmd_bench.core.schedules import few_step_sigmas
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, RewardSet


# ---------------------------------------------------------------- an analytic Gaussian "base"
def gaussian_velocity(x: torch.Tensor, t: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Exact E[eps - x0 | x_t] for x0 ~ N(mean, std^2 I), x_t = (1-t) x0 + t eps (independent of
    the suite's toy code): E[x0 | x_t] = mean + (1-t) std^2 (x_t - (1-t) mean) / ((1-t)^2 std^2 + t^2)."""
    t = t[:, None]
    ex0 = mean + (1 - t) * std ** 2 * (x - (1 - t) * mean) / ((1 - t) ** 2 * std ** 2 + t ** 2)
    return (x - ex0) / t


class GaussianBase:
    """Teacher N((3, 0), 0.3^2), fake score fixed at N(0, 2^2): only what R_dm needs."""

    latent_shape = (2,)
    default_cfg = 1.0
    teacher_mean = torch.tensor([3.0, 0.0])

    def __init__(self) -> None:
        self.params = {r: [nn.Parameter(torch.zeros(1))] for r in ("student", "fake")}

    def encode(self, prompts):
        return torch.zeros(len(prompts))

    def velocity(self, role, x, sigma, cond, cfg=None, step=None):
        if role == "teacher":
            return gaussian_velocity(x, sigma, self.teacher_mean, 0.3)
        return gaussian_velocity(x, sigma, torch.zeros(2), 2.0)

    def sigmas(self, n):
        return few_step_sigmas(n)

    def trainable(self, role):
        return self.params[role]

    def decode(self, x):
        return x


# ---------------------------------------------------------------- R_dm
def test_dm_reward_matches_a_loop_over_draws():
    g = torch.Generator().manual_seed(0)
    m, b = 3, 5
    x0, noise = torch.randn(b, 2, generator=g), torch.randn(m, b, 2, generator=g)
    v_real, v_fake = torch.randn(m, b, 2, generator=g), torch.randn(m, b, 2, generator=g)
    w = torch.rand(m, b, generator=g)
    expected = torch.zeros(b)
    for i in range(m):
        for j in range(b):
            tgt = noise[i, j] - x0[j]
            expected[j] += w[i, j] * (((v_fake[i, j] - tgt) ** 2).sum() - ((v_real[i, j] - tgt) ** 2).sum()) / 2 / m
    assert torch.allclose(rewards_terms.dm_reward(x0, noise, v_real, v_fake, w), expected, atol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "elbo"])
def test_dm_reward_prefers_samples_the_teacher_explains(weighting):
    # A point at the teacher's mode vs one far from it, same fake score: higher reward at the mode.
    method = GNDM(GNDM.Config(group_size=2, num_dm_draws=256, dm_weighting=weighting), GaussianBase(),
                  RewardSet(), ComputeMeter())
    x0 = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    r = method.dm_reward(x0, ["p", "p"], BatchRandom(1))
    assert r[0] > r[1]
    assert r[0] > 0 > r[1]  # the teacher explains the mode better than the broad fake, and vice versa


def test_dm_reward_expectation_is_minus_the_score_mismatch_on_generator_samples():
    # x0 ~ p_fake with the exact fake velocity: the cross term vanishes, so for every t
    # E[R_dm] = -E[w ||v_fake - v_real||^2] / D <= 0 (the sense in which E_theta[R_dm] ~ -KL).
    g = torch.Generator().manual_seed(11)
    n = 200_000
    fake_mean, real_mean = torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, -0.5], dtype=torch.float64)
    x0 = 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)  # p_fake = N(0, 1.5^2)
    eps = torch.randn(1, n, 2, generator=g, dtype=torch.float64)
    t = 0.1 + 0.8 * torch.rand(1, n, generator=g, dtype=torch.float64)
    x_t = (1 - t[0, :, None]) * x0 + t[0, :, None] * eps[0]
    v_fake = gaussian_velocity(x_t, t[0], fake_mean, 1.5)[None]
    v_real = gaussian_velocity(x_t, t[0], real_mean, 1.0)[None]
    w = rewards_terms.dm_reward_weight(t, "elbo")
    r = rewards_terms.dm_reward(x0, eps, v_real, v_fake, w)
    mismatch = (w[0] * ((v_fake - v_real) ** 2)[0].sum(-1) / 2).mean()
    assert float(r.mean()) == pytest.approx(-float(mismatch), rel=0.05)
    assert float(r.mean()) < 0


def test_dm_reward_uses_common_random_numbers_within_a_group():
    method = GNDM(GNDM.Config(group_size=2, num_dm_draws=2), GaussianBase(), RewardSet(), ComputeMeter())
    x0 = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]])  # two groups of identical points
    r = method.dm_reward(x0, ["p"] * 4, BatchRandom(2))
    assert r[0] == r[1] and r[2] == r[3]  # same draws inside a group
    assert r[0] != r[2]  # independent draws across groups


def test_elbo_weight_integrates_the_velocity_error_like_the_eps_elbo():
    t = torch.tensor([0.1, 0.5, 0.9])
    # (1-t)/t (velocity) == 2/(t(1-t)) (d log-SNR) * (1-t)^2 (eps error) / 2
    assert torch.allclose(rewards_terms.dm_reward_weight(t, "elbo"), (2 / (t * (1 - t))) * (1 - t) ** 2 / 2)
    assert torch.equal(rewards_terms.dm_reward_weight(t, "uniform"), torch.ones(3))


# ---------------------------------------------------------------- GDMD
def test_target_group_advantages_standardise_and_clip():
    r = torch.tensor([[0.0, 0.0, 0.0, 10.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    a = rewards_terms.target_group_advantages(r, clip=1.0)
    assert torch.allclose(a[0], torch.tensor([-0.5, -0.5, -0.5, 1.0]), atol=1e-5)  # 1.5 clipped to 1
    z = (torch.arange(1.0, 5.0) - 2.5) / torch.arange(1.0, 5.0).std()
    assert torch.allclose(a[1], z.clamp(-1, 1), atol=1e-5)
    assert torch.equal(a[2], torch.zeros(4))  # no spread, no signal


def test_gdmd_loss_with_lambda_zero_is_dmd_with_k_targets():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 2, generator=g, requires_grad=True)
    grads = torch.randn(4, 6, 2, generator=g)  # K = 4 DMD gradients
    targets = (x0.detach() - grads)
    adv = torch.randn(6, 4, generator=g).clamp(-1, 1)
    loss = rewards_terms.weighted_dmd_loss(x0, targets, adv, lam=0.0)
    ref = torch.stack([dmd.dmd_generator_loss(x0, grads[k]) for k in range(4)]).mean()
    assert torch.allclose(loss, ref)
    (gl,) = torch.autograd.grad(loss, x0)
    assert torch.allclose(gl, grads.mean(0) / x0.numel(), atol=1e-7)


def test_gdmd_loss_weights_targets_by_advantage():
    x0 = torch.zeros(1, 2, requires_grad=True)
    targets = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])  # (K=2, B=1, 2)
    adv = torch.tensor([[1.0, -1.0]])  # the first target scored better
    loss = rewards_terms.weighted_dmd_loss(x0, targets, adv, lam=0.5)
    (gl,) = torch.autograd.grad(loss, x0)
    # d/dx0 mean_k (1 + lam A_k) 0.5 mean_d (x0 - T_k)^2 = sum_k (1 + lam A_k)(x0 - T_k) / (K D)
    expected = (1.5 * (0 - targets[0]) + 0.5 * (0 - targets[1])) / 4
    assert torch.allclose(gl, expected)
    assert gl[0, 0] < 0  # descending moves x0 towards the better target


@pytest.mark.parametrize("vary", ["timestep", "noise", "both", "fake_snapshot"])
def test_gdmd_vary_switch_shares_the_other_draw(vary):
    method = GDMD(GDMD.Config(num_targets=3, vary=vary, lam=0.0), GaussianBase(), RewardSet(), ComputeMeter())
    t, noise = method._target_draws(torch.zeros(5, 2), BatchRandom(4))
    assert t.shape == (3, 5) and noise.shape == (3, 5, 2)
    assert bool((t[0] == t[1]).all()) == (vary in ("noise", "fake_snapshot"))
    assert bool((noise[0] == noise[1]).all()) == (vary in ("timestep", "fake_snapshot"))


# ---------------------------------------------------------------- GNDMR adaptive scaling
def test_adaptive_scales_hold_external_magnitude_at_a_fraction_of_a_dm():
    a_dm = torch.tensor([1.0, -1.0, 1.0, -1.0])
    ext = {"r": torch.tensor([4.0, -4.0, 4.0, -4.0])}
    scales, running = rewards_terms.adaptive_scales(a_dm, ext, {}, momentum=0.9, fraction=0.5)
    assert (scales["r"] * ext["r"]).abs().mean() == pytest.approx(0.5 * a_dm.abs().mean())
    # second batch: running magnitudes are EMAs; the input dict is not modified
    scales2, running2 = rewards_terms.adaptive_scales(a_dm, {"r": ext["r"] / 4}, running, 0.9, 0.5)
    assert running == {"dm": 1.0, "r": 4.0}
    assert running2["r"] == pytest.approx(0.9 * 4 + 0.1 * 1)
    assert scales2["r"] == pytest.approx(0.5 * 1.0 / running2["r"])


def test_adaptive_scale_guard_on_a_reward_constant_within_every_group():
    """A saturated reward (constant in every group: A_k = 0 exactly) after one informative batch.
    By hand: run_dm = 1, run_r = 2 after the first batch; 200 degenerate batches later the unguarded
    run_r = 2 * 0.9^200 and the scale 0.5 / (2 * 0.9^200 + 1e-8) ~ 4.4e7; guarded, run_r stays 2 and
    the scale stays 0.5 * 1 / 2 = 0.25, the value it had after the informative batch."""
    a_dm = torch.tensor([1.0, -1.0, 1.0, -1.0])
    informative, saturated = {"r": torch.tensor([2.0, -2.0, 2.0, -2.0])}, {"r": torch.zeros(4)}
    for guard, expected in (("none", 0.5 / (2 * 0.9 ** 200 + 1e-8)), ("floor", 0.25)):
        scales, running = rewards_terms.adaptive_scales(a_dm, informative, {}, 0.9, 0.5, guard=guard)
        assert scales["r"] == pytest.approx(0.25)
        for _ in range(200):
            scales, running = rewards_terms.adaptive_scales(a_dm, saturated, running, 0.9, 0.5, guard=guard)
        assert scales["r"] == pytest.approx(expected, rel=1e-6)
        assert running["dm"] == pytest.approx(1.0)
    assert 0.5 / (2 * 0.9 ** 200 + 1e-8) > 1e7  # the failure the guard exists for


def test_adaptive_scale_floor_bounds_a_weak_reward_and_a_degenerate_first_batch():
    """Floor 0.1 x run_dm = 0.1. A first batch with mean |A_r| = 0.05 < 0.1 is degenerate: no
    running value, scale = 0.5 * 1 / 0.1 = 5. A reward at 0.2 (above the threshold) for 300 batches:
    run_r -> 0.2 (EMA from 0.2), scale 0.5 / 0.2 = 2.5, the unguarded value, as the floor does not bind."""
    a_dm = torch.tensor([1.0, -1.0, 1.0, -1.0])
    scales, running = rewards_terms.adaptive_scales(a_dm, {"r": torch.full((4,), 0.05)}, {}, 0.9, 0.5, guard="floor")
    assert "r" not in running and scales["r"] == pytest.approx(5.0)
    for _ in range(300):
        scales, running = rewards_terms.adaptive_scales(a_dm, {"r": torch.tensor([0.2, -0.2, 0.2, -0.2])}, running,
                                                        0.9, 0.5, guard="floor")
    assert running["r"] == pytest.approx(0.2) and scales["r"] == pytest.approx(2.5)


class ConstantReward:
    """A saturated non-differentiable reward: the same score for every image."""

    differentiable = False

    def __call__(self, images, prompts):
        return torch.ones(images.shape[0])


@pytest.mark.parametrize("guard", ["floor", "none"])
def test_gndmr_with_a_saturated_reward_keeps_its_scale_only_when_guarded(guard):
    base = GaussianBase()
    rewards = RewardSet({"saturated": ConstantReward()}, {"saturated": 1.0})
    method = GNDMR(GNDMR.Config(group_size=4, num_dm_draws=2, adaptive_guard=guard), base, rewards, ComputeMeter())
    method.running = {"dm": 0.8, "saturated": 0.8}  # as left by earlier batches where the reward varied
    prompts = ["p"] * 8
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for i in range(100):
        _, logs = method.advantages(x0, prompts, BatchRandom(i))
    if guard == "floor":
        assert method.running["saturated"] == 0.8  # never updated by a batch without signal
        assert logs["scale/saturated"] == pytest.approx(0.5 * method.running["dm"] / 0.8)
    else:
        # the running magnitude decays as 0.8 * 0.9^100 (the constant reward's A is exactly 0)
        assert method.running["saturated"] == pytest.approx(0.8 * 0.9 ** 100, rel=1e-6)
        assert logs["scale/saturated"] > 1e3


def test_annealed_beta_timesteps_favour_high_noise_then_become_uniform():
    g = torch.Generator().manual_seed(5)
    early = rewards_terms.annealed_beta_sigma(20_000, g, (3.0, 1.0), progress=0.0)
    late = rewards_terms.annealed_beta_sigma(20_000, g, (3.0, 1.0), progress=1.0)
    assert early.mean() == pytest.approx(0.02 + 0.96 * 0.75, abs=0.01)  # Beta(3,1) mean 3/4
    assert late.mean() == pytest.approx(0.5, abs=0.01)
    again = rewards_terms.annealed_beta_sigma(4, torch.Generator().manual_seed(6), (3.0, 1.0), 0.0)
    assert torch.equal(again, rewards_terms.annealed_beta_sigma(4, torch.Generator().manual_seed(6), (3.0, 1.0), 0.0))


# ---------------------------------------------------------------- toy2d
@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """A small toy2d (fast fit) cached in a private folder."""
    pytest.importorskip("rtdmd_bench.bases.toy2d")
    old = os.environ.get("RTDMD_BENCH_CACHE")
    os.environ["RTDMD_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("RTDMD_BENCH_CACHE")
    else:
        os.environ["RTDMD_BENCH_CACHE"] = old


def toy_setup(toy_cache):
    from rtdmd_bench.bases.toy2d import Toy2D
    from rtdmd_bench.rewards.toy import QuadraticReward
    base = Toy2D(Toy2D.Config(hidden=32, depth=2, fit_steps=30, fit_batch=128))
    meter = ComputeMeter(budget_flops=1e12)
    base.prepare(meter)
    reward = MeteredReward(QuadraticReward(QuadraticReward.Config()), meter)
    rewards = RewardSet({"toy-quadratic": reward}, {"toy-quadratic": 1.0}, beta=1.0)
    return MeteredBase(base, meter), rewards, meter


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


SMOKE = {
    "dmd-rl backprop": (DMDRL, {"lr_generator": 1e-3, "lr_fake": 1e-3}),
    "dmd-rl grpo": (DMDRL, {"rl_form": "grpo", "group_size": 4, "lr_generator": 1e-3, "lr_fake": 1e-3}),
    "dmd-rl beta timesteps": (DMDRL, {"dm_timesteps": "beta_annealed", "fake_step_conditioning": True}),
    "gdmd": (GDMD, {"num_targets": 3, "lr_generator": 1e-3, "lr_fake": 1e-3}),
    "gdmd timestep": (GDMD, {"num_targets": 3, "vary": "timestep", "fake_step_conditioning": True}),
    "gndm": (GNDM, {"group_size": 4, "num_dm_draws": 2, "lr_generator": 1e-3, "lr_fake": 1e-3}),
    "gndmr": (GNDMR, {"group_size": 4, "num_dm_draws": 2, "lr_generator": 1e-3, "fake_step_conditioning": True}),
}


@pytest.mark.parametrize("name", list(SMOKE))
def test_one_step_on_toy2d_trains_both_networks(toy_cache, name):
    cls, overrides = SMOKE[name]
    base, rewards, meter = toy_setup(toy_cache)
    method = cls(cls.Config(**overrides), base, rewards, meter)
    student0, fake0, used0 = flat(base.trainable("student")), flat(base.trainable("fake")), meter.used
    logs = method.train_step(Batch(prompts=base.train_prompts(), seed=7), step=0)  # a generator step
    assert not torch.equal(flat(base.trainable("student")), student0)
    assert not torch.equal(flat(base.trainable("fake")), fake0)
    assert meter.used > used0
    assert logs and all(math.isfinite(v) for v in logs.values())
    assert "loss_fake" in logs and len(logs) > 1


def test_gndmr_state_holds_the_adaptive_magnitudes(toy_cache):
    base, rewards, meter = toy_setup(toy_cache)
    method = GNDMR(GNDMR.Config(group_size=4, num_dm_draws=2), base, rewards, meter)
    method.train_step(Batch(base.train_prompts(), seed=3), step=0)
    state = method.state_dict()
    assert set(state["adaptive_running"]) == {"dm", "toy-quadratic"}
    other = GNDMR(GNDMR.Config(group_size=4), base, rewards, meter)
    other.load_state_dict(state)
    assert other.running == method.running


def test_dmd_rl_backprop_term_increases_the_reward(toy_cache):
    base, rewards, meter = toy_setup(toy_cache)
    method = DMDRL(DMDRL.Config(backward_simulation=False), base, rewards, meter)
    prompts = base.train_prompts() * 8
    cond = base.encode(prompts)

    def reward_and_loss():
        x0, _ = method.nets.backward_simulation(cond, len(prompts), BatchRandom(9), grad=True)
        loss, logs = method._backprop_loss(x0, prompts)
        return loss, logs["reward"]

    loss, before = reward_and_loss()
    params = base.trainable("student")
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= 1e-3 * g / max(float(torch.cat([x.flatten() for x in grads]).norm()), 1e-12)
    _, after = reward_and_loss()
    assert after > before


def test_lambda_is_one_over_beta_under_beta_weighting(toy_cache):
    base, rewards, meter = toy_setup(toy_cache)
    rewards.beta = 0.25
    assert DMDRL(DMDRL.Config(), base, rewards, meter).rl_weight == pytest.approx(4.0)
    explicit = DMDRL(DMDRL.Config(reward_weighting="explicit", rl_weight=0.3), base, rewards, meter)
    assert explicit.rl_weight == pytest.approx(0.3)


def test_misconfiguration_is_a_user_error():
    base = GaussianBase()
    with pytest.raises(UserError, match="needs at least one reward"):
        DMDRL(DMDRL.Config(), base, RewardSet(), ComputeMeter())
    with pytest.raises(UserError, match="lam must be in"):
        GDMD(GDMD.Config(lam=1.5), base, RewardSet(), ComputeMeter())
    with pytest.raises(UserError, match="external_rewards needs"):
        GNDMR(GNDMR.Config(), base, RewardSet(), ComputeMeter())


def test_gdmd_fake_snapshots_give_the_targets_and_leave_the_live_fake_score(toy_cache):
    base, rewards, meter = toy_setup(toy_cache)
    method = GDMD(GDMD.Config(num_targets=3, vary="fake_snapshot", snapshot_every=1, num_fake_per_gen=1,
                              lr_fake=1e-2), base, rewards, meter)
    prompts = base.train_prompts()
    x0 = torch.randn(len(prompts), 2, generator=torch.Generator().manual_seed(5))
    live = flat(base.trainable("fake"))
    method.snapshots = [base.state_dict("fake"), base.state_dict("fake")]  # all equal to the live score
    same = method.implicit_targets(x0, 3, prompts, BatchRandom(6))
    assert torch.allclose(same[0], same[1]) and torch.allclose(same[0], same[2])
    method.snapshots = []
    for step in range(3):  # snapshots of a training fake score, every iteration, K-1 kept
        method.train_step(Batch(prompts, seed=step), step)
    assert len(method.snapshots) == 2
    live = flat(base.trainable("fake"))
    targets = method.implicit_targets(x0, 3, prompts, BatchRandom(6))
    assert not torch.allclose(targets[0], targets[1]) and not torch.allclose(targets[1], targets[2])
    assert torch.equal(flat(base.trainable("fake")), live)  # the live weights were restored
    assert len(method.state_dict()["fake_snapshots"]) == 2
