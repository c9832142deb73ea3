"""`rtdmd-bench export` (issue 13): a run's student, exported as a diffusers LoRA or a whole pipeline,
loads in the stock diffusers pipelines and samples, from the same latents and prompt embeddings,
what the suite's deterministic few-step sampler samples (CPS with eta = 0).

The expected values are the suite's own sampler (`samples.sample_latents`, `Base.decode`); the
route under test is diffusers' (`load_lora_weights`, `DiffusionPipeline.from_pretrained`, the
pipelines' own denoising loops and schedulers), built here from the tiny bases' components."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from rtdmd_bench.bases.lora_adapters import concat_loras  # noqa: E402
from rtdmd_bench.config import resolve_config  # noqa: E402
from rtdmd_bench.runs import RunDir  # noqa: E402

PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]
SD3_HUB_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
"""stable-diffusion-3-medium-diffusers/scheduler/scheduler_config.json (schedule-deciding keys)."""
FLUX_HUB_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                      "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
"""FLUX.1-dev and FLUX.2-klein scheduler_config.json (schedule-deciding keys)."""


# ---------------------------------------------------------------- the pieces, without training
def test_concat_loras_is_the_sum_of_the_deltas():
    g = torch.Generator().manual_seed(0)
    a1, b1 = torch.randn(3, 5, generator=g), torch.randn(7, 3, generator=g)  # rank 3
    a2, b2 = torch.randn(2, 5, generator=g), torch.randn(7, 2, generator=g)  # rank 2
    key_a, key_b = "blocks.0.attn.to_q.lora_A.weight", "blocks.0.attn.to_q.lora_B.weight"
    s1, s2, scale = 2.0, 0.5, 1.25
    out = concat_loras([({key_a: a1, key_b: b1}, s1), ({key_a: a2, key_b: b2}, s2)], scale)
    assert out[key_a].shape == (5, 5) and out[key_b].shape == (7, 5)
    want = s1 * b1 @ a1 + s2 * b2 @ a2  # (out, in): the two adapters' summed delta
    torch.testing.assert_close(scale * out[key_b] @ out[key_a], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="different modules"):
        concat_loras([({key_a: a1, key_b: b1}, s1), ({key_a: a2}, s2)], scale)


def _pipeline_mu(base, num_steps):
    """mu as each stock pipeline computes it (diffusers' own functions); None for SD3 (constant shift)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    seq = (base.cfg.resolution // 16) ** 2  # packed 2x2 tokens of the 8x VAE latents
    c = FLUX_HUB_SCHEDULER
    return {"StableDiffusion3Pipeline": None,
            "FluxPipeline": calculate_shift(seq, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"],
                                            c["max_shift"]),
            "Flux2KleinPipeline": compute_empirical_mu(seq, num_steps)}[base.pipeline_class_name]


@pytest.mark.parametrize("name", ["sd3", "sd35m", "sd35l", "flux2-4b", "flux2-9b", "flux1-dev"])
def test_the_recorded_call_walks_the_student_sigmas_on_every_real_base(name):
    """The stock scheduler, given the call's sigmas (and the pipeline's mu), walks exactly `sigmas(N)`;
    no weights needed. Guidance: the students run without CFG."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from rtdmd_bench import registry

    cls = registry.resolve("bases", name)
    base = cls(dataclasses.replace(cls.Config(), device="cpu"))
    for n in (1, 2, 4, 8):
        call = base.pipeline_call(n)
        hub = SD3_HUB_SCHEDULER if name.startswith("sd3") else FLUX_HUB_SCHEDULER
        scheduler = FlowMatchEulerDiscreteScheduler(**hub)
        scheduler.set_timesteps(n, sigmas=call["sigmas"], mu=_pipeline_mu(base, n))
        torch.testing.assert_close(scheduler.sigmas, base.sigmas(n), rtol=0, atol=1e-6)
        assert call["num_inference_steps"] == n and call["height"] == base.cfg.resolution
        if name.startswith("sd3"):  # SD3's default spacing (no sigmas) ends at the shifted 1/1000 instead
            scheduler.set_timesteps(n)
            assert n == 1 or abs(float(scheduler.sigmas[-2]) - float(base.sigmas(n)[-2])) > 1e-3
        else:  # FLUX pipelines pass sigmas linspace(1, 1/N, N) themselves (pipeline_flux*.py): the same call
            assert call["sigmas"] == pytest.approx(list(np.linspace(1.0, 1 / n, n)), abs=1e-12)
    assert call["guidance_scale"] == (1.0 if name != "flux1-dev" else base.cfg.plain_guidance)


def test_cli_lists_the_export_formats_of_the_module():
    import typing

    from rtdmd_bench import cli, export

    assert typing.get_args(cli.ExportFormat) == export.FORMATS == ("lora", "pipeline")


def _cli(monkeypatch, capsys, *args):
    """`rtdmd-bench export ARGS` in this process: (exit status, stdout, stderr)."""
    from rtdmd_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", "export", *args])
    try:
        main()
        status = 0
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_export_refuses_missing_runs_whole_network_bases_and_used_folders(tmp_path, monkeypatch, capsys):
    toy = tmp_path / "toy"
    RunDir(toy).path.mkdir()
    RunDir(toy).write_config(resolve_config("dmd2", "toy2d", []).to_dict())
    (tmp_path / "file").write_text("x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "a").write_text("x")
    cases = [(["--run", str(tmp_path / "missing"), "--format", "lora", "--out", str(tmp_path / "o1")], "not a run folder"),
             (["--run", str(toy), "--format", "lora", "--out", str(tmp_path / "o2")], "export needs a diffusers base"),
             (["--run", str(toy), "--format", "pipeline", "--out", str(tmp_path / "file")], "is a file"),
             (["--run", str(toy), "--format", "lora", "--out", str(tmp_path / "used")], "not empty")]
    for args, message in cases:
        status, out, err = _cli(monkeypatch, capsys, *args)
        assert status == 2, (args, err)
        assert message in " ".join(err.split()) and err.count("error:") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "toy", "used"]  # nothing written


# ---------------------------------------------------------------- trained runs, exported and reloaded
TOL = dict(rtol=1e-4, atol=1e-4)
"""Float tolerance on latents and images of magnitude ~1-4: the pipelines walk float32 sigmas and feed
FLUX transformers (1000 sigma) / 1000, the suite float64-computed sigmas; a missing or wrong LoRA
moves the outputs by > 0.1 (checked)."""
FAST_RUN = ["run.rewards=tiny-clipscore=1.0", "train.batch_size=4", "train.threads=1", "train.budget=2G"]
"""A run of a few steps with learning rates large enough, and the EMA short enough, that the
student's LoRA moves far from the base (a missing adapter would show)."""


def _train(tmp_path, method, base, sets):
    from rtdmd_bench.train import train

    from rtdmd_bench import train as train_module

    run = tmp_path / f"{method}-{base}"
    result = train(resolve_config(method, base, FAST_RUN + sets), run)
    train_module._last_built.pop(str(run), None)  # what follows loads the run from disk, as a new process would
    return run, result


def _suite_samples(run, num_steps):
    """The suite's deterministic sampler (CPS, eta 0) on the run's EMA student, from fixed latents."""
    from rtdmd_bench.samples import SamplerSpec, sample_latents
    from rtdmd_bench.train import load_for_eval

    b = load_for_eval(run)
    z = torch.randn(num_steps + 1, len(PROMPTS), *b.base.latent_shape, generator=torch.Generator().manual_seed(7))
    cond = b.base.encode(PROMPTS)
    with b.method.generator(), torch.no_grad():
        x = sample_latents(b.base, SamplerSpec("student", num_steps, eta=0.0), cond, z)
        images = b.base.decode(x)
    return b, z[0], cond, x, images


def _lora_metadata(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    return keys, json.loads(meta["lora_adapter_metadata"])


def _eval_mode(nets):
    """Freshly built networks are in training mode (T5's dropout); pipelines loaded from disk are not."""
    for m in (nets.transformer, nets.vae, nets.generator, *nets.text.values()):
        if isinstance(m, torch.nn.Module):
            m.eval()
    return nets


def _run_pipe(pipe, call, output_type="latent", **inputs):
    with torch.no_grad():
        return pipe(**inputs, **call, output_type=output_type).images


@pytest.mark.slow
def test_rtdmd_on_tiny_sd3_two_adapters_export_to_lora_and_pipeline(tmp_path, monkeypatch, capsys):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from rtdmd_bench.bases.diffusers_sd3 import tiny_sd3_networks

    sets = ["method.stage1_fraction=0.3", "method.group_size=2", "method.stage1.num_fake_per_gen=2",
            "method.stage1.lr_generator=0.05", "method.stage1.ema_decay=0", "method.lr=0.05", "method.ema_decay=0",
            "method.ema_interval=1"]
    run, _ = _train(tmp_path, "rtdmd", "tiny-sd3", sets)
    b, z0, cond, want, want_images = _suite_samples(run, 4)
    assert len(b.base._role("student")[0].stacks["student"]) == 2  # stage 2: frozen stage-1 LoRA + a fresh one

    status, out, err = _cli(monkeypatch, capsys, "--run", str(run), "--format", "lora", "--out", str(tmp_path / "lora"))
    assert status == 0, err
    info = json.loads((tmp_path / "lora" / "export_info.json").read_text())
    keys, meta = _lora_metadata(tmp_path / "lora")
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert meta["transformer.r"] == 2 * b.cfg.base.lora.rank and meta["transformer.lora_alpha"] == 2 * b.cfg.base.lora.alpha  # r1 + r2, same scale
    assert info["checkpoint"] == RunDir(run).latest_checkpoint().name and info["base"] == "tiny-sd3"
    assert info["sampler"]["sigmas"] == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0])  # METHODS.md sec. 1, shift 3

    # A stock pipeline over the same tiny components, built here; first without the LoRA.
    seed, msl = b.cfg.base.seed, b.cfg.base.max_sequence_length
    nets = _eval_mode(tiny_sd3_networks(seed, msl))
    t = nets.text
    pipe = StableDiffusion3Pipeline(transformer=nets.transformer, vae=nets.vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(**SD3_HUB_SCHEDULER),
                                    text_encoder=t["enc1"], tokenizer=t["tok1"], text_encoder_2=t["enc2"],
                                    tokenizer_2=t["tok2"], text_encoder_3=t["enc3"], tokenizer_3=t["tok3"])
    inputs = dict(prompt_embeds=cond["embeds"], pooled_prompt_embeds=cond["pooled"])
    without = _run_pipe(pipe, info["call"], latents=z0.clone(), **inputs)
    assert (without - want).abs().max() > 0.1  # the LoRA matters: a lost adapter could not pass below
    pipe.load_lora_weights(str(tmp_path / "lora"))
    got = _run_pipe(pipe, info["call"], latents=z0.clone(), **inputs)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(pipe.scheduler.sigmas, b.base.sigmas(4), rtol=0, atol=1e-6)
    # The pipeline's own text encoding gives the suite's embeddings: prompts alone reproduce it too.
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=msl)
    torch.testing.assert_close(embeds, cond["embeds"], rtol=0, atol=0)
    torch.testing.assert_close(pooled, cond["pooled"], rtol=0, atol=0)

    status, out, err = _cli(monkeypatch, capsys, "--run", str(run), "--format", "pipeline",
                            "--out", str(tmp_path / "pipe"))
    assert status == 0, err
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert isinstance(loaded, StableDiffusion3Pipeline)
    assert not any("lora" in k for k in loaded.transformer.state_dict())  # fused: a plain transformer
    info = json.loads((tmp_path / "pipe" / "export_info.json").read_text())
    images = _run_pipe(loaded, info["call"], latents=z0.clone(), output_type="pt", **inputs)
    torch.testing.assert_close(images, want_images, **TOL)

    # A failed write (here: a full disk) is one message, and leaves no partial folder behind.
    import errno

    from rtdmd_bench import export

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(export, "save_lora", full_disk)
    status, out, err = _cli(monkeypatch, capsys, "--run", str(run), "--format", "lora", "--out", str(tmp_path / "full"))
    assert status == 2 and "could not write the export" in " ".join(err.split()) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_dmd2_on_tiny_flux2_own_generator_exports_to_lora_and_pipeline(tmp_path):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from rtdmd_bench.bases.diffusers_flux2 import tiny_flux2_networks
    from rtdmd_bench.export import export_run

    run, _ = _train(tmp_path, "dmd2", "tiny-flux2", ["method.lr_generator=0.05", "method.ema_decay=0"])
    b, z0, cond, want, want_images = _suite_samples(run, 4)
    base = b.base
    info = export_run(run, "lora", tmp_path / "lora")
    umask = os.umask(0)
    os.umask(umask)  # the folder and files get the modes mkdir / open give, not mkdtemp's owner-only ones
    assert (tmp_path / "lora").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    keys, meta = _lora_metadata(tmp_path / "lora")
    assert meta["transformer.r"] == b.cfg.base.lora.rank and meta["transformer.lora_alpha"] == b.cfg.base.lora.alpha
    assert any(".single_transformer_blocks." in k for k in keys)  # FLUX.2's single-block targets too

    # The student's LoRA sits on the generator transformer (the distilled weights), not the teacher's.
    nets = _eval_mode(tiny_flux2_networks(b.cfg.base.seed, b.cfg.base.max_sequence_length, separate_generator=True))
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_HUB_SCHEDULER), vae=nets.vae,
                              text_encoder=nets.text["enc"], tokenizer=nets.text["tok"], transformer=nets.generator)
    # The pipeline's latents are the (B, 4C, h, w) patchified grid it packs row-major into our (B, h*w, 4C).
    side = base.side
    latents = z0.transpose(1, 2).reshape(len(PROMPTS), -1, side, side)
    inputs = dict(prompt_embeds=cond["embeds"])
    want_latents = base.unpack_latents(want)  # the pipeline returns un-normalised, un-patchified latents
    without = _run_pipe(pipe, info["call"], latents=latents.clone(), **inputs)
    assert (without - want_latents).abs().max() > 0.1
    pipe.load_lora_weights(str(tmp_path / "lora"))
    got = _run_pipe(pipe, info["call"], latents=latents.clone(), **inputs)
    torch.testing.assert_close(got, want_latents, **TOL)
    torch.testing.assert_close(pipe.scheduler.sigmas, base.sigmas(4), rtol=0, atol=1e-6)
    with torch.no_grad():  # prompts alone reproduce it too: the pipeline's Qwen3 encoding is the suite's
        embeds, _ = pipe.encode_prompt(PROMPTS, max_sequence_length=info["call"]["max_sequence_length"],
                                       text_encoder_out_layers=tuple(info["call"]["text_encoder_out_layers"]))
    torch.testing.assert_close(embeds, cond["embeds"], rtol=0, atol=0)

    info = export_run(run, "pipeline", tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert isinstance(loaded, Flux2KleinPipeline) and loaded.config.is_distilled
    images = _run_pipe(loaded, info["call"], latents=latents.clone(), output_type="pt", **inputs)
    torch.testing.assert_close(images, want_images, **TOL)


# ---------------------------------------------------------------- FLUX.1 (no tiny base: one built here)
def _tiny_flux1():
    """Flux1Dev's adapter over a tiny random FLUX.1 (guidance embedding, CLIP pooled + T5), student
    LoRA moved off zero: the FluxPipeline export path without a run."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from rtdmd_bench.bases.diffusers_common import TINY_PROMPTS, LoraSettings, Networks, word_tokenizer
    from rtdmd_bench.bases.diffusers_flux1 import Flux1Dev
    from rtdmd_bench.bases.diffusers_sd3 import TINY_CLIP, TINY_T5, TINY_VAE

    def networks():
        clip_tok, t5_tok = word_tokenizer(TINY_PROMPTS, 77), word_tokenizer(TINY_PROMPTS, 8)
        specials = dict(vocab_size=len(clip_tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=8, guidance_embeds=True,
                axes_dims_rope=(2, 2, 4))
            vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.3611, shift_factor=0.1159)  # FLUX.1's VAE constants
            clip = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TINY_CLIP.items() if k != "projection_dim"},
                                                **specials))
            t5 = T5EncoderModel(T5Config(**TINY_T5, **specials, decoder_start_token_id=0))
        return Networks(transformer=transformer, vae=vae,
                        text={"tok1": clip_tok, "enc1": clip, "tok2": t5_tok, "enc2": t5})

    class TinyFlux1(Flux1Dev):
        name = "tiny-flux1-test"
        latent_channels = 4

        def _build(self):
            return networks()

    cfg = dataclasses.replace(Flux1Dev.Config(), resolution=32, weights_dtype="fp32", autocast_bf16=False,
                              gradient_checkpointing=False, device="cpu", max_sequence_length=8,
                              lora=LoraSettings(rank=4, alpha=8.0))
    base = TinyFlux1(cfg)
    base.prepare(None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.trainable("student"):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return base, _eval_mode(networks())


def test_flux1_student_exports_to_lora_and_pipeline(tmp_path):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxPipeline

    from rtdmd_bench.export import save_lora, save_pipeline
    from rtdmd_bench.samples import SamplerSpec, sample_latents

    base, nets = _tiny_flux1()
    z = torch.randn(5, len(PROMPTS), *base.latent_shape, generator=torch.Generator().manual_seed(7))
    cond = base.encode(PROMPTS)
    with torch.no_grad():
        want = sample_latents(base, SamplerSpec("student", 4, eta=0.0), cond, z)
        want_images = base.decode(want)
    layers, lora_config = base.student_lora()
    save_lora(base, layers, lora_config, tmp_path / "lora")
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_HUB_SCHEDULER), vae=nets.vae,
                        text_encoder=nets.text["enc1"], tokenizer=nets.text["tok1"], text_encoder_2=nets.text["enc2"],
                        tokenizer_2=nets.text["tok2"], transformer=nets.transformer)
    call, inputs = base.pipeline_call(4), dict(prompt_embeds=cond["embeds"], pooled_prompt_embeds=cond["pooled"])
    without = _run_pipe(pipe, call, latents=z[0].clone(), **inputs)  # FLUX.1 latents: our packed tokens
    assert (without - want).abs().max() > 0.1
    pipe.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(_run_pipe(pipe, call, latents=z[0].clone(), **inputs), want, **TOL)
    torch.testing.assert_close(pipe.scheduler.sigmas, base.sigmas(4), rtol=0, atol=1e-6)

    (tmp_path / "pipe").mkdir()
    save_pipeline(base, layers, lora_config, tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert isinstance(loaded, FluxPipeline)
    images = _run_pipe(loaded, call, latents=z[0].clone(), output_type="pt", **inputs)
    torch.testing.assert_close(images, want_images, **TOL)
