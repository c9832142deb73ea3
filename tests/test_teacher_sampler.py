"""The teacher's multi-step sampler on the diffusers bases follows the base's own scheduler
(issue #10 item 13): schedules against diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps`,
images against the diffusers pipelines and RTDMD's normal-mode loop, the cache key and the CLI.

Expected values come from diffusers itself (schedulers built from the published
`scheduler_config.json` contents written out below, the pipelines' own mu functions, the
pipelines' own sampling loops) or by hand; never from the functions under test."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

from rtdmd_bench.bases.diffusers_flux1 import Flux1Dev
from rtdmd_bench.bases.diffusers_flux2 import TinyFlux2
from rtdmd_bench.bases.diffusers_sd3 import TinySD3
from rtdmd_bench.errors import UserError
from rtdmd_bench.evaluate import SAMPLER_KINDS, GenStats, SamplerSpec, evaluate_suite, generate, sample_latents
from rtdmd_bench.interfaces import RewardSet

# The published scheduler/scheduler_config.json of the hub repositories (diffusers keys).
SD3_PUBLISHED = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_PUBLISHED = {"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
                  "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
                  "use_dynamic_shifting": True}
STEPS = (1, 2, 4, 28, 50)
PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]


def published(config: dict) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_config(config)


@pytest.fixture(scope="module")
def sd3() -> TinySD3:
    base = TinySD3(TinySD3.Config())
    base.prepare(None)
    return base


@pytest.fixture(scope="module")
def flux2() -> TinyFlux2:
    base = TinyFlux2(TinyFlux2.Config())
    base.prepare(None)
    return base


# ---- schedules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", STEPS)
def test_sd3_teacher_schedule_is_set_timesteps_of_the_published_scheduler(n):
    base = TinySD3(TinySD3.Config())  # no networks needed; sd3/sd35m/sd35l share the class attribute
    s = published(SD3_PUBLISHED)
    s.set_timesteps(n)
    torch.testing.assert_close(base.teacher_sigmas(n), s.sigmas)
    torch.testing.assert_close(base.teacher_sigmas(n, pipeline=True), s.sigmas)  # SD3 pipeline passes no sigmas


def test_sd3_last_teacher_sigma_by_hand():
    """The issue's numbers: the grid's smallest sigma 1/1000 shifted by 3 is 0.003/1.002; the schedule
    ends there and is shifted again: 3 s / (1 + 2 s) = 0.0089, for 4 and 28 steps alike, where the
    few-step formula stops at 1/N shifted (0.5 at 4 steps, 0.1 at 28)."""
    s = 0.003 / 1.002
    last = 3 * s / (1 + 2 * s)
    base = TinySD3(TinySD3.Config())
    for n, few_step_last in ((4, 0.5), (28, 3 / 28 / (1 + 2 / 28))):
        assert abs(float(base.teacher_sigmas(n)[-2]) - last) < 1e-7
        assert abs(last - 0.0089) < 1e-4
        assert abs(float(base.sigmas(n)[-2]) - few_step_last) < 1e-6
    assert abs(3 / 28 / (1 + 2 / 28) - 0.1) < 1e-12


@pytest.mark.parametrize("n", STEPS)
def test_flux2_teacher_schedule_is_set_timesteps_with_the_empirical_mu(n):
    base = TinyFlux2(TinyFlux2.Config())
    mu = compute_empirical_mu(image_seq_len=base.side * base.side, num_steps=n)
    s = published(FLUX_PUBLISHED)
    s.set_timesteps(n, mu=mu)  # RTDMD normal mode
    torch.testing.assert_close(base.teacher_sigmas(n), s.sigmas)
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)  # Flux2KleinPipeline
    torch.testing.assert_close(base.teacher_sigmas(n, pipeline=True), s.sigmas)


@pytest.mark.parametrize("n", STEPS)
def test_flux1_teacher_schedule_is_set_timesteps_with_calculate_shift(n):
    base = Flux1Dev(Flux1Dev.Config(device="cpu"))  # 512 px: 32 x 32 = 1024 packed tokens
    c = FLUX_PUBLISHED
    mu = calculate_shift(1024, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"], c["max_shift"])
    s = published(c)
    s.set_timesteps(n, mu=mu)
    torch.testing.assert_close(base.teacher_sigmas(n), s.sigmas)
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)  # FluxPipeline
    torch.testing.assert_close(base.teacher_sigmas(n, pipeline=True), s.sigmas)


def test_toy_and_digits_teachers_keep_their_few_step_schedules():
    """toy2d (shift 3) and digits (shift 1) have no scheduler: their committed teacher rows walk
    1, 1 - 1/N, ..., 1/N shifted, then 0 (by hand for N = 4)."""
    from rtdmd_bench.bases.digits import Digits
    from rtdmd_bench.bases.toy2d import Toy2D

    torch.testing.assert_close(Toy2D().teacher_sigmas(4), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    torch.testing.assert_close(Digits().teacher_sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(Digits().teacher_sigmas(50, pipeline=True), torch.cat([
        torch.arange(50, 0, -1) / 50, torch.zeros(1)]))


# ---- images against the diffusers pipelines -----------------------------------------------------
@pytest.mark.parametrize("n", (4, 28))
def test_sd3_teacher_euler_equals_stable_diffusion3_pipeline_with_cfg(sd3, n):
    nets = sd3.nets
    pipe = StableDiffusion3Pipeline(
        transformer=nets.transformer, scheduler=published(SD3_PUBLISHED), vae=nets.vae,
        text_encoder=nets.text["enc1"], tokenizer=nets.text["tok1"], text_encoder_2=nets.text["enc2"],
        tokenizer_2=nets.text["tok2"], text_encoder_3=nets.text["enc3"], tokenizer_3=nets.text["tok3"])
    pipe.set_progress_bar_config(disable=True)
    cond = sd3.encode(PROMPTS)
    z = torch.randn((2, *sd3.latent_shape), generator=torch.Generator().manual_seed(n))
    ours = sample_latents(sd3, SamplerSpec("teacher", n, "euler", cfg=5.0), cond, z[None])
    kw = dict(prompt_embeds=cond["embeds"], pooled_prompt_embeds=cond["pooled"],
              negative_prompt_embeds=cond["neg_embeds"], negative_pooled_prompt_embeds=cond["neg_pooled"],
              num_inference_steps=n, guidance_scale=5.0, height=32, width=32)
    latents = pipe(latents=z.clone(), output_type="latent", **kw).images
    torch.testing.assert_close(ours, latents, atol=1e-5, rtol=1e-5)
    images = pipe(latents=z.clone(), output_type="pt", **kw).images
    torch.testing.assert_close(sd3.decode(ours), images, atol=1e-5, rtol=1e-5)
    # the former Euler on the few-step formula is a different sampler (not float noise)
    few = sample_latents(sd3, SamplerSpec("teacher", n, "euler-few-step", cfg=5.0), cond, z[None])
    assert (few - latents).abs().max() > 1e-3


@pytest.mark.parametrize("n", (4, 28))
def test_flux2_teacher_euler_pipeline_equals_flux2_klein_pipeline_with_cfg(flux2, n):
    nets = flux2.nets
    pipe = Flux2KleinPipeline(transformer=nets.transformer, scheduler=published(FLUX_PUBLISHED), vae=nets.vae,
                              text_encoder=nets.text["enc"], tokenizer=nets.text["tok"], is_distilled=False)
    pipe.set_progress_bar_config(disable=True)
    cond = flux2.encode(PROMPTS)
    z = torch.randn((2, *flux2.latent_shape), generator=torch.Generator().manual_seed(n))  # (B, h*w, 4C) tokens
    z_pipe = z.transpose(1, 2).reshape(2, -1, flux2.side, flux2.side)  # the pipeline packs (B, 4C, h, w) row-major
    ours = sample_latents(flux2, SamplerSpec("teacher", n, "euler-pipeline", cfg=4.0), cond, z[None])
    kw = dict(prompt_embeds=cond["embeds"], negative_prompt_embeds=cond["neg_embeds"], num_inference_steps=n,
              guidance_scale=4.0, height=32, width=32)
    latents = pipe(latents=z_pipe.clone(), output_type="latent", **kw).images  # (B, C, 2h, 2w) VAE latents
    torch.testing.assert_close(flux2.unpack_latents(ours), latents, atol=1e-5, rtol=1e-5)
    images = pipe(latents=z_pipe.clone(), output_type="pt", **kw).images
    torch.testing.assert_close(flux2.decode(ours), images, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ("sd3", "flux2"))
def test_teacher_euler_equals_rtdmd_normal_mode_loop(which, sd3, flux2):
    """RTDMD's `_generate_normal`: `set_timesteps(N[, mu])` on the base's scheduler, then for each
    timestep t one guided prediction at t and `scheduler.step` (written here with diffusers'
    scheduler driving the base's guided velocity)."""
    base, config = (sd3, SD3_PUBLISHED) if which == "sd3" else (flux2, FLUX_PUBLISHED)
    n, w = 6, 3.0
    cond = base.encode(PROMPTS)
    z = torch.randn((2, *base.latent_shape), generator=torch.Generator().manual_seed(1))
    scheduler = published(config)
    mu = compute_empirical_mu(image_seq_len=base.side * base.side, num_steps=n) if which == "flux2" else None
    scheduler.set_timesteps(n, mu=mu)
    x = z.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = base.velocity("teacher", x, (t / 1000).expand(2), cond, cfg=w)
            x = scheduler.step(v, t, x).prev_sample
    ours = sample_latents(base, SamplerSpec("teacher", n, "euler", cfg=w), cond, z[None])
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


# ---- cache, records, CLI ------------------------------------------------------------------------
def test_cache_key_follows_the_schedule_so_no_stale_teacher_images(sd3, tmp_path):
    stats = GenStats()
    euler = generate(sd3, SamplerSpec("teacher", 6, "euler", tag="t"), PROMPTS[:1], 1, 0, tmp_path, stats=stats)
    few = generate(sd3, SamplerSpec("teacher", 6, "euler-few-step", tag="t"), PROMPTS[:1], 1, 0, tmp_path, stats=stats)
    assert (stats.generated, stats.cached) == (2, 0)  # the second schedule did not reuse the first's images
    assert (euler - few).abs().max() > 1e-4
    again = generate(sd3, SamplerSpec("teacher", 6, "euler", tag="t"), PROMPTS[:1], 1, 0, tmp_path, stats=stats)
    assert stats.cached == 1 and torch.equal(again, euler)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and any("-teacher" in f for f in folders) and any("-few-step" in f for f in folders)


class _FidTLike:
    """A suite that asks for the teacher's samples, as fid-t does."""

    name, version, images_per_prompt, higher_is_better = "fidt-like", "0", 1, {"gap": False}

    def prompts(self):
        return PROMPTS[:1]

    def score(self, images, prompts, ctx):
        return {"gap": float((images - ctx.teacher_samples()).abs().mean())}


def test_results_record_the_schedules_of_sampler_and_fid_t_teacher(sd3, tmp_path):
    res = evaluate_suite(_FidTLike(), sd3, SamplerSpec("teacher", 4, "cps"), RewardSet(), {}, 0, tmp_path, None)
    assert res["sampler"]["schedule"] == "few-step"
    assert res["sampler"]["sigmas"] == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0], abs=1e-6)  # SD3 shift 3, by hand
    teacher = res["teacher_sampler"]
    assert (teacher["kind"], teacher["schedule"], teacher["num_steps"]) == ("euler", "teacher", 50)
    s = published(SD3_PUBLISHED)
    s.set_timesteps(50)
    assert teacher["sigmas"] == pytest.approx(s.sigmas.tolist(), abs=1e-7)


