"""Reward weights: one clear UserError offline / with an empty folder (no network call),
preprocessing against independent references, ImageReward constants, head layout and the
official checkpoint key mapping."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import clip_based, imagereward, tiny
from rtdmd_bench.rewards.clip_based import (
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Aesthetic, CLIPScore, HPSv2, HPSv21, PickScore, PixelSpec,
    resize_longer_side_pad, to_model_pixels,
)
from rtdmd_bench.rewards.imagereward import ImageReward
from rtdmd_bench.rewards.loading import clear_model_cache

REAL = {
    CLIPScore: ("openai/clip-vit-large-patch14", "RTDMD_BENCH_CLIP_PATH", 1),
    PickScore: ("yuvalkirstain/PickScore_v1", "RTDMD_BENCH_PICKSCORE_PATH", 2),
    HPSv2: ("xswu/HPSv2", "RTDMD_BENCH_HPSV2_PATH", 1),
    HPSv21: ("HPS_v2.1_compressed.pt", "RTDMD_BENCH_HPSV2_PATH", 1),
    Aesthetic: ("sac+logos+ava1-l14-linearMSE.pth", "RTDMD_BENCH_AESTHETIC_PATH", 2),
    ImageReward: ("THUDM/ImageReward", "RTDMD_BENCH_IMAGEREWARD_PATH", 2),
}


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 over an empty hub cache; records any attempt to open a socket."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for var in ("RTDMD_BENCH_CLIP_PATH", "RTDMD_BENCH_PICKSCORE_PATH", "RTDMD_BENCH_PICKSCORE_PROCESSOR_PATH",
                "RTDMD_BENCH_HPSV2_PATH", "RTDMD_BENCH_AESTHETIC_PATH", "RTDMD_BENCH_IMAGEREWARD_PATH",
                "RTDMD_BENCH_BERT_TOKENIZER_PATH"):
        monkeypatch.delenv(var, raising=False)
    attempts: list = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: (attempts.append(addr), real_connect(self, addr)))
    clear_model_cache()
    return attempts


@pytest.mark.parametrize("cls", list(REAL), ids=lambda c: c.__name__)
def test_real_scorer_fails_offline_with_one_clear_error(cls, offline_empty_hub):
    needle, env_var, sources = REAL[cls]
    with pytest.raises(UserError) as err:
        cls()
    msg = str(err.value)
    assert needle in msg and env_var in msg
    assert "HF_HUB_OFFLINE" in msg and msg.count("hf download") == sources  # every component at once
    assert offline_empty_hub == []  # no network call


def test_empty_local_folder_names_the_missing_files(tmp_path, offline_empty_hub):
    with pytest.raises(UserError) as err:
        HPSv21(HPSv21.Config(local_path=str(tmp_path)))
    assert "HPS_v2.1_compressed.pt" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(UserError) as err:
        CLIPScore(CLIPScore.Config(local_path=str(tmp_path / "missing")))
    assert "does not exist" in str(err.value)


def test_env_var_points_at_local_copy(tmp_path, offline_empty_hub, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_IMAGEREWARD_PATH", str(tmp_path))
    with pytest.raises(UserError) as err:
        ImageReward()
    assert "ImageReward.pt" in str(err.value) and "med_config.json" in str(err.value)
    assert str(tmp_path) in str(err.value)


# ---- preprocessing ------------------------------------------------------------------

def smooth_image(h: int, w: int) -> torch.Tensor:
    """Low-frequency image (3, H, W) in [0, 1], quantised to uint8 levels."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(1, 3, 6, 7, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (x * 255).round() / 255


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.mark.parametrize("hw", [(300, 400), (512, 512), (180, 150)])
def test_clip_preprocessing_matches_official_pil_pipeline(hw):
    """Official: Resize(224, BICUBIC) on PIL, CenterCrop(224), ToTensor, Normalize."""
    x = smooth_image(*hw)
    official = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                          T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])(to_pil(x))
    ours = to_model_pixels(x[None], PixelSpec(size=224, crop=224))[0]
    assert ours.shape == official.shape == (3, 224, 224)
    diff = (ours - official).abs()
    # uint8 rounding is ~0.015 in normalised units; interpolation details add a little.
    assert diff.mean() < 0.01 and diff.max() < 0.08


