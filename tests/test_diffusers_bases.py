"""tiny-sd3 / tiny-flux2: the real diffusers adapters on tiny random configs (CPU, no download)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from rtdmd_bench.bases.diffusers_common import LoraSettings  # noqa: E402
from rtdmd_bench.bases.diffusers_flux1 import Flux1Dev  # noqa: E402
from rtdmd_bench.bases.diffusers_sd3 import SD3, SD35L, SD35M, TinySD3  # noqa: E402
from rtdmd_bench.core.schedules import few_step_sigmas, flux_mu  # noqa: E402
from rtdmd_bench.errors import UserError  # noqa: E402

PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]


def make_sd3(**overrides) -> TinySD3:
    base = TinySD3(dataclasses.replace(TinySD3.Config(), **overrides))
    base.prepare(None)
    return base


def inputs(base, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *base.latent_shape, generator=g)
    sigma = torch.tensor([0.9, 0.5, 0.75, 0.25][:batch])
    return x, sigma, base.encode(PROMPTS[:batch] if batch <= 2 else PROMPTS * (batch // 2))


def sgd_step(params, loss, lr=1.0):
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= lr * g


def test_encode_and_velocity_shapes_every_role():
    base = make_sd3()
    x, sigma, cond = inputs(base)
    assert cond["embeds"].shape == (2, 77 + 8, 32) and cond["pooled"].shape == (2, 16)
    assert cond["neg_embeds"].shape == cond["embeds"].shape
    for role in ("teacher", "student", "fake"):
        for cfg in (None, 4.5):
            v = base.velocity(role, x, sigma, cond, cfg=cfg)
            assert v.shape == (2, *base.latent_shape) and v.dtype == torch.float32
            assert torch.isfinite(v).all()
    # Gaussian LoRA init has B = 0: every role starts exactly at the teacher.
    with torch.no_grad():
        t = base.velocity("teacher", x, sigma, cond)
        assert torch.equal(t, base.velocity("student", x, sigma, cond))
        assert torch.equal(t, base.velocity("fake", x, sigma, cond))
        # CFG is the documented combination of conditional and unconditional predictions.
        uncond = {k: cond[f"neg_{k}"] for k in ("embeds", "pooled")}
        v_u = base.velocity("teacher", x, sigma, {**uncond, **{f"neg_{k}": v for k, v in uncond.items()}})
        torch.testing.assert_close(base.velocity("teacher", x, sigma, cond, cfg=3.0), v_u + 3.0 * (t - v_u),
                                   rtol=1e-4, atol=1e-5)


def test_student_and_fake_are_separate_and_teacher_frozen():
    base = make_sd3()
    x, sigma, cond = inputs(base)
    with torch.no_grad():
        teacher_before = base.velocity("teacher", x, sigma, cond)
        fake_before = base.velocity("fake", x, sigma, cond)
    assert all(p.requires_grad for p in base.trainable("student") + base.trainable("fake"))
    assert base.trainable("teacher") == []
    sgd_step(base.trainable("student"), base.velocity("student", x, sigma, cond).square().mean())
    with torch.no_grad():
        student = base.velocity("student", x, sigma, cond)
        assert not torch.allclose(student, teacher_before)
        assert torch.equal(base.velocity("teacher", x, sigma, cond), teacher_before)
        assert torch.equal(base.velocity("fake", x, sigma, cond), fake_before)
    # Frozen weights really are frozen and shared: only LoRA parameters require grad.
    lora = {id(p) for p in base.trainable("student") + base.trainable("fake")}
    assert all(not p.requires_grad for p in base.nets.transformer.parameters() if id(p) not in lora)


def test_student_graph_survives_fake_call():
    """A student graph, then a fake-score call, then backward: the student still gets gradients."""
    base = make_sd3()
    x, sigma, cond = inputs(base)
    loss = base.velocity("student", x, sigma, cond).square().mean()
    base.velocity("fake", x, sigma, cond)  # switches the active adapter
    grads = torch.autograd.grad(loss, base.trainable("student"), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_gradient_checkpointing_recomputes_with_the_right_adapter():
    ref, ckpt = make_sd3(), make_sd3(gradient_checkpointing=True)
    for b in (ref, ckpt):  # make student != fake so a wrong adapter in recompute shows
        x, sigma, cond = inputs(b)
        sgd_step(b.trainable("fake"), -b.velocity("fake", x, sigma, cond).mean(), lr=10.0)
    grads = []
    for b in (ref, ckpt):
        x, sigma, cond = inputs(b)
        loss = b.velocity("student", x, sigma, cond).square().mean()
        with torch.no_grad():
            b.velocity("fake", x, sigma, cond)
        b._switch["base"].activate("fake")  # backward runs while the fake adapter is selected
        grads.append(torch.autograd.grad(loss, b.trainable("student"), allow_unused=True))
    for g_ref, g_ckpt in zip(*grads):
        if g_ref is None:
            assert g_ckpt is None
        else:
            torch.testing.assert_close(g_ref, g_ckpt, rtol=1e-4, atol=1e-7)


def test_decode_range_and_gradient_to_latents():
    base = make_sd3()
    x = torch.randn(2, *base.latent_shape, requires_grad=True)
    img = base.decode(x)
    assert img.shape == (2, 3, 32, 32)
    assert img.min() >= 0 and img.max() <= 1
    (grad,) = torch.autograd.grad(img.mean(), x)
    assert grad.abs().sum() > 0


def test_adapter_save_load_round_trip(tmp_path):
    base = make_sd3()
    x, sigma, cond = inputs(base)
    sgd_step(base.trainable("student"), base.velocity("student", x, sigma, cond).square().mean())
    with torch.no_grad():
        trained = base.velocity("student", x, sigma, cond)
    path = tmp_path / "student.safetensors"
    base.save_adapter("student", path)
    other = make_sd3()
    other.load_adapter("fake", path)  # adapter-neutral keys: a student adapter loads as fake too
    other.load_adapter("student", path)
    with torch.no_grad():
        torch.testing.assert_close(other.velocity("student", x, sigma, cond), trained)
        torch.testing.assert_close(other.velocity("fake", x, sigma, cond), trained)
    with pytest.raises(UserError, match="does not match"):
        make_sd3(lora=dataclasses.replace(TinySD3.Config().lora, rank=2)).load_adapter("student", path)


def test_merged_student_matches_adapter_output():
    base = make_sd3()
    x, sigma, cond = inputs(base)
    sgd_step(base.trainable("student"), base.velocity("student", x, sigma, cond).square().mean())
    merged = base.merged_student()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        want = base.velocity("student", x, sigma, cond)
        got = base._forward(merged, x, sigma, {k: cond[k] for k in ("embeds", "pooled")})
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_sd3_sigmas_and_step_conditioning_refused():
    base = make_sd3()
    torch.testing.assert_close(base.sigmas(4), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    x, sigma, cond = inputs(base)
    with pytest.raises(UserError, match="fake_step_conditioning"):
        base.velocity("fake", x, sigma, cond, step=torch.zeros(2, dtype=torch.long))


def test_tiny_is_deterministic():
    a, b = make_sd3(), make_sd3()
    x, sigma, cond = inputs(a)
    with torch.no_grad():
        assert torch.equal(a.velocity("teacher", x, sigma, cond), b.velocity("teacher", x, sigma, inputs(b)[2]))
    assert len(a.train_prompts()) >= 8


@pytest.mark.parametrize("cls", [SD3, SD35M, SD35L, Flux1Dev])
def test_missing_weights_local_dir(cls, tmp_path):
    base = cls(dataclasses.replace(cls.Config(), base_path=str(tmp_path), device="cpu"))
    with pytest.raises(UserError) as err:
        base.prepare(None)
    msg = str(err.value)
    assert cls.Config().hub_id in msg and base.env_var in msg and "--base-path" in msg
    assert f"huggingface-cli download {cls.Config().hub_id}" in msg and "transformer/" in msg
    assert "licence" in msg and str(tmp_path) in msg


def test_missing_weights_offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and no local copy: one UserError, no network call, no hub traceback text."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RTDMD_BENCH_SD3_PATH", raising=False)
    base = SD3(dataclasses.replace(SD3.Config(), device="cpu"))
    with pytest.raises(UserError) as err:
        base.prepare(None)
    msg = str(err.value)
    assert "RTDMD_BENCH_SD3_PATH" in msg and "stabilityai/stable-diffusion-3-medium-diffusers" in msg
    assert "Traceback" not in msg


def test_env_var_points_at_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("RTDMD_BENCH_SD3_PATH", str(tmp_path))
    with pytest.raises(UserError, match=str(tmp_path)):
        SD3(dataclasses.replace(SD3.Config(), device="cpu")).prepare(None)


# ---- tiny-flux2 ---------------------------------------------------------------------------------
from rtdmd_bench.bases.diffusers_flux2 import Flux2Klein4B, Flux2Klein9B, TinyFlux2, klein_mu  # noqa: E402


def make_flux2(**overrides) -> TinyFlux2:
    base = TinyFlux2(dataclasses.replace(TinyFlux2.Config(), **overrides))
    base.prepare(None)
    return base


def test_flux2_roles_separate_generator_and_packing():
    base = make_flux2()
    x, sigma, cond = inputs(base)
    assert base.latent_shape == (4, 16) and cond["embeds"].shape == (2, 16, 48)
    with torch.no_grad():
        t = base.velocity("teacher", x, sigma, cond)
        assert torch.equal(base.velocity("fake", x, sigma, cond), t)  # fake starts at the teacher
        assert not torch.allclose(base.velocity("student", x, sigma, cond), t)  # generator: other weights
        assert base.velocity("teacher", x, sigma, cond, cfg=4.0).shape == (2, 4, 16)
    assert base.nets.generator is not None
    sgd_step(base.trainable("student"), base.velocity("student", x, sigma, cond).square().mean())
    with torch.no_grad():
        assert torch.equal(base.velocity("teacher", x, sigma, cond), t)
        assert torch.equal(base.velocity("fake", x, sigma, cond), t)
        merged = base.merged_student()
        torch.testing.assert_close(base._forward(merged, x, sigma, {"embeds": cond["embeds"]}),
                                   base.velocity("student", x, sigma, cond), rtol=1e-4, atol=1e-5)
    # Official FLUX.2 targets: single-block fused projections carry LoRA too.
    assert any("single_transformer_blocks.0.attn.to_qkv_mlp_proj" in k for k in base.state_dict("fake"))


def test_flux2_shared_generator_option_and_decode():
    base = make_flux2(separate_generator=False)
    x, sigma, cond = inputs(base)
    with torch.no_grad():
        assert torch.equal(base.velocity("student", x, sigma, cond), base.velocity("teacher", x, sigma, cond))
    x.requires_grad_(True)
    img = base.decode(x)
    assert img.shape == (2, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    assert torch.autograd.grad(img.mean(), x)[0].abs().sum() > 0


def test_flux2_sigmas_follow_klein_dynamic_shift():
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    for seq, steps in ((4, 4), (1024, 4), (4096, 8), (5000, 4)):
        assert klein_mu(seq, steps) == pytest.approx(compute_empirical_mu(seq, steps), rel=1e-9)
    sig = TinyFlux2(TinyFlux2.Config()).sigmas(4)
    mu = klein_mu(4, 4)
    raw = torch.tensor([1.0, 0.75, 0.5, 0.25])
    want = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + 1 / raw - 1)
    torch.testing.assert_close(sig, torch.cat([want, torch.zeros(1)]))


@pytest.mark.parametrize("cls", [Flux2Klein4B, Flux2Klein9B])
def test_flux2_missing_weights(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = cls(dataclasses.replace(cls.Config(), base_path=str(tmp_path), device="cpu"))
    with pytest.raises(UserError) as err:
        base.prepare(None)
    msg = str(err.value)
    assert cls.Config().hub_id in msg and base.env_var in msg and "text_encoder/" in msg
    assert ("gated" in msg) == (cls is Flux2Klein9B)


# ---- FLUX.1-dev adapter on a tiny random FLUX.1 (test-only build) ------------------------------
class _TinyFlux1(Flux1Dev):
    latent_channels = 4

    def _build(self):
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        from rtdmd_bench.bases.diffusers_common import TINY_PROMPTS, Networks, word_tokenizer
        from rtdmd_bench.bases.diffusers_sd3 import TINY_CLIP, TINY_T5, TINY_VAE

        tok = word_tokenizer(TINY_PROMPTS, 77)
        ids = dict(vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        return Networks(
            transformer=FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                               pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4)),
            vae=AutoencoderKL(**TINY_VAE, scaling_factor=0.3611, shift_factor=0.1159),
            text={"tok1": tok, "tok2": word_tokenizer(TINY_PROMPTS, 8), "enc1": CLIPTextModel(CLIPTextConfig(**TINY_CLIP, **ids)),
                  "enc2": T5EncoderModel(T5Config(**TINY_T5, **ids, decoder_start_token_id=0))})


def test_flux1_guidance_embedding_instead_of_cfg():
    base = _TinyFlux1(dataclasses.replace(Flux1Dev.Config(), resolution=32, weights_dtype="fp32",
                                          autocast_bf16=False, gradient_checkpointing=False, max_sequence_length=8,
                                          device="cpu", lora=LoraSettings(rank=4, alpha=8.0)))
    base.prepare(None)
    x, sigma, cond = inputs(base)
    assert set(cond) == {"embeds", "pooled"}  # guidance-distilled: no negative branch
    with torch.no_grad():
        plain = base.velocity("teacher", x, sigma, cond)
        guided = base.velocity("teacher", x, sigma, cond, cfg=3.5)
        assert plain.shape == (2, 4, 16) and not torch.allclose(plain, guided)
        assert torch.equal(base.velocity("fake", x, sigma, cond), plain)
    img = base.decode(x)
    assert img.shape == (2, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    mu = flux_mu(4)
    torch.testing.assert_close(base.sigmas(4), few_step_sigmas(4, mu=mu))


def test_memory_benchmark_shared_layout_within_target():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_shared_base.py"
    spec = importlib.util.spec_from_file_location("memory_shared_base", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    m = bench.measure_tiny(lora_rank=4)
    one, shared, three = m["one_tf"] + m["rest"], m["shared_tf"] + m["rest"], m["three_tf"] + m["rest"]
    assert shared <= bench.TARGET * one < three
    assert m["three_tf"] == 3 * m["one_tf"]


@pytest.mark.slow
def test_cli_train_without_weights_fails_cleanly(tmp_path):
    """`train --base sd3` offline without weights: exit status 2, the one message, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RTDMD_BENCH_SD3_PATH", None)
    proc = subprocess.run([sys.executable, "-m", "rtdmd_bench", "train", "--method", "dmd2", "--base", "sd3",
                           "--budget", "1T", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    out = " ".join((proc.stdout + proc.stderr).split())  # rich wraps lines
    assert proc.returncode == 2, out
    assert "RTDMD_BENCH_SD3_PATH" in out and "huggingface-cli download" in out and "Traceback" not in out
    assert "budget 1e+12 FLOPs on sd3" in out  # the run-start summary (item 14) came first


def test_bf16_weights_autocast_and_checkpointing_keep_fp32_lora():
    base = make_sd3(weights_dtype="bf16", autocast_bf16=True, gradient_checkpointing=True)
    x, sigma, cond = inputs(base)
    assert base.nets.transformer.proj_out.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in base.trainable("student") + base.trainable("fake"))
    v = base.velocity("student", x, sigma, cond)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    img = base.decode(x - sigma.view(-1, 1, 1, 1) * v)
    grads = torch.autograd.grad(img.mean(), base.trainable("student"), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_export_student_reloads_with_diffusers(tmp_path):
    from diffusers import SD3Transformer2DModel

    base = make_sd3()
    x, sigma, cond = inputs(base)
    sgd_step(base.trainable("student"), base.velocity("student", x, sigma, cond).square().mean())
    base.export_student(tmp_path / "student")
    net = SD3Transformer2DModel.from_pretrained(tmp_path / "student")
    with torch.no_grad():
        torch.testing.assert_close(base._forward(net, x, sigma, {k: cond[k] for k in ("embeds", "pooled")}),
                                   base.velocity("student", x, sigma, cond), rtol=1e-4, atol=1e-5)


def test_prompt_file(tmp_path):
    base = SD3(dataclasses.replace(SD3.Config(), device="cpu"))
    with pytest.raises(UserError, match="prompt_file"):
        base.train_prompts()
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n a dog \n", encoding="utf-8")
    assert SD3(dataclasses.replace(SD3.Config(), device="cpu", prompt_file=str(f))).train_prompts() == ["a cat", "a dog"]
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "pickscore" / "test.txt"
    if shared.is_file():
        assert len(SD3(dataclasses.replace(SD3.Config(), device="cpu", prompt_file=str(shared))).train_prompts()) > 1000


def test_flux_token_layouts_match_the_diffusers_pipelines():
    """Our unpacking is the inverse of what FluxPipeline / Flux2KleinPipeline do with latents."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
    from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

    z = torch.randn(2, 4, 8, 8)  # (B, C, H, W) VAE latents, H = W = 2 * side
    f1 = _TinyFlux1.__new__(_TinyFlux1)
    f1.side = 4
    torch.testing.assert_close(f1.unpack_latents(FluxPipeline._pack_latents(z, 2, 4, 8, 8)), z)

    f2 = make_flux2()
    f2.side = 4
    vae = f2.nets.vae
    patched = Flux2KleinPipeline._patchify_latents(z)  # (B, 4C, h, w)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    tokens = Flux2KleinPipeline._pack_latents((patched - mean) / std)  # what the transformer sees
    torch.testing.assert_close(f2.unpack_latents(tokens), z, rtol=1e-5, atol=1e-5)


def test_text_conditioning_matches_the_diffusers_pipelines():
    """Same tiny components through the official pipelines' encode_prompt give the same tensors."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, StableDiffusion3Pipeline

    from rtdmd_bench.bases.diffusers_flux2 import _ids

    sd3 = make_sd3()
    t = sd3.nets.text
    pipe = StableDiffusion3Pipeline(transformer=sd3.nets.transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=sd3.nets.vae, text_encoder=t["enc1"], tokenizer=t["tok1"],
                                    text_encoder_2=t["enc2"], tokenizer_2=t["tok2"], text_encoder_3=t["enc3"],
                                    tokenizer_3=t["tok3"])
    emb, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, None, None, device="cpu",
                                                      do_classifier_free_guidance=True, max_sequence_length=8)
    cond = sd3.encode(PROMPTS)
    for ours, theirs in ((cond["embeds"], emb), (cond["neg_embeds"], neg), (cond["pooled"], pooled),
                         (cond["neg_pooled"], neg_pooled)):
        torch.testing.assert_close(ours, theirs)

    f2 = make_flux2()
    pipe2 = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=f2.nets.vae,
                               text_encoder=f2.nets.text["enc"], tokenizer=f2.nets.text["tok"],
                               transformer=f2.nets.transformer)
    emb2, txt_ids = pipe2.encode_prompt(PROMPTS, device="cpu", max_sequence_length=16,
                                        text_encoder_out_layers=(1, 2, 3))
    torch.testing.assert_close(f2.encode(PROMPTS)["embeds"], emb2)
    ours_txt, ours_img = _ids(16, 2, 2)
    torch.testing.assert_close(ours_txt, txt_ids[0])
    torch.testing.assert_close(ours_img, Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 16, 2, 2))[0])


def test_metered_calls_charge_flops_and_keep_gradients():
    from rtdmd_bench.compute import ComputeMeter, MeteredBase

    base = make_sd3()
    meter = ComputeMeter()
    metered = MeteredBase(base, meter)
    x, sigma, cond = inputs(base)
    loss = metered.velocity("student", x, sigma, cond).square().mean()
    loss.backward()
    assert meter.flops["student"]["fwd"] > 0 and meter.flops["student"]["bwd"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in base.trainable("student"))
    with torch.no_grad():
        metered.velocity("teacher", x, sigma, cond)
        plain = meter.flops["teacher"]["fwd"]
        metered.velocity("teacher", x, sigma, cond, cfg=4.5)
    assert meter.flops["teacher"]["fwd"] - plain == pytest.approx(2 * plain, rel=0.05)  # CFG = two branches
    metered.decode(x)
    assert meter.flops["decode"]["fwd"] > 0
