"""toy2d base: exact velocity against independent closed forms, CFG, caching of the init fit."""

from __future__ import annotations

import math

import pytest
import torch

from rtdmd_bench.bases.toy2d import Toy2D, Toy2DHard
from rtdmd_bench.compute import ComputeMeter
from rtdmd_bench.core.schedules import few_step_sigmas
from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.errors import UserError
from rtdmd_bench.toy_mixture import Mixture, mixture_velocity
from suites.toy_tilt import kl_estimate


def _aniso_mixture() -> Mixture:
    """Three components, one anisotropic and correlated, unequal weights."""
    covs = torch.tensor([[[0.09, 0.0], [0.0, 0.09]], [[0.25, 0.1], [0.1, 0.16]],
                         [[0.04, 0.0], [0.0, 0.36]]], dtype=torch.float64)
    return Mixture(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]), covs)


def _small_cfg(**kw) -> Toy2D.Config:
    return Toy2D.Config(hidden=16, depth=2, fit_steps=30, fit_batch=64, **kw)


def test_single_gaussian_velocity_matches_closed_form():
    # x0 ~ N(mu, s0^2 I): x_sigma ~ N((1-s) mu, c I), c = (1-s)^2 s0^2 + s^2, and
    # E[v|x] = ((s - (1-s) s0^2) / c) (x - (1-s) mu) - mu.
    mu, s0 = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.4
    mix = Mixture(torch.ones(1), mu[None], (s0 ** 2) * torch.eye(2, dtype=torch.float64)[None])
    x = torch.tensor([[0.3, 0.2], [2.0, -1.0], [-1.0, 1.0], [1.5, -0.5]], dtype=torch.float64)
    for s in (0.0, 1e-7, 0.3, 0.7, 1.0):
        sig = torch.full((4,), s, dtype=torch.float64)
        c = (1 - s) ** 2 * s0 ** 2 + s ** 2
        expected = ((s - (1 - s) * s0 ** 2) / c) * (x - (1 - s) * mu) - mu
        torch.testing.assert_close(mixture_velocity(mix, x, sig), expected, rtol=1e-9, atol=1e-9)


def test_mixture_velocity_matches_autograd_score():
    # Tweedie: E[eps|x] = -sigma * grad log p_sigma(x) and E[x0|x] = (x - sigma E[eps|x]) / (1-sigma),
    # so E[v|x] = (-sigma * score - x) / (1 - sigma): an independent route via the noised density.
    mix = _aniso_mixture()
    x = torch.tensor([[0.5, 0.5], [2.1, 0.2], [-1.2, 1.0], [0.1, -1.5], [3.0, 3.0]], dtype=torch.float64)
    for s in (0.05, 0.4, 0.8):
        xr = x.clone().requires_grad_(True)
        score = torch.autograd.grad(mix.noised(s).log_prob(xr).sum(), xr)[0]
        expected = (-s * score - x) / (1 - s)
        got = mixture_velocity(mix, x, torch.full((5,), s, dtype=torch.float64))
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)


def test_mixture_velocity_matches_monte_carlo():
    # Self-normalised importance sampling over x0 ~ p0: weights N(x; (1-s) x0, s^2 I),
    # eps_i = (x - (1-s) x0_i) / s, v = sum_i w_i (eps_i - x0_i).
    mix, s = _aniso_mixture(), 0.6
    gen = torch.Generator().manual_seed(0)
    x0 = mix.sample(400_000, gen)
    x = torch.tensor([[0.5, 0.5], [1.0, -1.0], [-0.5, 0.8]], dtype=torch.float64)
    got = mixture_velocity(mix, x, torch.full((3,), s, dtype=torch.float64))
    for i in range(3):
        logw = -((x[i] - (1 - s) * x0) ** 2).sum(-1) / (2 * s ** 2)
        w = torch.softmax(logw, 0)
        v = (x[i] - (1 - s) * x0) / s - x0
        torch.testing.assert_close((w[:, None] * v).sum(0), got[i], atol=0.02, rtol=0)


