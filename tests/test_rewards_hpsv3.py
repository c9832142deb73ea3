"""HPSv3 reward (rtdmd_bench/rewards/hpsv3*.py) on its tiny random stand-in: the pixel budget, the
prompt rendering, the sequential positions, the read-out at <|Reward|> against a hand computation
with the stand-in's own modules, the rotary numerics, the template source, the real loader on a tiny
folder in the published layout, the one missing-weights error, and freeing the cached model."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import socket
import weakref
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import hpsv3_model
from rtdmd_bench.rewards.hpsv3 import HPSv3, budget_images, budget_size
from rtdmd_bench.rewards.hpsv3_model import (
    PIXEL_BUDGET, REWARD_TOKEN, PromptTemplate, read_template, sequential_positions, template_from_source,
)
from rtdmd_bench.rewards.loading import cached_model, clear_model_cache, release_models
from rtdmd_bench.rewards.tiny import TINY_HPSV3_TEMPLATE, TINY_QWEN_CHAT_TEMPLATE, TinyHPSv3, tiny_qwen2_tokenizer

PROMPTS = ["a red fox in the snow", "two cats", "a lighthouse at dusk, oil painting with {braces}"]


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fp32() -> TinyHPSv3:
    """The stand-in in float32 (then both rotary settings coincide and sums are exact enough)."""
    return TinyHPSv3(TinyHPSv3.Config(dtype="float32"))


# ---- pixel budget --------------------------------------------------------------------

@pytest.mark.parametrize("side", [1024, 512])
def test_budget_is_448_for_1024_and_512_px(side):
    # By hand: 1024 -> round(1024/28)*28 = 1036, 1036^2 > 448^2, beta = 1024/448, 1024/beta = 448;
    # 512 -> 504, 504^2 > 448^2, beta = 512/448, 512/beta = 448.
    assert budget_size(side, side, PIXEL_BUDGET, PIXEL_BUDGET) == (448, 448)
    assert PIXEL_BUDGET == 448 * 448


def test_budget_agrees_with_transformers_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for h, w in [(1024, 1024), (512, 512), (768, 768), (1024, 768), (333, 777), (64, 64), (2048, 1024)]:
        assert budget_size(h, w, PIXEL_BUDGET, PIXEL_BUDGET) == smart_resize(h, w, 28, PIXEL_BUDGET, PIXEL_BUDGET)
    assert budget_size(768, 768, PIXEL_BUDGET, PIXEL_BUDGET) == (420, 420)  # float flooring, as HPSv3


def test_budget_images_are_pil_bicubic_of_the_uint8_image():
    x = images(2, 64)
    got = budget_images((x * 255).round().to(torch.uint8), PIXEL_BUDGET, PIXEL_BUDGET)
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for g, a in zip(got, u8):
        want = np.asarray(Image.fromarray(a).resize((448, 448), Image.BICUBIC))
        assert g.size == (448, 448) and np.array_equal(np.asarray(g), want)


@pytest.mark.parametrize("side", [1024, 512])
def test_processor_gives_256_visual_tokens_at_the_budget(fp32, side):
    model = fp32.model()
    batch = model.inputs(budget_images(torch.zeros(1, 3, side, side, dtype=torch.uint8), PIXEL_BUDGET, PIXEL_BUDGET),
                         PROMPTS[:1])
    assert batch["image_grid_thw"].tolist() == [[1, 448 // 14, 448 // 14]]  # 14-px patches
    image_id = model.backbone.config.image_token_id
    assert int((batch["input_ids"] == image_id).sum()) == (448 // 28) ** 2 == 256  # 2 x 2 merge


# ---- prompt, positions, read-out -----------------------------------------------------

def test_texts_are_the_template_in_the_chat_turn(fp32):
    text = fp32.model().texts([PROMPTS[2]])[0]
    want = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Rate the image for the prompt: "
            f"{PROMPTS[2]}\nRating: {REWARD_TOKEN}\nEND\n<|im_end|>\n<|im_start|>assistant\n")
    assert text == want


def test_positions_are_sequential_and_not_qwen2vl_image_positions(fp32):
    model = fp32.model()
    batch = model.inputs(budget_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), PIXEL_BUDGET, PIXEL_BUDGET),
                         PROMPTS[:2])
    mask = batch["attention_mask"]
    assert (mask.sum(1) < mask.shape[1]).any()  # a padded row is in the batch
    pos = sequential_positions(mask)
    # Independent: RTDMD's transformers 4.57 path, cumsum(mask) - 1, equal on every real token.
    cumsum = mask.cumsum(-1) - 1
    for axis in range(3):
        assert torch.equal(pos[axis][mask.bool()], cumsum[mask.bool()])
        assert torch.equal(pos[axis], torch.arange(mask.shape[1]).expand_as(mask))
    # Qwen2-VL's own 3-D positions differ on the image tokens: what HPSv3 does NOT use.
    mrope, _ = model.backbone.get_rope_index(batch["input_ids"], image_grid_thw=batch["image_grid_thw"],
                                             attention_mask=mask, mm_token_type_ids=(batch["input_ids"] == model.backbone.config.image_token_id).long())
    assert not torch.equal(mrope[:, mask.bool()], pos[:, mask.bool()])
    with pytest.raises(ValueError, match="right-padded"):
        sequential_positions(torch.tensor([[0, 1, 1]]))


def _hand_mu(model, input_ids, mask, pixel_values, grid, position_ids=None) -> torch.Tensor:
    """mu by hand from the stand-in's own modules: token embeddings, image features written into the
    image-pad rows, the text decoder (default positions = arange, transformers 4.45's), then the head
    spelled out layer by layer at the row holding <|Reward|>."""
    bb, head = model.backbone, model.head
    emb = bb.language_model.embed_tokens(input_ids).clone()
    feats = bb.visual(pixel_values, grid_thw=grid).pooler_output  # (n_image_tokens, D), image by image
    emb[input_ids == bb.config.image_token_id] = feats
    hidden = bb.language_model(inputs_embeds=emb, attention_mask=mask, position_ids=position_ids).last_hidden_state
    out = []
    for i, ids in enumerate(input_ids.tolist()):
        h = hidden[i, ids.index(model.reward_id)].float()
        z = torch.relu(head[0].weight @ h + head[0].bias)
        z = torch.relu(head[3].weight @ z + head[3].bias)
        out.append((head[5].weight @ z + head[5].bias)[0])
    return torch.stack(out)


@torch.no_grad()
def test_readout_is_the_head_at_the_reward_token(fp32):
    model = fp32.model()
    x = images(3)
    pil = [Image.fromarray(a).resize((448, 448), Image.BICUBIC)
           for a in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    texts = [f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{TINY_HPSV3_TEMPLATE.text(p)}"
             "<|im_end|>\n<|im_start|>assistant\n" for p in PROMPTS]
    b = model.processor(text=texts, images=pil, padding=True, return_tensors="pt")
    want = _hand_mu(model, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"])
    torch.testing.assert_close(fp32(x, PROMPTS), want, atol=1e-5, rtol=1e-5)
    # The test can fail: Qwen2-VL's 3-D image positions give another mu.
    mm = (b["input_ids"] == model.backbone.config.image_token_id).long()
    mrope, _ = model.backbone.get_rope_index(b["input_ids"], image_grid_thw=b["image_grid_thw"],
                                             attention_mask=b["attention_mask"], mm_token_type_ids=mm)
    other = _hand_mu(model, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"], mrope)
    assert (other - want).abs().max() > 1e-4


def test_scores_do_not_depend_on_batching_or_padding():
    reward, one = TinyHPSv3(), TinyHPSv3(TinyHPSv3.Config(batch_size=1))
    x = images(3, seed=1)
    torch.testing.assert_close(reward(x, PROMPTS), one(x, PROMPTS), atol=1e-6, rtol=0)  # fp32 head: GEMM shape
    assert reward.name == "tiny-hpsv3[stand-in]" and not reward.differentiable


def test_a_prompt_holding_the_reward_token_is_refused(fp32):
    with pytest.raises(UserError, match="exactly one"):
        fp32(images(1), [f"cheat {REWARD_TOKEN}"])


# ---- rotary numerics -----------------------------------------------------------------

def test_rotary_buffers_follow_the_model_dtype_as_hpsv3():
    bf16 = TinyHPSv3().model().backbone
    text = bf16.language_model.rotary_emb.inv_freq
    head_dim = 64 // 4
    by_hand = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    assert text.dtype == torch.bfloat16 and torch.equal(text, by_hand.to(torch.bfloat16))
    rope = bf16.visual.rotary_pos_emb  # transformers 4.45: torch.outer(arange(n) in bf16, inv_freq in bf16)
    inv = rope.inner.inv_freq
    pos = torch.tensor([[0, 1], [5, 31], [17, 3]])
    cos, _ = rope(None, pos)
    table = torch.outer(torch.arange(32, dtype=torch.bfloat16), inv)  # (32, dim/4) in bf16
    angles = table[pos].flatten(1)  # (N, dim/2): h then w
    assert torch.equal(cos, torch.cat([angles, angles], -1).cos())
    f32 = TinyHPSv3(TinyHPSv3.Config(rotary="float32")).model().backbone
    assert f32.language_model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(f32.language_model.rotary_emb.inv_freq, by_hand.float(), atol=0, rtol=1e-6)


# ---- template source -----------------------------------------------------------------

FAKE = 'INSTRUCTION = """\nJudge: {text_prompt}\n"""\nprompt_with_special_token = """\nScore <|Reward|>\n"""\nOTHER = 1\n'


def test_template_is_read_from_the_package_file_and_checked(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="SHA-256"):
        template_from_source(FAKE, "fake")
    digest = hashlib.sha256("\nJudge: {text_prompt}\n\nScore <|Reward|>\n".encode()).hexdigest()
    monkeypatch.setattr(hpsv3_model, "TEMPLATE_SHA256", digest)
    module = tmp_path / "pkg" / "hpsv3" / "dataset" / "data_collator_qwen.py"
    module.parent.mkdir(parents=True)
    module.write_text(FAKE)
    with zipfile.ZipFile(tmp_path / "hpsv3-1.0.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("hpsv3/dataset/data_collator_qwen.py", FAKE)
    for source in (module, tmp_path / "pkg", tmp_path / "hpsv3-1.0.0-py3-none-any.whl", tmp_path):
        t = read_template(source)
        assert t == PromptTemplate("\nJudge: {text_prompt}\n", "\nScore <|Reward|>\n")
        assert t.text("a {b}") == "\nJudge: a {b}\n\nScore <|Reward|>\n"
    with pytest.raises(UserError, match="INSTRUCTION"):
        template_from_source("X = 1\n", "empty")


@pytest.mark.skipif(importlib.util.find_spec("hpsv3") is None, reason="the hpsv3 package is not installed")
def test_the_installed_package_template_has_the_pinned_hash():
    template, problem = hpsv3_model.find_template("")
    assert problem == "" and template.sha256 == hpsv3_model.TEMPLATE_SHA256


# ---- the real loader on a tiny folder in the published layout ------------------------

def save_published_layout(tmp_path, legacy_names: bool):
    """A Qwen2-VL base folder (config, tokenizer, legacy preprocessor_config.json, chat_template.json)
    and an HPSv3.safetensors built from the float32 stand-in, in the package's key names
    (transformers 4.45: model.* = text decoder) or the newer ones RTDMD rewrites them to."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLImageProcessor

    stand_in = TinyHPSv3(TinyHPSv3.Config(dtype="float32")).model()
    base = tmp_path / "qwen2-vl"
    tiny_qwen2_tokenizer().save_pretrained(base)
    Qwen2VLImageProcessor().save_pretrained(base)
    (base / "chat_template.json").write_text(json.dumps({"chat_template": TINY_QWEN_CHAT_TEMPLATE}))
    stand_in.backbone.config.save_pretrained(base)
    state = {}
    for k, v in stand_in.backbone.state_dict().items():
        if legacy_names:
            k = "model." + k.removeprefix("language_model.") if k.startswith("language_model.") else k
        else:
            k = "model." + k
        state[k] = v.clone()
    state.update({f"rm_head.{k}": v.clone() for k, v in stand_in.head.state_dict().items()})
    state["lm_head.weight"] = torch.zeros(stand_in.backbone.config.text_config.vocab_size, 64)
    save_file(state, str(tmp_path / "HPSv3.safetensors"))
    template = tmp_path / "data_collator_qwen.py"
    template.write_text(f"INSTRUCTION = {TINY_HPSV3_TEMPLATE.instruction!r}\n"
                        f"prompt_with_special_token = {TINY_HPSV3_TEMPLATE.suffix!r}\n")
    return base, state


@pytest.mark.parametrize("legacy_names", [True, False], ids=["transformers-4.45-names", "newer-names"])
def test_real_loader_on_a_tiny_folder_matches_the_stand_in(tmp_path, monkeypatch, fp32, legacy_names):
    monkeypatch.setattr(hpsv3_model, "TEMPLATE_SHA256", TINY_HPSV3_TEMPLATE.sha256)
    base, _ = save_published_layout(tmp_path, legacy_names)
    real = HPSv3(HPSv3.Config(local_path=str(tmp_path / "HPSv3.safetensors"), base_path=str(base),
                              template_path=str(tmp_path / "data_collator_qwen.py"), dtype="float32"))
    assert real.name == "hpsv3"
    x = images(2, seed=3)
    torch.testing.assert_close(real(x, PROMPTS[:2]), fp32(x, PROMPTS[:2]), atol=1e-5, rtol=1e-5)
    real.release()


def test_a_checkpoint_missing_a_key_is_a_clear_error(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr(hpsv3_model, "TEMPLATE_SHA256", TINY_HPSV3_TEMPLATE.sha256)
    base, state = save_published_layout(tmp_path, legacy_names=True)
    del state["rm_head.5.bias"]
    save_file(state, str(tmp_path / "HPSv3.safetensors"))
    with pytest.raises(UserError, match=r"rm_head.*missing keys \['5.bias'\]"):
        HPSv3(HPSv3.Config(local_path=str(tmp_path / "HPSv3.safetensors"), base_path=str(base),
                           template_path=str(tmp_path / "data_collator_qwen.py"), dtype="float32"))


# ---- missing weights, freeing --------------------------------------------------------

def test_missing_weights_one_error_names_what_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for var in ("RTDMD_BENCH_HPSV3_PATH", "RTDMD_BENCH_QWEN2VL_PATH", "RTDMD_BENCH_HPSV3_TEMPLATE_PATH"):
        monkeypatch.delenv(var, raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hpsv3" else find_spec(name, *a))
    attempts: list = []
    connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: (attempts.append(addr), connect(self, addr)))
    with pytest.raises(UserError) as err:
        HPSv3()
    msg = str(err.value)
    for needle in ("MizzenAI/HPSv3", "HPSv3.safetensors", "RTDMD_BENCH_HPSV3_PATH", "reward.hpsv3.local_path",
                   "Qwen/Qwen2-VL-7B-Instruct", "RTDMD_BENCH_QWEN2VL_PATH", "reward.hpsv3.base_path",
                   "pip download hpsv3==1.0.0", "RTDMD_BENCH_HPSV3_TEMPLATE_PATH", "reward.hpsv3.template_path"):
        assert needle in msg, needle
    assert msg.count("hf download") == 2 and attempts == []


def test_release_frees_the_cached_model_and_the_next_call_reloads():
    clear_model_cache()
    reward = TinyHPSv3(TinyHPSv3.Config(stand_in_seed=11))
    ref = weakref.ref(reward.model())
    before = reward(images(1), PROMPTS[:1])
    assert reward.release() == 1
    gc.collect()
    assert ref() is None  # nothing else held it
    torch.testing.assert_close(reward(images(1), PROMPTS[:1]), before, atol=0, rtol=0)  # rebuilt, same seed
    assert release_models("tiny-hpsv3") == 1


def test_release_models_drops_one_kind_only():
    clear_model_cache()
    a = cached_model("kind-a", (1,), lambda: object())
    b = cached_model("kind-b", (1,), lambda: object())
    assert release_models("kind-a") == 1 and release_models("kind-a") == 0
    assert cached_model("kind-b", (1,), lambda: object()) is b
    assert cached_model("kind-a", (1,), lambda: object()) is not a