def test_sampler_kinds_are_a_closed_set():
    with pytest.raises(UserError, match="valid: cps, euler, euler-pipeline, euler-few-step"):
        SamplerSpec("teacher", 4, "heun")
    from typing import get_args

    from rtdmd_bench.cli import TeacherSampler

    assert get_args(TeacherSampler) == SAMPLER_KINDS


def test_eval_teacher_sampler_is_a_choice_in_help_and_a_usage_error_otherwise(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rtdmd_bench", "eval", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env)

    help_text = cli("--help").stdout
    assert "euler-pipeline" in help_text and "euler-few-step" in help_text
    bad = cli("--suite", "toy-tilt", "--base", "toy2d", "--teacher-sampler", "heun")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "heun" in bad.stderr and "euler-few-step" in bad.stderr
    assert not (tmp_path / "runs").exists()


def test_published_scheduler_config_differences_are_reported(tmp_path):
    from rtdmd_bench.bases.diffusers_loading import check_scheduler_config
    from rtdmd_bench.bases.real_configs import FLUX_SCHEDULER, SD3_SCHEDULER
    from rtdmd_bench.core.schedules import scheduler_config_differences

    assert scheduler_config_differences(SD3_PUBLISHED, SD3_SCHEDULER) == []
    assert scheduler_config_differences(FLUX_PUBLISHED, FLUX_SCHEDULER) == []
    assert scheduler_config_differences({**SD3_PUBLISHED, "shift": 1.0}, SD3_SCHEDULER) == ["shift: 1.0 != 3.0"]
    assert scheduler_config_differences({**FLUX_PUBLISHED, "use_karras_sigmas": True}, FLUX_SCHEDULER) == [
        "use_karras_sigmas: True (not modelled by the suite)"]
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 1000, "shift": 3.0}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_scheduler_config(str(tmp_path), True, SD3_SCHEDULER, "sd3") == []
    with pytest.warns(UserWarning, match="use_dynamic_shifting: False != True"):
        check_scheduler_config(str(tmp_path), True, FLUX_SCHEDULER, "flux2-4b")
