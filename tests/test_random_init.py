"""`--set base.init=random`: the real bases' published architectures with random weights, no download.

Real sizes are only built on the meta device here (SD3-M's transformer and T5-XXL in fp32 would not
fit this machine); the mechanism runs end to end on the same classes with shrunk widths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from rtdmd_bench.bases import diffusers_flux1, diffusers_flux2, diffusers_sd3, real_configs  # noqa: E402
from rtdmd_bench.bases.diffusers_common import LoraSettings  # noqa: E402
from rtdmd_bench.errors import UserError  # noqa: E402
from rtdmd_bench.meta_costs import build_meta, count  # noqa: E402
from rtdmd_bench.registry import resolve  # noqa: E402

FAMILY = {"sd3": diffusers_sd3, "sd35m": diffusers_sd3, "sd35l": diffusers_sd3, "flux2-4b": diffusers_flux2,
          "flux2-9b": diffusers_flux2, "flux1-dev": diffusers_flux1}
PUBLISHED_BILLIONS = {"sd3": 2.03, "sd35m": 2.24, "sd35l": 8.06, "flux2-4b": 3.88, "flux2-9b": 9.08, "flux1-dev": 11.9}
"""Transformer parameters of the released checkpoints, in billions (the figures tests/test_plan.py checks)."""


def t5_encoder_params(vocab: int, d: int, d_kv: int, heads: int, d_ff: int, layers: int, buckets: int = 32) -> int:
    """T5 v1.1 encoder by hand: shared embedding; per layer q, k, v, o (d x heads d_kv), gated-GELU
    wi_0, wi_1, wo (d x d_ff), two RMS-norm scales; final norm; relative position bias (first layer)."""
    per_layer = 4 * d * heads * d_kv + 3 * d * d_ff + 2 * d
    return vocab * d + layers * per_layer + d + buckets * heads


def pretrained_classes(name: str, monkeypatch) -> dict[str, str]:
    """{subfolder: class name} the pretrained path asks `load_component` for (nothing is loaded)."""
    module = FAMILY[name]
    asked: dict[str, str] = {}

    def record(cls, location, subfolder, local, message, **kw):  # noqa: ANN001
        key = "generator" if subfolder in asked and subfolder == "transformer" else subfolder
        asked[key] = cls.__name__
        return None

    monkeypatch.setattr(module, "load_component", record)
    monkeypatch.setattr(module, "check_scheduler_config", lambda *a, **k: [])
    cls = resolve("bases", name)
    cls(cls.Config(device="meta"))._build()
    return asked


SUBFOLDER = {"transformer": "transformer", "vae": "vae", "generator": "generator",
             "enc1": "text_encoder", "enc2": "text_encoder_2", "enc3": "text_encoder_3", "enc": "text_encoder"}


@pytest.mark.parametrize("name", list(FAMILY))
def test_random_init_builds_the_published_architecture_on_meta(name, monkeypatch):
    for var in ("SD3", "SD35M", "SD35L", "FLUX2_4B", "FLUX2_9B", "FLUX1_DEV"):
        monkeypatch.delenv(f"RTDMD_BENCH_{var}_PATH", raising=False)
    cls = resolve("bases", name)
    base = cls(cls.Config(init="random", device="meta"))
    nets = base._build()
    rb = real_configs.REAL_BASES[name]
    modules = {"transformer": nets.transformer, "vae": nets.vae, "generator": nets.generator,
               **{k: v for k, v in nets.text.items() if isinstance(v, torch.nn.Module)}}
    modules = {k: v for k, v in modules.items() if v is not None}
    # The classes the pretrained path loads, component by component (FLUX.2: the generator too).
    asked = pretrained_classes(name, monkeypatch)
    assert {SUBFOLDER[k]: type(m).__name__ for k, m in modules.items()} == \
        {k: v for k, v in asked.items() if not k.startswith("tokenizer")}
    # Parameter counts: the ones plan counts on the meta device, and independent figures.
    assert count(nets.transformer) == count(build_meta(rb.transformer))
    assert count(nets.transformer) / 1e9 == pytest.approx(PUBLISHED_BILLIONS[name], rel=0.01)
    assert count(nets.vae) == count(build_meta(rb.vae))
    encoders = [m for k, m in sorted(modules.items()) if k.startswith("enc")]
    assert [count(m) for m in encoders] == [count(build_meta(c)) for c in rb.text_encoders]
    for m in encoders:
        if type(m).__name__ == "T5EncoderModel":  # SD3 family and FLUX.1: T5-XXL
            assert count(m) == t5_encoder_params(32128, 4096, 64, 64, 10240, 24)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "meta" for m in modules.values() for p in m.parameters())
    if nets.generator is not None:
        assert count(nets.generator) == count(nets.transformer)


def test_random_init_with_weights_given_is_a_user_error():
    with pytest.raises(UserError, match="base.init=random.*base.base_path=/data/sd3"):
        diffusers_sd3.SD3(diffusers_sd3.SD3.Config(init="random", base_path="/data/sd3", device="cpu"))
    with pytest.raises(UserError, match="generator_path"):
        diffusers_flux2.Flux2Klein4B(diffusers_flux2.Flux2Klein4B.Config(init="random", generator_path="/g", device="cpu"))
    from rtdmd_bench.config import resolve_config

    with pytest.raises(UserError, match="'zeros' is not one of 'pretrained', 'random'"):  # a closed set
        resolve_config("dmd2", "sd3", ["base.init=zeros"])
    with pytest.raises(UserError, match="'pretrained' is not one of 'random'"):  # tiny bases have no weights
        resolve_config("dmd2", "tiny-sd3", ["base.init=pretrained"])


# ---- the same classes at reduced widths: build, sample, train and evaluate offline -------------
def shrunk(name: str) -> real_configs.RealBase:
    """The base's recorded architecture with tiny widths, channels and classes unchanged."""
    rb = real_configs.REAL_BASES[name]
    vae = dataclasses.replace(rb.vae, kwargs=dict(rb.vae.kwargs, block_out_channels=(8, 8, 16, 16),
                                                  layers_per_block=1, norm_num_groups=4))
    if name == "sd3":
        tf = dict(num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                  caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16, sample_size=4)
        clip = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, projection_dim=8)
        text = [clip, clip, dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)]
    elif name == "flux2-4b":
        tf = dict(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                  joint_attention_dim=48, timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2))
        text = [dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=8)]
    else:  # flux1-dev
        tf = dict(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                  joint_attention_dim=32, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
        text = [dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2),
                dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)]
    encoders = tuple(dataclasses.replace(c, kwargs=dict(c.kwargs, **t)) for c, t in zip(rb.text_encoders, text))
    return dataclasses.replace(rb, transformer=dataclasses.replace(rb.transformer, kwargs=dict(rb.transformer.kwargs, **tf)),
                               vae=vae, text_encoders=encoders)


