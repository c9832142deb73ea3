"""Reward weights: one clear UserError offline / with an empty folder (no network call), the
processor's pixel spec, ImageReward constants, head layout and the official checkpoint key
mapping."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import clip_models, imagereward, tiny
from rtdmd_bench.rewards.clip_based import Aesthetic, CLIPScore, HPSv2, HPSv21, PickScore, PixelSpec
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


# ---- preprocessing: tests/test_rewards_pixels.py --------------------------------------

def test_processor_json_gives_the_pixel_spec_and_refuses_another_resample(tmp_path):
    cfg = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    spec = clip_models.pixel_spec_from_processor(tmp_path / "preprocessor_config.json")
    assert spec == PixelSpec(size=224, crop=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**cfg, "resample": 2}))
    with pytest.raises(UserError, match="bicubic"):
        clip_models.pixel_spec_from_processor(tmp_path / "preprocessor_config.json")


# ---- ImageReward ----------------------------------------------------------------------

def test_imagereward_constants_and_head_layout():
    assert imagereward.REWARD_MEAN == 0.16717362830052426
    assert imagereward.REWARD_STD == 1.0333394966054072
    assert imagereward.PROMPT_TOKENS == 35
    head = clip_models.preference_mlp(768)
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


def test_release_models_with_a_config_drops_only_that_entry():
    from dataclasses import dataclass

    from rtdmd_bench.rewards.loading import cached_model, release_models

    @dataclass
    class Cfg:
        name: str
        batch_size: int = 1

    clear_model_cache()
    built: list[str] = []
    build = lambda n: lambda: built.append(n) or object()  # noqa: E731
    a, b = cached_model("k", Cfg("a"), build("a")), cached_model("k", Cfg("b"), build("b"))
    assert release_models("k", Cfg("a", batch_size=8)) == 1  # keyed as cached_model keys (batch size aside)
    assert release_models("k", Cfg("a")) == 0 and release_models("other", Cfg("b")) == 0
    assert cached_model("k", Cfg("b"), build("b2")) is b  # the other entry stays
    assert cached_model("k", Cfg("a"), build("a2")) is not a and built == ["a", "b", "a2"]  # rebuilt once
    clear_model_cache()
