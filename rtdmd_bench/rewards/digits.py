"""Digit rewards (issue 4), differentiable, on images from `Digits.decode`: (B, 3, 8, 8) in [0, 1].

- `digit-correct`: log p(prompted class | image) under the cached digits CNN classifier
  (trained on the train split only; built on first use like the teacher). Bounded above by 0.
- `digit-ink`: mean pixel brightness, a stroke-thickness / ink style reward. Real digits
  average ~0.31; pushing it up thickens strokes until digits become blobs the classifier no
  longer recognises, so it conflicts with fidelity and makes reward hacking visible.
  Bounded above by `cap` (<= 1), as the tilted target p_teacher * exp(r / beta) requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from rtdmd_bench.digits.cache import load_classifier
from rtdmd_bench.digits.data import parse_prompts
from rtdmd_bench.digits.nets import ClassifierConfig, DigitClassifier
from rtdmd_bench.errors import UserError


def to_classifier_input(images: Tensor) -> Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, 1, 8, 8) grey in [-1, 1], differentiably."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (8, 8):
        raise UserError(f"digit rewards score 8x8 images (B, 3, 8, 8) from the `digits` base, got "
                        f"{tuple(images.shape)}; use them with --base digits")
    return images.mean(dim=1, keepdim=True) * 2 - 1


class DigitCorrect:
    """log p(prompted digit | image) under the cached CNN classifier (differentiable)."""

    @dataclass
    class Config:
        classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
        """Which cached classifier (hash of this config); the defaults match the base and suite."""
        progress: bool = True
        """Show a progress bar if the classifier has to be trained."""

    name = "digit-correct"
    differentiable = True

    def __init__(self, cfg: "DigitCorrect.Config | None" = None) -> None:
        self.cfg = cfg or DigitCorrect.Config()
        self.classifier: DigitClassifier
        self.classifier, self.classifier_meta = load_classifier(self.cfg.classifier, progress=self.cfg.progress)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"digit-correct: {images.shape[0]} images but {len(prompts)} prompts")
        labels = parse_prompts(prompts).to(images.device)  # (B,)
        logp = torch.log_softmax(self.classifier(to_classifier_input(images)), dim=1)  # (B, 10)
        return logp.gather(1, labels[:, None]).squeeze(1)


class DigitInk:
    """min(mean pixel brightness, cap): rewards thick strokes; conflicts with fidelity."""

    @dataclass
    class Config:
        cap: float = 1.0
        """Ink above this mean brightness earns nothing more (1 = the all-white image)."""

    name = "digit-ink"
    differentiable = True

    def __init__(self, cfg: "DigitInk.Config | None" = None) -> None:
        self.cfg = cfg or DigitInk.Config()
        if not 0 < self.cfg.cap <= 1:
            raise UserError(f"digit-ink: cap must be in (0, 1], got {self.cfg.cap}")

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        ink = to_classifier_input(images).add(1).div(2).mean(dim=(1, 2, 3))  # (B,) in [0, 1]
        return ink.clamp(max=self.cfg.cap)
