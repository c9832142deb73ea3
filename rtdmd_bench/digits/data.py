"""The digits data and prompts.

Data: scikit-learn's 1797 8x8 handwritten digits (shipped with the package, offline), pixel
values 0..16 scaled to [-1, 1] (background -1), shape (1, 8, 8), split once into a fixed,
stratified 80/20 train / held-out split. The split is part of the benchmark's definition,
so it is a module constant and part of every cache key.

Prompts: text naming one digit ("a handwritten digit seven", "a handwritten 7", "digit 7"),
parsed into the class 0..9.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor

from rtdmd_bench.errors import UserError

NUM_CLASSES = 10
NULL_CLASS = 10  # the "no prompt" label used for classifier-free guidance
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
IMAGE_SHAPE = (1, 8, 8)


@lru_cache(maxsize=2)
def _split_arrays(split: str) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx_train, idx_held = train_test_split(
        list(range(len(data.target))), test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED,
        stratify=data.target)
    idx = idx_train if split == "train" else idx_held
    images = torch.tensor(data.images[idx], dtype=torch.float32) / 16.0 * 2.0 - 1.0  # (N, 8, 8)
    labels = torch.tensor(data.target[idx], dtype=torch.long)  # (N,)
    return images.unsqueeze(1), labels


def load_split(split: Literal["train", "held_out"]) -> tuple[Tensor, Tensor]:
    """(images (N, 1, 8, 8) in [-1, 1], labels (N,) long) of the fixed stratified split.

    train: 1437 images, held_out: 360 (20%, stratified by class, seed 0)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    images, labels = _split_arrays(split)
    return images.clone(), labels.clone()


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PROMPT_RE = re.compile(
    r"^(?:an?\s+)?(?:handwritten\s+)?(?:(?:digit|number)\s+)?(?P<c>[0-9]|" + "|".join(DIGIT_WORDS) + r")\.?$")
PROMPT_FORMS = ('"a handwritten digit seven"', '"a handwritten digit 7"', '"a handwritten 7"',
                '"digit 7"', '"number seven"', '"7"')


def parse_prompt(prompt: str) -> int:
    """Digit class 0..9 of a prompt: [a|an] [handwritten] [digit|number] <0-9 or zero..nine>[.]
    (case and extra spaces ignored). Anything else raises UserError naming the accepted forms."""
    text = " ".join(str(prompt).lower().split())
    m = _PROMPT_RE.match(text)
    if m is None:
        raise UserError(f"digits: cannot read a digit class from prompt {prompt!r}; write one digit "
                        f"as a numeral or an English word, e.g. {', '.join(PROMPT_FORMS)}")
    c = m.group("c")
    return int(c) if c.isdigit() else DIGIT_WORDS.index(c)


def parse_prompts(prompts: Any) -> Tensor:
    """(B,) long classes of a sequence of prompts (see `parse_prompt`)."""
    if isinstance(prompts, str):
        raise UserError("digits: expected a list of prompts, got a single string")
    return torch.tensor([_class_of(p) if isinstance(p, str) else parse_prompt(p) for p in prompts], dtype=torch.long)


@lru_cache(maxsize=4096)
def _class_of(prompt: str) -> int:
    """`parse_prompt`, remembered: every training step encodes a batch of the same few prompts."""
    return parse_prompt(prompt)