SMALL = dict(resolution=32, weights_dtype="fp32", autocast_bf16=False, gradient_checkpointing=False, device="cpu",
             max_sequence_length=8)


@pytest.fixture
def offline(monkeypatch):
    """No hub, no local weights: every way to a download or a weights folder fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("SD3", "FLUX2_4B", "FLUX1_DEV"):
        monkeypatch.delenv(f"RTDMD_BENCH_{var}_PATH", raising=False)
        monkeypatch.delenv(f"RTDMD_BENCH_{var}_GENERATOR_PATH", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download or weights load was attempted: {args[:2]}")

    import huggingface_hub

    for module in (diffusers_sd3, diffusers_flux2, diffusers_flux1):
        monkeypatch.setattr(module, "load_component", refuse)
        monkeypatch.setattr(module, "check_scheduler_config", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def small_base(name: str, monkeypatch, seed: int = 0):
    monkeypatch.setitem(real_configs.REAL_BASES, name, shrunk(name))
    cls = resolve("bases", name)
    lora = LoraSettings(rank=4, alpha=8.0, targets=cls.Config().lora.targets)
    extra = {"text_layers": (1, 2, 3)} if name == "flux2-4b" else {}
    return cls(cls.Config(init="random", seed=seed, lora=lora, **SMALL, **extra))


@pytest.mark.parametrize("name", ["sd3", "flux2-4b", "flux1-dev"])
def test_a_shrunk_random_init_base_samples_offline(name, monkeypatch, offline):
    from rtdmd_bench.samples import SamplerSpec, generate

    base = small_base(name, monkeypatch)
    state = torch.random.get_rng_state()
    base.prepare(None)
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded build leaves the global stream alone
    assert type(base.nets.transformer).__name__ == real_configs.REAL_BASES[name].transformer.cls
    images = generate(base, SamplerSpec("teacher", 2, tag="random"), ["a red cat", "two dogs"], 1, 0, None)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    unguided = generate(base, SamplerSpec("teacher", 2, cfg=1.0, tag="random"), ["a red cat"], 1, 0, None)
    student = generate(base, SamplerSpec("student", 2, tag="random"), ["a red cat"], 1, 0, None)
    # LoRA B = 0: the student starts exactly at the teacher, unless it has its own transformer (FLUX.2-klein's
    # generator, built from the same config with the next weights of the seeded stream)
    assert torch.equal(student, unguided) == (base.nets.generator is None)
    assert base.label == f"{name}[random-init]" and "RANDOM weights (seed 0)" in base.weights_note()


def test_random_init_weights_follow_the_seed(monkeypatch, offline):
    def weights(seed: int) -> torch.Tensor:
        base = small_base("sd3", monkeypatch, seed)
        base.prepare(None)
        return torch.cat([p.flatten() for n, p in base.nets.transformer.named_parameters() if "lora_" not in n])

    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_random_init_run_and_its_results_say_so(monkeypatch, offline, tmp_path):
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.evaluate import SamplerSpec, build_suite, evaluate_suite
    from rtdmd_bench.report import compare_runs
    from rtdmd_bench.train import load_for_eval, train

    monkeypatch.setitem(real_configs.REAL_BASES, "sd3", shrunk("sd3"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\ntwo dogs\n")
    sets = [f"base.{k}={v}" for k, v in SMALL.items()] + [
        "base.init=random", "base.lora.rank=4", "base.lora.alpha=8", f"base.prompt_file={prompts}",
        "train.batch_size=2", "train.budget=1e6", "train.threads=1"]
    cfg = resolve_config("dmd2", "sd3", sets)
    result = train(cfg, tmp_path / "run")
    assert result["base"] == "sd3[random-init]" and "RANDOM weights" in result["note"]
    assert json.loads(json.dumps(result["config"]))["base"]["init"] == "random"
    b = load_for_eval(tmp_path / "run")
    suite = build_suite("clipscore", {"scorer": "tiny-clipscore", "limit": 2, "prompts": str(prompts)})
    with b.method.generator():
        res = evaluate_suite(suite, b.base, SamplerSpec("student", 2, tag="r"), b.rewards, b.cfg.to_dict(), 0,
                             None, tmp_path / "clipscore.json")
    saved = json.loads(Path(tmp_path / "clipscore.json").read_text())
    assert saved["run"]["base"] == "sd3[random-init]" and saved["note"] == res["note"] == result["note"]
    assert any(label.startswith("dmd2 / sd3[random-init]") for label, _ in compare_runs([tmp_path / "run"]).rows)


def test_a_random_init_run_says_so_when_it_starts():
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.plan import run_summary

    lines = run_summary(resolve_config("dmd2", "sd3", ["base.init=random", "base.seed=3"]))
    assert any("base.init=random: sd3 with RANDOM weights (seed 3)" in line for line in lines)
    assert not any("RANDOM" in line for line in run_summary(resolve_config("dmd2", "sd3", [])))