def test_exact_ode_reproduces_the_mixture():
    base = Toy2D()
    prompt = "upper half"
    n, steps = 4000, 100
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    cond = base.encode([prompt] * n)
    sig = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    with single_thread():
        for a, b in zip(sig[:-1], sig[1:]):  # Euler on dx/dsigma = v
            x = x + (b - a) * base.velocity("teacher", x, a.expand(n), cond)
    target = base.teacher_mixture(prompt)
    kl, _ = kl_estimate(x.numpy(), target.log_prob(x).numpy(), k=5)
    ref = target.sample(n, gen)
    floor, _ = kl_estimate(ref.numpy(), target.log_prob(ref).numpy(), k=5)
    print(f"ODE KL {kl:.4f} floor {floor:.4f}")
    assert kl < floor + 0.06, (kl, floor)
    # and a 4-step Euler sampler is visibly worse (the toy is not trivially easy)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    four = base.sigmas(4).double()
    for a, b in zip(four[:-1], four[1:]):
        y = y + (b - a) * base.velocity("teacher", y, a.expand(n), cond)
    kl4, _ = kl_estimate(y.numpy(), target.log_prob(y).numpy(), k=5)
    print(f"4-step Euler KL {kl4:.4f}")
    assert kl4 > kl + 0.3


def test_cfg_one_is_conditional_and_zero_is_unconditional():
    base = Toy2D()
    gen = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(6, 2, generator=gen) * 3, torch.rand(6, generator=gen)
    cond = base.encode(["modes 0 and 4", "left half", "upper half"] * 2)
    v_cond = base.velocity("teacher", x, sigma, cond)
    torch.testing.assert_close(base.velocity("teacher", x, sigma, cond, cfg=1.0), v_cond)
    v_uncond = mixture_velocity(base.mixture, x, sigma).float()
    torch.testing.assert_close(base.velocity("teacher", x, sigma, cond, cfg=0.0), v_uncond)
    v3 = base.velocity("teacher", x, sigma, cond, cfg=3.0)
    torch.testing.assert_close(v3, v_uncond + 3.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(v_cond, v_uncond, atol=1e-2)


def test_batched_teacher_velocity_equals_each_prompts_mixture():
    # The base evaluates all prompts in one call with -inf log-weights outside each subset;
    # it must equal the velocity of each prompt's own (renormalised) mixture.
    for base in (Toy2D(), Toy2DHard()):
        gen = torch.Generator().manual_seed(1)
        prompts = base.train_prompts() * 3
        x, sigma = torch.randn(len(prompts), 2, generator=gen) * 3, torch.rand(len(prompts), generator=gen)
        got = base.velocity("teacher", x, sigma, base.encode(prompts))
        for i, p in enumerate(prompts):
            ref = mixture_velocity(base.teacher_mixture(p), x[i:i + 1], sigma[i:i + 1]).float()
            torch.testing.assert_close(got[i:i + 1], ref, rtol=1e-5, atol=1e-5)


def test_teacher_velocity_is_per_prompt_and_differentiable():
    base = Toy2D()
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    sigma = torch.tensor([0.5, 0.5])
    v = base.velocity("teacher", x, sigma, base.encode(["modes 0 and 4", "left half"]))
    assert not torch.allclose(v[0], v[1])
    v.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_unknown_prompt_lists_valid_prompts():
    with pytest.raises(UserError, match="valid prompts: 'all modes'"):
        Toy2D().encode(["all modes", "a cat"])
    with pytest.raises(UserError, match="name: i j"):
        Toy2D(Toy2D.Config(prompts=("bad: 0 99",)))


def test_encode_sigmas_decode():
    base = Toy2D()
    ids = base.encode(base.train_prompts())
    assert ids.dtype == torch.long and ids.tolist() == list(range(len(base.train_prompts())))
    torch.testing.assert_close(base.sigmas(4), few_step_sigmas(4, shift=base.cfg.shift))
    shift1 = Toy2D(Toy2D.Config(shift=1.0))
    torch.testing.assert_close(shift1.sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shift3 = Toy2D(Toy2D.Config(shift=3.0))  # SD3's 4-step schedule (METHODS.md section 1)
    torch.testing.assert_close(shift3.sigmas(4), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    x = torch.randn(3, 2)
    assert base.decode(x) is x
    # Default ring: modes 0-3 lie in the upper half plane, 2-5 in the left half.
    means = base.mixture.means
    assert (means[:4, 1] > 0).all() and (means[4:, 1] < 0).all()
    assert (means[2:6, 0] < 0).all()


def test_hard_variant_is_a_config_of_the_same_class():
    hard = Toy2DHard()
    assert isinstance(hard, Toy2D) and issubclass(Toy2DHard.Config, Toy2D.Config)
    w = hard.mixture.weights
    assert float(w.max() / w.min()) > 10
    d = torch.cdist(hard.mixture.means, hard.mixture.means) + 1e9 * torch.eye(8)
    assert float(d.min()) < 6 * hard.cfg.std  # some modes are close
    assert hard.train_prompts() == Toy2D().train_prompts()
    upper = hard.teacher_mixture("upper half").means
    assert (upper[:, 1] > 0).all()


def test_prepare_fits_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    cfg = _small_cfg()
    first, meter1 = Toy2D(cfg), ComputeMeter()
    with pytest.raises(RuntimeError, match="prepare"):
        first.velocity("student", torch.zeros(1, 2), torch.ones(1), first.encode(["all modes"]))
    first.prepare(meter1)
    assert first.init_info["loaded_from_cache"] is False
    assert list(tmp_path.joinpath("toy2d").glob("*.safetensors"))
    assert not list(tmp_path.joinpath("toy2d").glob("*.tmp*"))
    second, meter2 = Toy2D(cfg), ComputeMeter()
    second.prepare(meter2)
    assert second.init_info["loaded_from_cache"] is True
    assert second.init_info["fit_mse"] == first.init_info["fit_mse"]
    for role in ("student", "fake"):
        for k, v in first.state_dict(role).items():
            torch.testing.assert_close(second.state_dict(role)[k], v, rtol=0, atol=0)
    for k, v in first.state_dict("student").items():
        torch.testing.assert_close(first.state_dict("fake")[k], v, rtol=0, atol=0)
    # The fit is charged on a cache hit too, identically; the tf unit is one 1-sample forward.
    assert meter1.breakdown()["init_flops"] > 0
    assert meter1.breakdown()["init_flops"] == meter2.breakdown()["init_flops"]
    assert meter1.used == 0
    assert 0 < meter1.teacher_forward_flops == meter2.teacher_forward_flops
    assert meter1.teacher_forward_flops < meter1.breakdown()["init_flops"] / cfg.fit_steps
    first.cache_path().write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="delete"):
        Toy2D(cfg).prepare(ComputeMeter())


def test_fit_is_deterministic_and_keyed_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path / "a"))
    a = Toy2D(_small_cfg())
    a.prepare(ComputeMeter())
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path / "b"))
    b = Toy2D(_small_cfg())
    b.prepare(ComputeMeter())
    assert b.init_info["loaded_from_cache"] is False
    for k, v in a.state_dict("student").items():
        torch.testing.assert_close(b.state_dict("student")[k], v, rtol=0, atol=0)
    assert Toy2D(_small_cfg(init_seed=1)).cache_path() != b.cache_path()
    assert Toy2DHard(Toy2DHard.Config(hidden=16)).cache_path() != Toy2D(Toy2D.Config(hidden=16)).cache_path()