def test_clip_preprocessing_equals_torchvision_tensor_ops():
    x = smooth_image(300, 400)[None]
    ref = T.functional.resize(x, 224, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    ref = T.functional.normalize(T.functional.center_crop(ref, 224).clamp(0, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    torch.testing.assert_close(to_model_pixels(x, PixelSpec(size=224, crop=224)), ref, atol=1e-5, rtol=0)


def test_hps_pad_layout_matches_resize_max_size_on_pil():
    """HPSv2's ResizeMaxSize: longer side to 224, zero padding centred (floor half left/top)."""
    x = smooth_image(150, 300)
    pil = to_pil(x).resize((224, 112), Image.BICUBIC)
    ref = T.functional.pad(T.functional.to_tensor(pil), [0, 56, 0, 56], fill=0)
    ours = resize_longer_side_pad(x[None], 224)[0].clamp(0, 1)
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours[:, :56] == 0).all() and (ours[:, -56:] == 0).all()
    assert (ours - ref).abs().mean() < 0.005


def test_preprocessing_is_differentiable():
    x = smooth_image(64, 80)[None].requires_grad_(True)
    out = to_model_pixels(x, PixelSpec(size=32, crop=32, layout="pad"))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0


# ---- ImageReward ----------------------------------------------------------------------

def test_imagereward_constants_and_head_layout():
    assert imagereward.REWARD_MEAN == 0.16717362830052426
    assert imagereward.REWARD_STD == 1.0333394966054072
    assert imagereward.PROMPT_TOKENS == 35
    head = clip_based.preference_mlp(768)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items() if k.endswith("weight")}
    assert shapes == {"0.weight": (1024, 768), "2.weight": (128, 1024), "4.weight": (64, 128),
                      "6.weight": (16, 64), "7.weight": (1, 16)}
    assert [type(m).__name__ for m in head] == ["Linear", "Dropout", "Linear", "Dropout", "Linear",
                                                 "Dropout", "Linear", "Linear"]  # no activations


def test_imagereward_normalisation_applied_to_head_output():
    model = tiny.tiny_imagereward(tiny.TinySize(seed=4)).eval()
    with torch.no_grad():
        for p in model.mlp.parameters():
            p.zero_()
        model.mlp[7].bias.fill_(1.5)  # head outputs 1.5 whatever the features
        out = model(torch.rand(2, 3, 32, 32), ["a cat", "a dog"])
    expected = (1.5 - 0.16717362830052426) / 1.0333394966054072
    torch.testing.assert_close(out, torch.full((2,), expected), atol=1e-6, rtol=0)


def test_imagereward_prompt_truncated_to_35_tokens():
    tok = tiny.tiny_bert_tokenizer()
    ids = tok(["x " * 200], padding="max_length", truncation=True, max_length=imagereward.PROMPT_TOKENS,
              return_tensors="pt").input_ids
    assert ids.shape == (1, 35) and tok.convert_ids_to_tokens(int(ids[0, -1])) == "[SEP]"
    assert len(tok) == 79 and "[DEC]" in tok.get_vocab() and "[ENC]" in tok.get_vocab()  # BLIP's additions


def official_state(model: imagereward.ImageRewardModel, seed: int) -> dict[str, torch.Tensor]:
    """A synthetic ImageReward.pt: every parameter under its official BLIP/med.py name,
    spelled out here independently of the mapping under test, plus unused BLIP parts."""
    g = torch.Generator().manual_seed(seed)
    v, t = model.vision.config, model.text.config
    d, n = v.hidden_size, (v.image_size // v.patch_size) ** 2 + 1
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, n, d), "patch_embed.proj.weight": (d, 3, v.patch_size, v.patch_size),
              "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(v.num_hidden_layers):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                       b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "mlp.fc1.weight": (v.intermediate_size, d), b + "mlp.fc1.bias": (v.intermediate_size,),
                       b + "mlp.fc2.weight": (d, v.intermediate_size), b + "mlp.fc2.bias": (d,)})
    state = {"blip.visual_encoder." + k: torch.randn(s, generator=g) for k, s in shapes.items()}
    h, e = t.hidden_size, t.encoder_hidden_size
    text = {"embeddings.word_embeddings.weight": (t.vocab_size, h),
            "embeddings.position_embeddings.weight": (t.max_position_embeddings, h),
            "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for i in range(t.num_hidden_layers):
        b = f"encoder.layer.{i}."
        for part, kv_in in (("attention", h), ("crossattention", e)):
            text.update({b + f"{part}.self.query.weight": (h, h), b + f"{part}.self.query.bias": (h,),
                         b + f"{part}.self.key.weight": (h, kv_in), b + f"{part}.self.key.bias": (h,),
                         b + f"{part}.self.value.weight": (h, kv_in), b + f"{part}.self.value.bias": (h,),
                         b + f"{part}.output.dense.weight": (h, h), b + f"{part}.output.dense.bias": (h,),
                         b + f"{part}.output.LayerNorm.weight": (h,), b + f"{part}.output.LayerNorm.bias": (h,)})
        text.update({b + "intermediate.dense.weight": (t.intermediate_size, h), b + "intermediate.dense.bias": (t.intermediate_size,),
                     b + "output.dense.weight": (h, t.intermediate_size), b + "output.dense.bias": (h,),
                     b + "output.LayerNorm.weight": (h,), b + "output.LayerNorm.bias": (h,)})
    state.update({"blip.text_encoder." + k: torch.randn(s, generator=g) * 0.1 for k, s in text.items()})
    for i, (o, in_) in zip((0, 2, 4, 6, 7), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state[f"mlp.layers.{i}.weight"] = torch.randn(o, in_, generator=g) * 0.05
        state[f"mlp.layers.{i}.bias"] = torch.randn(o, generator=g) * 0.05
    state["blip.vision_proj.weight"] = torch.randn(256, d, generator=g)  # unused by the score
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(t.max_position_embeddings)[None]
    return state


def test_imagereward_checkpoint_key_mapping():
    model = tiny.tiny_imagereward(tiny.TinySize(seed=4)).eval()
    state = official_state(model, seed=11)
    imagereward.load_into(model, state)  # strict on every part: nothing missing, nothing left over
    layer = model.vision.encoder.layers[1]
    assert torch.equal(model.vision.embeddings.class_embedding, state["blip.visual_encoder.cls_token"])
    assert torch.equal(model.vision.embeddings.position_embedding, state["blip.visual_encoder.pos_embed"])
    assert torch.equal(layer.self_attn.projection.weight, state["blip.visual_encoder.blocks.1.attn.proj.weight"])
    assert torch.equal(layer.layer_norm2.bias, state["blip.visual_encoder.blocks.1.norm2.bias"])
    assert torch.equal(model.vision.post_layernorm.weight, state["blip.visual_encoder.norm.weight"])
    cross = model.text.encoder.layer[0].crossattention.self.key.weight
    assert torch.equal(cross, state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(model.mlp[7].weight, state["mlp.layers.7.weight"])
    out = model(torch.rand(2, 3, 32, 32), ["a cat", "a dog"])
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_imagereward_mapping_rejects_foreign_keys():
    with pytest.raises(UserError, match="unexpected key"):
        imagereward.map_checkpoint({"model.diffusion.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="visual_encoder"):
        imagereward.map_checkpoint({"blip.visual_encoder.head.weight": torch.zeros(1)})


def test_imagereward_incomplete_checkpoint_is_a_clear_error():
    model = tiny.tiny_imagereward(tiny.TinySize(seed=4))
    state = official_state(model, seed=11)
    del state["blip.visual_encoder.blocks.0.attn.qkv.weight"]
    with pytest.raises(UserError, match=r"visual_encoder.*1 missing keys"):
        imagereward.load_into(model, state)
