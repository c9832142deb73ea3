"""Tiny random stand-ins of every real scorer, for tests and CI.

Each stand-in is the real scorer class (same preprocessing, same towers, same head, same
score formula) built from a tiny, seeded random config with a locally built tokenizer: no
download, ever. Their scores mean nothing; they exist to run the real code path. They are
registered as `tiny-<name>` and their `name` says "stand-in", so a result computed with them
can never be mistaken for the official metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

import torch
from torch import nn

from rtdmd_bench.ranges import Positive, PositiveInt
from rtdmd_bench.rewards.clip_based import Aesthetic, CLIPScore, HPSv2, PickScore
from rtdmd_bench.rewards.clip_models import HFClip, OpenClip, preference_mlp
from rtdmd_bench.rewards.geneval_partial import GenevalPartial
from rtdmd_bench.rewards.hpsv3 import HPSv3
from rtdmd_bench.rewards.hpsv3_model import HPSv3Model, PromptTemplate, Rotary, add_reward_token, finish, rank_head
from rtdmd_bench.rewards.imagereward import ImageReward, blip_tokenizer, build_model
from rtdmd_bench.rewards.loading import cached_model, frozen
from rtdmd_bench.rewards.ocr import OCR
from rtdmd_bench.rewards.pixels import (
    AestheticGradPixels, AestheticPixels, GradPixels, HFClipPixels, PixelSpec, TowerPixels,
)
from rtdmd_bench.weights import torch_dtype

T = TypeVar("T")
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def seeded(seed: int, build: Callable[[], T]) -> T:
    """Build under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to U+0100+."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tiny_clip_tokenizer() -> Any:
    """A real `CLIPTokenizer` over a byte-level vocabulary with no merges (514 tokens):
    every prompt tokenises to characters; no file is downloaded."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_bert_tokenizer() -> Any:
    """A real `BertTokenizer` (WordPiece over characters), then BLIP's [DEC]/[ENC] additions."""
    from transformers import BertTokenizer

    words = _BERT_SPECIALS + list(_CHARS) + ["##" + c for c in _CHARS]
    return blip_tokenizer(BertTokenizer(vocab={w: i for i, w in enumerate(words)}))


@dataclass(frozen=True)
class TinySize:
    """Shared tiny tower sizes."""

    seed: int = 0
    image_size: int = 32
    patch_size: int = 8
    width: int = 32
    layers: int = 2
    heads: int = 2
    embed_dim: int = 16


def tiny_hf_clip(size: TinySize) -> HFClip:
    """transformers `CLIPModel` with a tiny random config + the tiny tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_clip_tokenizer()
    tower = dict(hidden_size=size.width, intermediate_size=2 * size.width,
                 num_hidden_layers=size.layers, num_attention_heads=size.heads)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **tower),
        vision_config=dict(image_size=size.image_size, patch_size=size.patch_size, **tower),
        projection_dim=size.embed_dim)
    model = seeded(size.seed, lambda: CLIPModel(cfg))
    return HFClip(model, tok, PixelSpec(size=size.image_size, crop=size.image_size))


def tiny_open_clip(size: TinySize) -> OpenClip:
    """open_clip `CLIP` with a tiny random config; its bundled BPE tokenizer (no download)."""
    import open_clip

    model = seeded(size.seed, lambda: open_clip.CLIP(
        embed_dim=size.embed_dim,
        vision_cfg=dict(image_size=size.image_size, layers=size.layers, width=size.width,
                        head_width=size.width // size.heads, patch_size=size.patch_size),
        text_cfg=dict(context_length=77, vocab_size=49408, width=size.width, heads=size.heads,
                      layers=size.layers)))
    pixels = PixelSpec(size=size.image_size, crop=size.image_size)
    return OpenClip(model, open_clip.SimpleTokenizer(context_length=77), pixels)


# Qwen2-VL's special tokens (names as in its tokenizer) and a short chat template of the same shape
# as Qwen2-VL-Instruct's for one user turn (no system turn: the stand-in's own, not a copy).
_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TINY_QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TINY_HPSV3_TEMPLATE = PromptTemplate("Rate the image for the prompt: {text_prompt}\n", "Rating: <|Reward|>\nEND\n")
"""The stand-in's own short prompt template (HPSv3's text is read from its package, never shipped)."""


def tiny_qwen2_tokenizer() -> Any:
    """A real `Qwen2Tokenizer` over the byte-level alphabet with no merges + Qwen2-VL's special tokens."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(_byte_symbols())}, merges=[], unk_token=None,
                         bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _QWEN_SPECIALS})
    return tok