def test_state_dict_roundtrip_and_roles(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    base = Toy2D(_small_cfg())
    base.prepare(ComputeMeter())
    saved = base.state_dict("student")
    with torch.no_grad():
        for p in base.trainable("student"):
            p.add_(1.0)
    assert not torch.equal(base.state_dict("student")["net.0.weight"], saved["net.0.weight"])
    base.load_state_dict("student", saved)
    torch.testing.assert_close(base.state_dict("student")["net.0.weight"], saved["net.0.weight"])
    assert all(p.requires_grad for p in base.trainable("fake"))
    with pytest.raises(ValueError, match="no trainable state"):
        base.trainable("teacher")
    x, sigma, cond = torch.zeros(2, 2), torch.full((2,), 0.5), base.encode(["all modes"] * 2)
    with pytest.raises(ValueError, match="teacher only"):
        base.velocity("student", x, sigma, cond, cfg=2.0)
    v_none = base.velocity("fake", x, sigma, cond)
    v_step = base.velocity("fake", x, sigma, cond, step=torch.tensor([0, 3]))
    assert v_none.shape == v_step.shape == (2, 2)
    with pytest.raises(ValueError, match="step indices"):
        base.velocity("fake", x, sigma, cond, step=torch.tensor([4, 0]))


@pytest.mark.slow
def test_default_fit_reaches_low_velocity_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    base = Toy2D()
    base.prepare(ComputeMeter())
    assert base.init_info["fit_mse"] < 0.003
    gen = torch.Generator().manual_seed(123)
    x, sigma, prompt, slot, v = base.fit_batch(gen, 4096)
    with torch.no_grad():
        pred = base.velocity("student", x, sigma, prompt)
    assert float((pred - v).pow(2).mean()) < 0.005
    assert math.isfinite(float(pred.abs().max()))
