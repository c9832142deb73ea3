"""The `digits` suite (issue 4): class accuracy, rewards, FID, FID-T and diversity on 8x8 digits.

- accuracy: share of samples the cached digits CNN labels with the prompted class (the
  GenEval analogue: does the image show what the prompt asked for).
- reward: {name: mean} of every reward of the run, plus `digit-correct` and `digit-ink` always.
- fid: Frechet distance to the 360 held-out real digits; fid_t: to the teacher's samples on
  the same prompts and seeds (FID-T, PROTOCOLS.md "FID": no primary definition exists, this is
  the suite's). Both use the classifier's penultimate features (d=64 by default), not
  Inception: full-rank Inception FID needs > 2048 images per set, and 8x8 digits are far
  from ImageNet. Values are therefore NOT comparable with published FIDs; the output says so.
- diversity: mean pairwise L2 distance between the features of samples of the same prompt,
  averaged over prompts (0 when a prompt's samples are identical: mode collapse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from rtdmd_bench.digits.data import DIGIT_WORDS, NUM_CLASSES, load_split, parse_prompt, parse_prompts
from rtdmd_bench.digits.nets import ClassifierConfig
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.rewards.digits import DigitCorrect, DigitInk, to_classifier_input


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two
    feature sets (N_a, d), (N_b, d) (Heusel et al. 2017, eq. 6), in float64.

    Tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S_a^(1/2) S_b S_a^(1/2) (same spectrum), with eigh and tiny negative eigenvalues
    clipped: exact for singular covariances (dead ReLU units), where scipy.linalg.sqrtm of the
    non-symmetric product can lose accuracy and even give a negative distance."""
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature sets must be (N, d) with equal d, got {tuple(feats_a.shape)}, {tuple(feats_b.shape)}")
    if min(len(feats_a), len(feats_b)) < 2:
        raise UserError("FID needs at least 2 samples per set; raise suite.images_per_prompt")
    a, b = feats_a.double().cpu().numpy(), feats_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (d, d)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
    inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = mu_a - mu_b
    return max(0.0, float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt))


def mean_pairwise_distance(feats: Tensor) -> float:
    """Mean L2 distance over the N(N-1) ordered pairs of distinct rows of (N, d)."""
    n = feats.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least 2 samples per prompt")
    dist = torch.cdist(feats.double(), feats.double())  # (N, N), zero diagonal
    return (dist.sum() / (n * (n - 1))).item()


@dataclass
class DigitsSuiteConfig:
    """Configuration of the `digits` suite."""

    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    """The cached classifier that labels samples and gives FID features (base/reward defaults)."""
    images_per_prompt: PositiveInt = 64
    """Samples per prompt (10 prompts, one per class): 640 in all. Measured on teacher samples
    with three seeds: at 32 per prompt FID-T between seeds is 2.4-5.7 and FID spans 9-13; at 64,
    1.3-1.7 and 8.7-8.9, so 64 keeps seed noise below the differences between methods."""
    prompt_template: str = "a handwritten digit {word}"
    """Prompt per class; `{word}` is zero..nine, `{digit}` is 0..9."""


