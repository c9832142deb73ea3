"""Core maths against independent closed forms (foundation issue, item 4)."""

import math

import pytest
import torch

from rtdmd_bench.core import dmd, rl, sampling, schedules


def test_sd3_few_step_schedule_matches_methods_md():
    s = schedules.few_step_sigmas(4, shift=3.0)
    assert torch.allclose(s, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-6)


def test_shift_fixes_endpoints_and_dynamic_shift_equals_constant_shift():
    sig = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    assert torch.allclose(schedules.shift_sigma(sig, 3.0)[[0, 2]], sig[[0, 2]])
    mu = 0.7
    expected = math.exp(mu) / (math.exp(mu) + 1 / 0.3 - 1)
    assert schedules.dynamic_shift_sigma(torch.tensor(0.3, dtype=torch.float64), mu).item() == pytest.approx(expected)


def test_flux_mu_interpolates_between_base_and_max_shift():
    assert schedules.flux_mu(256) == pytest.approx(0.5)
    assert schedules.flux_mu(4096) == pytest.approx(1.15)


def test_cps_step_at_zero_returns_x0_hat():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    sigma = torch.full((4,), 0.6)
    out = sampling.cps_step(x, sigma, v, torch.zeros(4), eta=0.9, noise=torch.randn(4, 3, generator=g))
    assert torch.allclose(out, x - 0.6 * v)


def test_cps_mean_std_match_formula():
    x, v = torch.ones(1, 2), torch.full((1, 2), 0.5)
    mean, std = sampling.cps_mean_std(x, torch.tensor([0.8]), v, torch.tensor([0.5]), eta=0.9)
    x0, eps = 1 - 0.8 * 0.5, 1 + 0.2 * 0.5
    c, s = math.cos(0.9 * math.pi / 2), math.sin(0.9 * math.pi / 2)
    assert torch.allclose(mean, torch.full((1, 2), 0.5 * x0 + 0.5 * c * eps))
    assert float(std) == pytest.approx(0.5 * s)


def test_cps_preserves_coefficients():
    # "Coefficient preserving": with x0_hat = 0 the output is s'(cos * eps_hat + sin * z), whose
    # variance is s'^2 when eps_hat and z are independent unit Gaussians.
    g = torch.Generator().manual_seed(1)
    n, s, s2 = 200_000, 0.8, 0.4
    v = torch.randn(n, 1, generator=g)
    x = s * v  # x0_hat = x - s v = 0, eps_hat = x + (1-s) v = v
    out = sampling.cps_step(x, torch.full((n,), s), v, torch.full((n,), s2), 0.9, torch.randn(n, 1, generator=g))
    assert out.var().item() == pytest.approx(s2 ** 2, rel=0.02)


def test_exact_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mean, x = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    std = torch.tensor(0.37)
    lp = sampling.cps_log_prob(x, mean, std, "exact")
    ref = torch.distributions.Normal(mean, std).log_prob(x).sum(1)
    assert torch.allclose(lp, ref, atol=1e-5)
    simplified = sampling.cps_log_prob(x, mean, std, "cps_simplified")
    assert torch.allclose(simplified, -((x - mean) ** 2).mean(1))


def test_renoised_variance_is_t_squared():
    g = torch.Generator().manual_seed(3)
    n, s, t = 400_000, 0.3, 0.7
    x0, eps = torch.zeros(n), torch.randn(n, generator=g)
    x_s = sampling.add_noise(x0, eps, s)
    x_t = sampling.renoise(x_s, torch.tensor(s), torch.tensor(t), torch.randn(n, generator=g))
    assert x_t.var().item() == pytest.approx(t ** 2, rel=0.01)
    a, b = sampling.renoise_coefficients(s, t)
    assert float(a ** 2 * s ** 2 + b ** 2) == pytest.approx(t ** 2)


def test_rollout_last_step_is_deterministic_and_grad_only_through_last():
    w = torch.nn.Parameter(torch.tensor(0.5))
    calls = []

    def vel(x, sigma, step):
        calls.append(torch.is_grad_enabled())
        return w * x

    sig = schedules.few_step_sigmas(4, shift=3.0)
    out = sampling.rollout(vel, torch.ones(2, 2), sig, 0.9, lambda j: torch.ones(2, 2))
    assert calls == [False, False, False, True]
    assert out.noises[-1] is None and out.xs[-1].requires_grad
    assert torch.allclose(out.xs[-1], out.means[-1])


def test_dmd_gradient_normalisation_and_loss_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    fake, real = torch.randn(3, 4), torch.randn(3, 4)
    g = dmd.dmd_gradient(x.detach(), fake, real)
    expected = (fake - real) / (x.detach() - real).abs().mean(1, keepdim=True)
    assert torch.allclose(g, expected)
    dmd.dmd_generator_loss(x, g).backward()
    assert torch.allclose(x.grad, g / x.numel())


def test_ambient_target_equals_plain_target_at_s_zero():
    x0, n = torch.randn(6, 2), torch.randn(6, 2)
    s, t = torch.zeros(6), torch.full((6,), 0.4)
    assert torch.allclose(dmd.ambient_target(x0, s, t, n), n - x0, atol=1e-6)