def tiny_hpsv3(seed: int, dtype: str, rotary: Rotary) -> HPSv3Model:
    """HPSv3's model on a tiny random `Qwen2VLModel` (2+2 layers, width 64; 14-px patches merged 2 x 2,
    as Qwen2-VL, so HPSv3's 448^2 budget gives 256 visual tokens) with the real processor classes,
    the real head layout (64 -> 1024 -> 16 -> 2) and `<|Reward|>` added as HPSv3 does."""
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLModel, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tok = tiny_qwen2_tokenizer()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=TINY_QWEN_CHAT_TEMPLATE)
    reward_id = add_reward_token(tok)
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    backbone = seeded(seed, lambda: Qwen2VLModel(config))
    head = seeded(seed + 1, lambda: rank_head(64))
    return finish(backbone, head, processor, TINY_HPSV3_TEMPLATE, reward_id, dtype, rotary)


def tiny_imagereward(size: TinySize) -> nn.Module:
    """The ImageReward architecture (BLIP vision + cross-attending text + head), tiny."""
    tok = tiny_bert_tokenizer()
    med = dict(vocab_size=len(tok), hidden_size=size.width, intermediate_size=2 * size.width,
               num_hidden_layers=size.layers, num_attention_heads=size.heads,
               max_position_embeddings=64, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id)
    vision = dict(hidden_size=size.width, intermediate_size=2 * size.width,
                  num_hidden_layers=size.layers, num_attention_heads=size.heads,
                  image_size=size.image_size, patch_size=size.patch_size,
                  initializer_range=0.2)  # BLIP's default 1e-10 would make the image irrelevant
    pixels = PixelSpec(size=size.image_size, crop=size.image_size)
    return seeded(size.seed, lambda: build_model(med, vision, tok, pixels))


_DTYPE = Literal["float32", "bfloat16", "float16"]


class TinyCLIPScore(CLIPScore):
    """Stand-in for `clipscore`: tiny random transformers CLIP."""

    @dataclass
    class Config:
        seed: int = 0
        """Seed of the random weights (same seed, same scores)."""
        convention: Literal["raw_cosine", "torchmetrics"] = "raw_cosine"
        """Scale, as in `clipscore`."""
        pixels: HFClipPixels = "reference"
        """Pixel pipeline without gradients, as in `clipscore`."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline with gradients, as in `clipscore`."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: PositiveInt = 8
        """Images per forward pass."""

    name = "tiny-clipscore[stand-in]"

    def _load(self) -> nn.Module:
        size = TinySize(seed=self.cfg.seed)
        return cached_model("tiny-hf-clip", (size, self.cfg.dtype),
                            lambda: frozen(tiny_hf_clip(size), torch_dtype(self.cfg.dtype)))


class TinyPickScore(PickScore):
    """Stand-in for `pickscore`: tiny random transformers CLIP, same logit-scale formula."""

    @dataclass
    class Config:
        seed: int = 1
        """Seed of the random weights."""
        divide_by: Positive = 1.0
        """Score divisor, as in `pickscore` (RTDMD training: 26)."""
        pixels: HFClipPixels = "reference"
        """Pixel pipeline without gradients, as in `pickscore`."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline with gradients, as in `pickscore`."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: PositiveInt = 8
        """Images per forward pass."""

    name = "tiny-pickscore[stand-in]"

    def _load(self) -> nn.Module:
        size = TinySize(seed=self.cfg.seed)
        return cached_model("tiny-hf-clip", (size, self.cfg.dtype),
                            lambda: frozen(tiny_hf_clip(size), torch_dtype(self.cfg.dtype)))


