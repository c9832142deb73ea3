"""toy-tilt suite and toy rewards: exact tilted target vs grid integration, estimators vs
closed forms, and the self-describing result."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from rtdmd_bench.bases.toy2d import Toy2D
from rtdmd_bench.compute import ComputeMeter, MeteredReward
from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from rtdmd_bench.rewards.toy import CappedLinearReward, QuadraticReward
from rtdmd_bench.toy_mixture import GridTarget, Mixture, tilt_mixture
from suites.toy_tilt import (ToyTilt, exact_target, knn_entropy,
                             plot_samples_over_target, two_sample_distances, unmetered)


def _mixture() -> Mixture:
    covs = torch.tensor([[[0.09, 0.0], [0.0, 0.09]], [[0.25, 0.1], [0.1, 0.16]]], dtype=torch.float64)
    return Mixture(torch.tensor([0.7, 0.3]), torch.tensor([[1.5, 0.0], [-1.0, 1.0]]), covs)


def _rewards(reward, beta: float, weight: float = 1.0) -> RewardSet:
    return RewardSet({reward.name: reward}, {reward.name: weight}, beta=beta)


def _grid_moments(grid: GridTarget) -> tuple[Tensor, Tensor]:
    """Per-component tilted weights and means by direct quadrature on the grid."""
    x = grid.grid_centres()
    comp = grid.teacher.component_log_prob(x) + grid.log_tilt(x)[:, None]  # (G, K)
    w = torch.softmax(comp, 0)  # per component, normalised over the grid
    means = w.T @ x  # (K, 2)
    return grid.weights, means


def test_quadratic_tilt_closed_form_matches_grid_integration():
    mix, beta = _mixture(), 0.7
    reward = QuadraticReward(QuadraticReward.Config(centre=(0.5, 1.0), q=(0.8, 0.2, 0.2, 0.5)))
    a_mat, b_vec = reward.quadratic_form()
    closed = tilt_mixture(mix, a_mat, b_vec, beta)
    with single_thread():
        grid = GridTarget(mix, lambda x: reward(x, []) / beta, torch.tensor([-5.0, -5.0]),
                          torch.tensor([5.0, 5.0]), 400)
        weights, means = _grid_moments(grid)
    torch.testing.assert_close(closed.weights, weights, atol=1e-4, rtol=0)
    torch.testing.assert_close(closed.means, means, atol=1e-3, rtol=0)
    # and the normalised densities agree pointwise
    x = torch.tensor([[1.0, 0.2], [-0.5, 0.9], [0.3, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(closed.log_prob(x), grid.log_prob(x), atol=1e-4, rtol=0)
    assert not torch.allclose(closed.weights, mix.weights, atol=1e-2)


def test_linear_tilt_shifts_mean_by_sigma_a_over_beta():
    mix, beta = _mixture(), 2.0
    a = torch.tensor([0.6, -0.4], dtype=torch.float64)
    tilted = tilt_mixture(mix, torch.zeros(2, 2), a, beta)
    torch.testing.assert_close(tilted.means, mix.means + (mix.covs @ a) / beta)
    torch.testing.assert_close(tilted.covs, mix.covs)
    # METHODS.md section 8: weights ∝ pi_k exp(a^T mu_k / beta + a^T S_k a / (2 beta^2))
    logw = torch.log(mix.weights) + mix.means @ a / beta + torch.einsum("i,kij,j->k", a, mix.covs, a) / (2 * beta ** 2)
    torch.testing.assert_close(tilted.weights, torch.softmax(logw, 0))


def test_non_normalisable_tilt_is_a_user_error():
    with pytest.raises(UserError, match="positive definite"):
        tilt_mixture(_mixture(), -20 * torch.eye(2), torch.zeros(2), 1.0)
    with pytest.raises(UserError, match="semi-definite"):
        QuadraticReward(QuadraticReward.Config(q=(1.0, -1.0)))
    with pytest.raises(UserError, match="2 \\(diagonal\\) or 4"):
        QuadraticReward(QuadraticReward.Config(q=(1.0, 1.0, 1.0)))


def test_rewards_values_gradients_and_quadratic_form():
    quad = QuadraticReward(QuadraticReward.Config(centre=(1.0, -2.0), q=(2.0, 0.5)))
    x = torch.tensor([[1.0, -2.0], [2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    r = quad(x, ["p"] * 3)
    torch.testing.assert_close(r, torch.tensor([0.0, -0.5 * (2.0 * 1 + 0.5 * 4), -0.5 * (2.0 + 0.5 * 4)]))
    r.sum().backward()
    torch.testing.assert_close(x.grad, -torch.tensor([[0.0, 0.0], [2.0, 1.0], [-2.0, 1.0]]))
    a_mat, b_vec = quad.quadratic_form()
    xd = x.detach().double()
    form = -0.5 * torch.einsum("ni,ij,nj->n", xd, a_mat, xd) + xd @ b_vec
    diff = form - quad(xd, [])
    torch.testing.assert_close(diff, diff[0].expand(3))  # equal up to a constant
    lin = CappedLinearReward(CappedLinearReward.Config(a=(1.0, 2.0), cap=3.0))
    torch.testing.assert_close(lin(torch.tensor([[1.0, 0.5], [4.0, 4.0]]), []), torch.tensor([2.0, 3.0]))
    assert lin.quadratic_form() is None and lin.differentiable and quad.differentiable
    with pytest.raises(UserError, match="2-D points"):
        lin(torch.zeros(2, 3, 8, 8), [])


def test_knn_entropy_of_a_gaussian():
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    x = np.random.default_rng(0).multivariate_normal([0.0, 0.0], cov, size=20_000)
    h, zeros = knn_entropy(x, k=5)
    assert abs(h - 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))) < 0.03
    assert zeros == 0
    _, zeros = knn_entropy(np.zeros((50, 2)), k=5)  # a collapsed generator is reported
    assert zeros == 50


def test_two_sample_distances_identical_vs_shifted():
    gen = torch.Generator().manual_seed(0)
    mix = _mixture()
    x, y = mix.sample(1500, gen), mix.sample(1500, gen)
    mmd, energy = two_sample_distances(x, y, 0.5)
    assert abs(mmd) < 3e-3 and abs(energy) < 1e-2
    mmd_s, energy_s = two_sample_distances(x, y + torch.tensor([0.5, 0.0], dtype=torch.float64), 0.5)
    assert mmd_s > 10 * max(abs(mmd), 1e-3) and energy_s > 10 * max(abs(energy), 1e-3)


def _suite(**kw) -> ToyTilt:
    return ToyTilt(ToyTilt.Config(prompts=("upper half", "modes 0 and 4"), images_per_prompt=2000,
                                  mmd_samples=500, **kw))


def _exact_samples(suite: ToyTilt, base: Toy2D, rewards: RewardSet, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([suite.target(base, rewards, p).sample(suite.images_per_prompt, gen)
                      for p in suite.prompts()]).float()


def test_exact_target_samples_score_near_the_floor():
    base, suite = Toy2D(), _suite()
    rewards = _rewards(QuadraticReward(), beta=2.0)
    out = suite.score(_exact_samples(suite, base, rewards, 1), suite.prompts(), EvalContext(base, rewards, {}))
    assert abs(out["kl_target"] - out["kl_floor"]) < 0.05
    assert out["kl_teacher"] > out["kl_target"] + 0.2  # the tilt moved the distribution
    assert out["mode_mass_error"] < 0.05 and abs(out["mmd"]) < 0.01
    teacher = torch.cat([base.teacher_mixture(p).sample(2000, torch.Generator().manual_seed(2))
                         for p in suite.prompts()]).float()
    worse = suite.score(teacher, suite.prompts(), EvalContext(base, rewards, {}))
    assert worse["kl_target"] > out["kl_target"] + 0.2 and worse["mean_reward"] < out["mean_reward"]
    assert worse["mmd"] > 0.01 and worse["energy_distance"] > 0.05


def test_result_is_self_describing_json():
    base, suite = Toy2D(), _suite()
    rewards = _rewards(CappedLinearReward(), beta=0.5, weight=2.0)
    out = suite.score(_exact_samples(suite, base, rewards, 3), suite.prompts(), EvalContext(base, rewards, {}))
    json.dumps(out)  # plain Python types only
    numeric = [k for k, v in out.items() if isinstance(v, float)]
    assert set(numeric) | {"reward"} == set(out["higher_is_better"]) == set(ToyTilt.higher_is_better)
    assert {"kl_target", "kl_teacher", "kl_floor", "mmd", "energy_distance", "mode_mass_error",
            "mean_reward"} <= set(numeric)
    assert out["higher_is_better"]["reward"] and not out["higher_is_better"]["kl_target"]
    assert out["version"] == ToyTilt.version
    assert out["mean_reward"] == pytest.approx(2.0 * out["reward"]["toy-linear"])
    setup = out["setup"]
    assert setup["rewards"]["beta"] == 0.5 and setup["rewards"]["configs"]["toy-linear"]["cap"] == 3.0
    assert setup["prompts"]["upper half"]["target"]["label"] == "numerical-grid"
    assert len(setup["prompts"]["upper half"]["teacher"]["means"]) == 4
    assert setup["samples"]["images_per_prompt"] == 2000
    assert abs(out["kl_target"] - out["kl_floor"]) < 0.05  # grid sampling and density agree
    quad = suite.score(torch.zeros(4000, 2) + 0.01 * torch.randn(4000, 2), suite.prompts(),
                       EvalContext(base, _rewards(QuadraticReward(), 1.0), {}))
    assert quad["setup"]["prompts"]["upper half"]["target"]["label"] == "closed-form"


def test_no_rewards_target_is_teacher_and_mode_masses():
    base, suite = Toy2D(), _suite()
    ctx = EvalContext(base, RewardSet(), {})
    assert exact_target(base, RewardSet(), "upper half") is base.teacher_mixture("upper half")
    # every sample on mode 0 of "modes 0 and 4" (weights 1/2 each): TV = 1/2
    gen = torch.Generator().manual_seed(0)
    upper = base.teacher_mixture("upper half").sample(2000, gen)
    on_mode0 = base.mixture.means[0] + 0.3 * torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    out = suite.score(torch.cat([upper, on_mode0]).float(), suite.prompts(), ctx)
    pp = out["per_prompt"]["modes 0 and 4"]
    assert pp["mode_masses"] == [1.0, 0.0] and pp["mode_mass_error"] == pytest.approx(0.5)
    assert pp["kl_target"] == pp["kl_teacher"] and pp["kl_target"] > 0.5
    assert "mean_reward" not in out and "reward" not in out
    assert set(out["higher_is_better"]) == {k for k, v in out.items() if isinstance(v, float)}


def test_prompt_layouts_and_errors():
    base, suite = Toy2D(), _suite()
    x = _exact_samples(suite, base, RewardSet(), 4)
    ctx = EvalContext(base, RewardSet(), {})
    per_image = [p for p in suite.prompts() for _ in range(2000)]
    a, b = suite.score(x, suite.prompts(), ctx), suite.score(x, per_image, ctx)
    assert a["kl_target"] == b["kl_target"]
    with pytest.raises(UserError, match="images_per_prompt"):
        suite.score(x[:3000], suite.prompts(), ctx)
    with pytest.raises(UserError, match="NaN"):
        suite.score(x * float("nan"), suite.prompts(), ctx)


def test_plot_samples_over_target(tmp_path):
    base = Toy2D()
    rewards = _rewards(QuadraticReward(), beta=1.0)
    gen = torch.Generator().manual_seed(0)
    panels = {"teacher": base.teacher_mixture("all modes").sample(500, gen),
              "target": exact_target(base, rewards, "all modes").sample(500, gen)}
    path = plot_samples_over_target(panels, base, rewards, "all modes", tmp_path / "p" / "tilt.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bind_checks_prompts_against_the_base():
    ToyTilt().bind(Toy2D())
    with pytest.raises(UserError, match="valid prompts"):
        ToyTilt(ToyTilt.Config(prompts=("all modes", "a cat"))).bind(Toy2D())
    with pytest.raises(UserError, match="toy2d"):
        ToyTilt().bind(object())


def test_scoring_does_not_spend_the_training_budget():
    base, suite = Toy2D(), _suite()
    meter = ComputeMeter()
    rewards = RewardSet({"toy-linear": MeteredReward(CappedLinearReward(), meter)}, {"toy-linear": 1.0}, 1.0)
    x = _exact_samples(suite, base, unmetered(rewards), 5)
    out = suite.score(x, suite.prompts(), EvalContext(base, rewards, {}))
    assert meter.used == 0 and out["reward"]["toy-linear"] < 3.0