def test_ambient_target_is_unbiased_for_marginal_velocity():
    # x0 ~ N(0, 1): marginal velocity at (x_t, t) is E[eps - x0 | x_t] = x_t (t - (1-t)) / var_t ... check
    # by regressing the ambient target on x_t: the least-squares slope equals the true one.
    g = torch.Generator().manual_seed(4)
    n, s, t = 400_000, 0.3, 0.75
    x0, eps = torch.randn(n, generator=g), torch.randn(n, generator=g)
    x_s = (1 - s) * x0 + s * eps
    noise = torch.randn(n, generator=g)
    x_t = sampling.renoise(x_s, torch.tensor(s), torch.tensor(t), noise)
    target = dmd.ambient_target(x_s.unsqueeze(1), torch.full((n,), s), torch.full((n,), t), noise.unsqueeze(1))[:, 0]
    var_t = (1 - t) ** 2 + t ** 2
    true_slope = (t - (1 - t)) / var_t  # E[eps - x0 | x_t] = slope * x_t for Gaussian x0
    slope = (target * x_t).mean() / (x_t * x_t).mean()
    assert slope.item() == pytest.approx(true_slope, abs=0.01)


def test_consistency_estimator_expectation_is_squared_drift():
    # E[(h(x1)-h0)(h(x2)-h0) | x_t] = (E[h(x')|x_t] - h0)^2 because x1, x2 are independent moves.
    # For x0 ~ N(0,1) and h(x, s) = k(s) x, that drift is closed form.
    g = torch.Generator().manual_seed(5)
    n, t, t2, eta = 1_000_000, 0.8, 0.6, 0.9
    var = lambda s: (1 - s) ** 2 + s ** 2  # noqa: E731
    k = lambda s: (1 - s) / var(s)  # noqa: E731  exact E[x0 | x_s] = k(s) x_s
    x_t = torch.randn(n, 1, generator=g) * math.sqrt(var(t))

    def h(x, sig):
        return k(sig).view(-1, 1) * x

    tt, tn = torch.full((n,), t), torch.full((n,), t2)
    v = (x_t - k(t) * x_t) / t
    loss = dmd.consistency_loss(h, x_t, tt, v, tn, eta, torch.randn(n, 1, generator=g),
                                torch.randn(n, 1, generator=g))
    c = math.cos(eta * math.pi / 2)
    eps_coef = 1 + (1 - t) * (1 - k(t)) / t  # eps_hat = eps_coef * x_t
    mean_coef = (1 - t2) * k(t) + t2 * c * eps_coef  # E[x' | x_t] = mean_coef * x_t
    expected = (k(t2) * mean_coef - k(t)) ** 2 * var(t)
    assert loss.item() == pytest.approx(expected, rel=0.06)  # ~3 standard errors at n=1e6
    assert expected > 1e-3  # the check has teeth: the big CPS step does drift


def test_group_advantages_and_zero_filter():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    a = rl.group_advantages(r, 3)
    std = r.std()
    assert torch.allclose(a[:3], torch.tensor([-1.0, 0.0, 1.0]) / (std + 1e-6))
    assert torch.all(a[3:] == 0)
    comb, keep = rl.combine_advantages({"r": a}, {"r": 1.0})
    assert keep.tolist() == [True, False, True, False, False, False]
    assert comb.mean().abs() < 1e-6 and comb.std().item() == pytest.approx(1.0, rel=1e-4)


def test_ppo_clip_value_and_gradient():
    lp_old = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    lp = torch.zeros(2, requires_grad=True)
    loss = rl.ppo_clip_loss(lp, lp_old, adv, clip_eps=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.0)
    assert torch.allclose(lp.grad, -adv / 2)  # d/dlp of -A*rho at rho=1, averaged
    lp2 = torch.tensor([0.5, -0.5], requires_grad=True)  # rho beyond the clip on the gaining side
    loss2 = rl.ppo_clip_loss(lp2, lp_old, adv, clip_eps=0.2)
    loss2.backward()
    rho = torch.exp(torch.tensor([0.5, -0.5]))
    assert loss2.item() == pytest.approx((-1.2 + 0.8) / 2, rel=1e-5)  # -min(A rho, A clip(rho))
    assert rho[0] > 1.2 and rho[1] < 0.8
    assert torch.allclose(lp2.grad, torch.zeros(2))  # both clipped: no gradient


def test_subset_is_identical_across_ranks_and_noise_shared_within_group():
    assert rl.choose_subset(3, 2, seed=17) == rl.choose_subset(3, 2, seed=17)
    subsets = {tuple(rl.choose_subset(3, 2, seed=s)) for s in range(50)}
    assert len(subsets) == 3  # all three pairs appear
    prompts = ["a"] * 4 + ["b"] * 4
    z = rl.group_shared_noise((2,), prompts, step=1, epoch=3)
    assert torch.equal(z[0], z[3]) and not torch.equal(z[0], z[4])
    assert torch.equal(z, rl.group_shared_noise((2,), prompts, step=1, epoch=3))
    # Per row: any split of the rows (ranks, micro-batches) gets the same noise for its rows.
    assert torch.equal(rl.group_shared_noise((2,), prompts[3:6], step=1, epoch=3), z[3:6])
    # The seed of a prompt's noise is its own: (prompt, step, epoch), as the official per-sample hash.
    g = torch.Generator().manual_seed(rl.stable_seed("b", 1, 3))
    assert torch.equal(z[5], torch.randn(2, generator=g))