class TinyHPSv2(HPSv2):
    """Stand-in for `hpsv2` / `hpsv21`: tiny random open_clip CLIP, same cosine score."""

    @dataclass
    class Config:
        seed: int = 2
        """Seed of the random weights."""
        pixels: TowerPixels = "reference"
        """Pixel pipeline without gradients, as in `hpsv2`."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline with gradients, as in `hpsv2`."""
        scale: Positive = 1.0
        """Multiply the cosine (100 for benchmark tables)."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: PositiveInt = 8
        """Images per forward pass."""

    name = "tiny-hpsv2[stand-in]"

    def _load(self) -> nn.Module:
        c = self.cfg
        size = TinySize(seed=c.seed)
        return cached_model("tiny-open-clip", (size, c.dtype), lambda: frozen(tiny_open_clip(size), torch_dtype(c.dtype)))


class TinyHPSv21(TinyHPSv2):
    """Stand-in for `hpsv21` (the same tiny architecture; its own name and seed)."""

    @dataclass
    class Config(TinyHPSv2.Config):
        seed: int = 5
        """Seed of the random weights."""

    name = "tiny-hpsv21[stand-in]"


class TinyAesthetic(Aesthetic):
    """Stand-in for `aesthetic`: tiny random CLIP + the aesthetic MLP layout on its embedding."""

    @dataclass
    class Config:
        seed: int = 3
        """Seed of the random weights."""
        pixels: AestheticPixels = "reference"
        """Pixel pipeline without gradients, as in `aesthetic`."""
        pixels_grad: AestheticGradPixels = "differentiable"
        """Pixel pipeline with gradients, as in `aesthetic`."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: PositiveInt = 8
        """Images per forward pass."""

    name = "tiny-aesthetic[stand-in]"

    def _load(self) -> tuple[nn.Module, nn.Module]:
        size, dtype = TinySize(seed=self.cfg.seed), torch_dtype(self.cfg.dtype)
        encoder = cached_model("tiny-hf-clip", (size, self.cfg.dtype), lambda: frozen(tiny_hf_clip(size), dtype))
        mlp = cached_model("tiny-aesthetic-mlp", (size, self.cfg.dtype), lambda: frozen(
            seeded(size.seed, lambda: preference_mlp(size.embed_dim)), dtype))
        return encoder, mlp


class TinyImageReward(ImageReward):
    """Stand-in for `imagereward`: tiny random BLIP towers, same head and normalisation."""

    @dataclass
    class Config:
        seed: int = 4
        """Seed of the random weights."""
        pixels: TowerPixels = "reference"
        """Pixel pipeline without gradients, as in `imagereward`."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline with gradients, as in `imagereward`."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: PositiveInt = 8
        """Images per forward pass."""

    name = "tiny-imagereward[stand-in]"

    def _load(self) -> nn.Module:
        size = TinySize(seed=self.cfg.seed)
        return cached_model("tiny-imagereward", (size, self.cfg.dtype), lambda: frozen(tiny_imagereward(size),
                                                                      torch_dtype(self.cfg.dtype)))


class TinyGenevalPartial(GenevalPartial):
    """Stand-in for `geneval-partial`: the GenEval suite's tiny random detector and CLIP."""

    @dataclass
    class Config(GenevalPartial.Config):
        models: Literal["official", "stand-in"] = "stand-in"
        """Tiny random detector + colour CLIP (the point of this stand-in)."""

    name = "tiny-geneval-partial[stand-in]"


class TinyOCR(OCR):
    """Stand-in for `ocr`: expects the test stand-in OCR environment (tests/ocr_stand_in.py), whose
    fake paddleocr reads text encoded in the pixels; the runner, the process boundary and the
    scoring are the real ones."""

    @dataclass
    class Config(OCR.Config):
        models: Literal["official", "stand-in"] = "stand-in"
        """The stand-in environment (the point of this stand-in)."""

    name = "tiny-ocr[stand-in]"


class TinyHPSv3(HPSv3):
    """Stand-in for `hpsv3`: tiny random Qwen2-VL + head of the same classes, same pipeline."""

    @dataclass
    class Config(HPSv3.Config):
        models: Literal["official", "stand-in"] = "stand-in"
        """The tiny random model (the point of this stand-in)."""

    name = "tiny-hpsv3[stand-in]"