class DigitsSuite:
    """digits: class accuracy, mean rewards, FID / FID-T on classifier features, diversity."""

    Config = DigitsSuiteConfig
    name = "digits"
    version = "digits/1"

    def __init__(self, cfg: DigitsSuiteConfig | None = None) -> None:
        self.cfg = cfg or DigitsSuiteConfig()
        if self.cfg.images_per_prompt < 1:
            raise UserError("suite.images_per_prompt must be >= 1")
        self.images_per_prompt = self.cfg.images_per_prompt
        self._prompts = [self.cfg.prompt_template.format(word=w, digit=c) for c, w in enumerate(DIGIT_WORDS)]
        try:
            labels = [parse_prompt(p) for p in self._prompts]
        except UserError as exc:
            raise UserError(f"suite.prompt_template {self.cfg.prompt_template!r} gives unreadable prompts: {exc}") from exc
        if labels != list(range(NUM_CLASSES)):
            raise UserError(f"suite.prompt_template {self.cfg.prompt_template!r} must name each digit once")
        self.digit_correct = DigitCorrect(DigitCorrect.Config(classifier=self.cfg.classifier))
        self.digit_ink = DigitInk()
        self.classifier = self.digit_correct.classifier
        held_x, _ = load_split("held_out")
        with torch.no_grad():
            self.held_out_features = self.classifier.features(held_x)  # (360, d)
        # "reward" is a dict {name: mean}; report.py flattens it to reward.<name> columns.
        self.higher_is_better: dict[str, bool] = {
            "accuracy": True, "fid": False, "fid_t": False, "diversity": True, "reward": True}

    def prepare(self) -> None:
        """Nothing more before generation: the classifier was loaded when the suite was built."""

    def prompts(self) -> list[str]:
        return list(self._prompts)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, 3, 8, 8) in [0, 1] -> (N, d) classifier penultimate features."""
        return self.classifier.features(to_classifier_input(images.float().cpu()))

    def _per_image_prompts(self, images: Tensor, prompts: Sequence[str]) -> list[str]:
        # Accept the unique prompt list (prompt-major, images_per_prompt each) or one per image.
        n, k = images.shape[0], self.images_per_prompt
        if len(prompts) == n:
            return list(prompts)
        if len(prompts) * k == n:
            return [p for p in prompts for _ in range(k)]
        raise UserError(f"digits suite: {n} images do not match {len(prompts)} prompts x {k} per prompt")

    def _diversity(self, feats: Tensor, prompts: list[str]) -> float:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        return float(np.mean([mean_pairwise_distance(feats[idx]) for idx in groups.values() if len(idx) > 1]))

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any) -> dict[str, Any]:
        """Metrics for prompt-major samples (N, 3, 8, 8) in [0, 1]."""
        images = images.float().cpu()
        per_image = self._per_image_prompts(images, prompts)
        labels = parse_prompts(per_image)  # (N,)
        feats = self.features(images)  # (N, d)
        pred = self.classifier.head(feats).argmax(1)  # (N,)
        d = feats.shape[1]
        out: dict[str, Any] = {"accuracy": (pred == labels).float().mean().item()}
        rewards = {"digit-correct": self.digit_correct, "digit-ink": self.digit_ink}
        run_rewards = getattr(getattr(ctx, "rewards", None), "rewards", None) or {}
        rewards.update(run_rewards)
        out["reward"] = {name: reward(images, per_image).float().mean().item() for name, reward in rewards.items()}
        out["fid"] = frechet_distance(feats, self.held_out_features)
        notes = [f"FID on digits-classifier penultimate features (d={d}) against the "
                 f"{len(self.held_out_features)} held-out real digits; not comparable with Inception FID"]
        teacher = getattr(ctx, "teacher_samples", None)
        if teacher is None:
            notes.append("fid_t skipped: no teacher samples were provided (ctx.teacher_samples is None)")
        else:
            t_images = teacher()
            if t_images.shape != images.shape:
                raise ValueError(f"teacher samples {tuple(t_images.shape)} do not match images {tuple(images.shape)}")
            out["fid_t"] = frechet_distance(feats, self.features(t_images))
            notes.append(f"FID-T on digits-classifier penultimate features (d={d}) against the teacher's "
                         "samples on the same prompts and seeds (the suite's definition)")
        if len(per_image) > len(set(per_image)):
            out["diversity"] = self._diversity(feats, per_image)
        else:
            notes.append("diversity skipped: one sample per prompt")
        per_class = [(pred[labels == c] == c).float().mean().item() if (labels == c).any() else None
                     for c in range(NUM_CLASSES)]  # None (valid JSON) for a class without samples
        out["accuracy_per_class"] = per_class  # a list: kept in the JSON, not a table column
        out["note"] = "; ".join(notes)
        return out


def save_digit_grid(rows: dict[str, Tensor], prompts: Sequence[str], path: str | Path,
                    per_cell: int = 4) -> Path:
    """PNG grid: one row per named sample set (e.g. method), one column per prompt.

    Each row is (P * k, 3, H, W) in [0, 1], prompt-major (prompt i's j-th sample at i*k + j);
    a cell shows the first min(k, per_cell) samples side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("save_digit_grid needs at least one row")
    n_p = len(prompts)
    fig, axes = plt.subplots(len(rows), n_p, figsize=(1.3 * n_p * min(per_cell, 4) / 2 + 1, 1.1 * len(rows) + 0.8),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        if images.shape[0] % n_p:
            raise ValueError(f"row {name!r}: {images.shape[0]} images is not a multiple of {n_p} prompts")
        k = images.shape[0] // n_p
        grid = images.detach().float().cpu().clamp(0, 1).view(n_p, k, *images.shape[1:])[:, :per_cell]
        for c in range(n_p):
            strip = torch.cat(list(grid[c]), dim=2).permute(1, 2, 0).numpy()  # (H, k*W, 3)
            ax = axes[r, c]
            ax.imshow(strip, interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
            if r == 0:
                ax.set_title(prompts[c], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
