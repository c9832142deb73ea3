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

from rtdmd_bench.rewards.clip_based import Aesthetic, CLIPScore, HPSv2, PickScore
from rtdmd_bench.rewards.clip_models import HFClip, OpenClip, preference_mlp
from rtdmd_bench.rewards.geneval_partial import GenevalPartial
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
        batch_size: int = 8
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
        divide_by: float = 1.0
        """Score divisor, as in `pickscore` (RTDMD training: 26)."""
        pixels: HFClipPixels = "reference"
        """Pixel pipeline without gradients, as in `pickscore`."""
        pixels_grad: GradPixels = "differentiable"
        """Pixel pipeline with gradients, as in `pickscore`."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: int = 8
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
        scale: float = 1.0
        """Multiply the cosine (100 for benchmark tables)."""
        dtype: _DTYPE = "float32"
        """Weights and compute dtype."""
        batch_size: int = 8
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
        batch_size: int = 8
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
        batch_size: int = 8
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
