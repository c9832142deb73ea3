"""Reward scorers on their tiny random stand-ins: shapes, gradients, batching invariance,
determinism, caching, labelling, and the real loading path from saved local folders."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.rewards import tiny
from rtdmd_bench.rewards.clip_based import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Aesthetic, CLIPScore, HPSv21
from rtdmd_bench.rewards.loading import clear_model_cache

DIFFERENTIABLE = ["tiny-clipscore", "tiny-pickscore", "tiny-hpsv2", "tiny-aesthetic", "tiny-imagereward"]
PROMPTS = ["a photo of a cat", "two dogs on a red bench", "a blue car left of a tree", "a cup",
           "an astronaut riding a horse", "three apples", "", "a very long prompt " * 8]


def images(n: int = 8, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def build(name: str, **overrides):
    cls = registry.resolve("rewards", name)
    return cls(replace(cls.Config(), **overrides))


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_scores_shape_finite_and_gradient_reaches_image(name):
    reward = build(name)
    x = images(4).requires_grad_(True)
    scores = reward(x, PROMPTS[:4])
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    (grad,) = torch.autograd.grad(scores.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert reward.differentiable


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_batching_invariance(name):
    x = images(8)
    one = build(name, batch_size=1)(x, PROMPTS)
    eight = build(name, batch_size=8)(x, PROMPTS)
    three = build(name, batch_size=3)(x, PROMPTS)
    torch.testing.assert_close(one, eight, atol=1e-5, rtol=0)
    torch.testing.assert_close(three, eight, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_scores_depend_on_image_and_are_deterministic(name):
    reward = build(name)
    x = images(2)
    first = reward(x, PROMPTS[:2])
    clear_model_cache()
    again = build(name)(x, PROMPTS[:2])  # rebuilt from the seed
    torch.testing.assert_close(first, again, atol=1e-6, rtol=0)
    other = reward(images(2, seed=1), PROMPTS[:2])
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("name", ["tiny-clipscore", "tiny-pickscore", "tiny-hpsv2", "tiny-imagereward"])
def test_text_conditioned_scores_depend_on_prompt(name):
    reward = build(name)
    x = images(1).expand(2, -1, -1, -1)
    scores = reward(x, ["a photo of a cat", "zebra stripes at night"])
    assert abs(float(scores[0] - scores[1])) > 1e-7


def test_stand_ins_are_labelled_and_never_official():
    for name in registry.names("rewards"):
        if name.startswith("tiny-"):
            cls = registry.resolve("rewards", name)
            assert "stand-in" in cls.name and cls.name != name.removeprefix("tiny-")
            assert "STAND-IN" in registry.entry("rewards", name).summary


def test_models_are_cached_per_config():
    a, b = build("tiny-clipscore"), build("tiny-clipscore", batch_size=2)
    assert a.encoder is b.encoder  # batch size does not change the weights
    c = build("tiny-clipscore", seed=7)
    assert c.encoder is not a.encoder


def test_clipscore_conventions():
    x = images(3)
    raw = build("tiny-clipscore")(x, PROMPTS[:3])
    tm = build("tiny-clipscore", convention="torchmetrics")(x, PROMPTS[:3])
    torch.testing.assert_close(tm, (100 * raw).clamp(min=0), atol=1e-4, rtol=0)
    assert (raw.abs() <= 1).all()


def test_pickscore_divide_by():
    x = images(2)
    full = build("tiny-pickscore")(x, PROMPTS[:2])
    rtdmd = build("tiny-pickscore", divide_by=26.0)(x, PROMPTS[:2])
    torch.testing.assert_close(rtdmd, full / 26.0, atol=1e-6, rtol=0)


def test_hps_scale_and_reference_equals_float_transform_on_uint8_images():
    """x100 scales the cosine; on images already on uint8 levels the reference pipeline (uint8 ->
    HPSv2's preprocess_val) and the float one are the same transform."""
    x = (images(2, 40, 56) * 255).round() / 255
    base = build("tiny-hpsv2")(x, PROMPTS[:2])
    torch.testing.assert_close(build("tiny-hpsv2", scale=100.0)(x, PROMPTS[:2]), 100 * base, atol=1e-4, rtol=0)
    torch.testing.assert_close(build("tiny-hpsv2", pixels="differentiable")(x, PROMPTS[:2]), base, atol=1e-6, rtol=0)


def test_bad_inputs_raise():
    reward = build("tiny-clipscore")
    with pytest.raises(ValueError, match="prompts"):
        reward(images(2), ["one prompt"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(torch.rand(2, 1, 8, 8), ["a", "b"])


# ---- the real loaders, fed with tiny models saved in the official formats -------------

def save_hf_clip_folder(path, seed=0):
    """A tiny CLIP saved as a hub snapshot would be: config + safetensors + tokenizer + processor."""
    enc = tiny.tiny_hf_clip(tiny.TinySize(seed=seed))
    enc.model.save_pretrained(path)
    enc.tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
        "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3}))
    return enc


def test_clipscore_loads_a_local_folder_and_matches_the_stand_in(tmp_path):
    clear_model_cache()
    save_hf_clip_folder(tmp_path, seed=0)
    real = CLIPScore(CLIPScore.Config(local_path=str(tmp_path)))
    x = images(3)
    torch.testing.assert_close(real(x, PROMPTS[:3]), build("tiny-clipscore", seed=0)(x, PROMPTS[:3]),
                               atol=1e-5, rtol=0)


def test_aesthetic_loads_clip_folder_and_original_mlp_file(tmp_path):
    clear_model_cache()
    save_hf_clip_folder(tmp_path / "clip", seed=3)
    mlp = tiny.seeded(3, lambda: tiny.preference_mlp(16))
    state = {f"layers.{k}": v for k, v in mlp.state_dict().items()}  # the original key layout
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    real = Aesthetic(Aesthetic.Config(clip_path=str(tmp_path / "clip"),
                                      local_path=str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")))
    x = images(2)
    torch.testing.assert_close(real(x, PROMPTS[:2]), build("tiny-aesthetic")(x, PROMPTS[:2]), atol=1e-5, rtol=0)


def test_hps_loads_a_training_checkpoint_with_state_dict_key(tmp_path, monkeypatch):
    """The HPS release is {'state_dict': ...} (HPSv2 img_score.py); DDP 'module.' prefixes too."""
    import open_clip
    from open_clip import factory

    size = tiny.TinySize(seed=2)
    arch = {"embed_dim": size.embed_dim,
            "vision_cfg": dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
            "text_cfg": dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)}
    monkeypatch.setitem(factory._MODEL_CONFIGS, "tiny-test-hps", arch)
    model = tiny.seeded(5, lambda: open_clip.CLIP(**arch))
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "HPS_v2.1_compressed.pt")
    clear_model_cache()
    real = HPSv21(HPSv21.Config(local_path=str(tmp_path), arch="tiny-test-hps"))
    assert real.name == "hpsv21"
    x = images(2)
    expected = build("tiny-hpsv2", seed=5)(x, PROMPTS[:2])
    torch.testing.assert_close(real(x, PROMPTS[:2]), expected, atol=1e-5, rtol=0)


def test_rewards_run_under_the_compute_meter():
    """Training wraps rewards in MeteredReward (FlopCounterMode + a backward probe)."""
    from rtdmd_bench.compute import ComputeMeter, MeteredReward

    meter = ComputeMeter()
    reward = MeteredReward(build("tiny-hpsv21"), meter)
    x = images(2).requires_grad_(True)
    scores = reward(x, PROMPTS[:2])
    scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert meter.flops["reward"]["fwd"] > 0 and meter.flops["reward"]["bwd"] > 0
    assert reward.name == "tiny-hpsv21[stand-in]"


def test_max_length_padding_equals_official_longest_padding():
    """PickScore's official call pads to the longest prompt; padding to 77 gives the same
    text features (causal mask + EOS pooling), which keeps scores batch-independent."""
    enc = build("tiny-pickscore").encoder
    prompts = ["a cat", "a much longer prompt about a dog on a bench"]
    tok = enc.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        official = enc.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        ours = enc.text_features(prompts)
    assert tok.input_ids.shape[1] < 77
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)


def test_every_reward_config_field_can_be_set_from_the_command_line():
    """`--set reward.NAME.FIELD=VALUE` parses every field type (config.py's strict parser)."""
    from dataclasses import fields, is_dataclass

    from rtdmd_bench.config import set_field

    for name in registry.names("rewards"):
        if name in ("toy-quadratic", "toy-linear", "digit-correct", "digit-ink"):
            continue
        cfg = registry.resolve("rewards", name).Config()
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            if is_dataclass(value):  # a group (shapes-proxy's proxy): its fields are set one by one
                for sub in fields(value):
                    assert set_field(cfg, [f.name, sub.name], str(getattr(value, sub.name)),
                                     f"reward.{name}.{f.name}.{sub.name}") == cfg
                continue
            assert set_field(cfg, [f.name], str(value), f"reward.{name}.{f.name}") == cfg


def test_repeated_prompts_share_text_features():
    """GRPO groups repeat prompts: the text tower runs once per distinct prompt, same scores."""
    from rtdmd_bench.rewards.clip_models import unique_prompts

    unique, index = unique_prompts(["b", "a", "b", "c", "a"])
    assert unique == ["b", "a", "c"] and index.tolist() == [0, 1, 0, 2, 1]
    x = images(4)
    for name in ("tiny-clipscore", "tiny-hpsv21"):
        reward = build(name, batch_size=4)
        grouped = reward(x, ["a cat", "a cat", "a dog", "a cat"])
        single = torch.cat([reward(x[i:i + 1], [p]) for i, p in enumerate(["a cat", "a cat", "a dog", "a cat"])])
        torch.testing.assert_close(grouped, single, atol=1e-5, rtol=0)


def test_official_classes_carry_their_registry_names():
    for name in ("clipscore", "hpsv2", "hpsv21", "pickscore", "aesthetic", "imagereward", "geneval-partial"):
        cls = registry.resolve("rewards", name)
        assert cls.name == name and "stand-in" not in cls.name


def test_aesthetic_mlp_runs_in_float32_under_fp16_autocast():
    """simple_inference.py runs CLIP in fp16 on CUDA but the MLP on a float32 embedding; the
    suite's fp16 autocast must not reach the MLP (CPU autocast stands in for CUDA here)."""
    reward = build("tiny-aesthetic")
    seen = []
    hook = reward.mlp[0].register_forward_hook(
        lambda mod, args, out: seen.append((args[0].dtype, out.dtype, torch.is_autocast_enabled("cpu"))))
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            scores = reward(images(2), PROMPTS[:2])
    finally:
        hook.remove()
    assert seen == [(torch.float32, torch.float32, False)] and torch.isfinite(scores).all()
