"""The `shapes-geneval` suite (issue 15): GenEval's figures on the `shapes` base.

- GenEval figures: each sample is scored by the rule-based detector (rtdmd_bench/shapes/detect.py,
  accuracy measured on held-out renders and recorded by the base) and GenEval's rules module (the
  one the `geneval` suite uses: counting, colours, relative position), then summarised as
  summary_scores.py does: per-tag image accuracy, `overall` (their unweighted mean),
  `correct_images`, `correct_prompts` (any image of the prompt correct).
- reward: {name: mean} of `shapes-partial`, `shapes-proxy` and every reward of the run.
- fid: Frechet distance to renders of the same prompts (fixed seed); fid_t: to the teacher's
  samples on the same prompts and seeds (the suite's FID-T, PROTOCOLS.md "FID"). Both on the
  reward proxy's image features (d=64), not Inception: values are not comparable with published FIDs.
- diversity: mean pairwise L2 distance between the features of samples of one prompt, averaged
  over prompts (0 = mode collapse).
Scored with a rule-based detector on a toy world, never under GenEval's name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import TAGS, aggregate
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.rewards.shapes import ShapesPartial, ShapesProxy, partial_credit
from rtdmd_bench.shapes.detect import detect, verdict
from rtdmd_bench.shapes.nets import ProxyConfig
from rtdmd_bench.shapes.scenes import metadata_of, render, scene_for, split_rows
from suites.digits import frechet_distance, mean_pairwise_distance

REFERENCE_SEED = 20_000  # renders for FID; no other draw uses seeds from here


@dataclass
class ShapesSuiteConfig:
    """Configuration of the `shapes-geneval` suite."""

    images_per_prompt: PositiveInt = 8
    """Samples per evaluation prompt (53 prompts: 424 images). GenEval uses 4; 8 gives the
    smallest tags (3 prompts) 24 images (scoring takes ~15 s on a loaded 2-core CPU)."""
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    """The cached reward proxy whose image features give FID, FID-T and diversity."""


class ShapesGenEval:
    """shapes: GenEval per-tag and overall accuracy (rule-based detector), rewards, FID / FID-T, diversity."""

    Config = ShapesSuiteConfig
    name = "shapes-geneval"
    version = "shapes-geneval/1"

    def __init__(self, cfg: ShapesSuiteConfig | None = None) -> None:
        self.cfg = cfg or ShapesSuiteConfig()
        self.images_per_prompt = self.cfg.images_per_prompt
        self.rows = split_rows("eval")
        self.partial = ShapesPartial()
        self.proxy = ShapesProxy(ShapesProxy.Config(proxy=self.cfg.proxy))
        rng = random.Random(REFERENCE_SEED)
        refs = torch.stack([render(scene_for(r, rng)) for r in self.rows for _ in range(self.images_per_prompt)])
        self.reference_features = self.features(refs)  # (P * k, d)
        self.higher_is_better: dict[str, bool] = {
            **{t: True for t in TAGS}, "overall": True, "correct_images": True, "correct_prompts": True,
            "prompts_all_images_correct": True, "fid": False, "fid_t": False, "diversity": True, "reward": True}

    def prepare(self) -> None:
        """Nothing more before generation: the proxy was loaded when the suite was built."""

    def prompts(self) -> list[str]:
        return [r["prompt"] for r in self.rows]

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, 3, 24, 24) in [0, 1] -> (N, d) proxy image features."""
        return self.proxy.net.features(images.float().cpu())

    def _per_image_prompts(self, images: Tensor, prompts: Sequence[str]) -> list[str]:
        n, k = images.shape[0], self.images_per_prompt
        if len(prompts) == n:
            return list(prompts)
        if len(prompts) * k == n:
            return [p for p in prompts for _ in range(k)]
        raise UserError(f"shapes-geneval: {n} images do not match {len(prompts)} prompts x {k} per prompt")

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any) -> dict[str, Any]:
        """Metrics for prompt-major samples (N, 3, 24, 24) in [0, 1]."""
        images = images.float().cpu()
        per_image = self._per_image_prompts(images, prompts)
        metas = [metadata_of(p) for p in per_image]
        dets = [detect(img) for img in images]  # once: the verdicts and the exact reward share them
        correct = [verdict(d, m) for d, m in zip(dets, metas)]
        out: dict[str, Any] = dict(aggregate([m["tag"] for m in metas], correct, per_image))
        partial = float(np.mean([partial_credit(d, m, self.partial.cfg.form) for d, m in zip(dets, metas)]))
        rewards = {"shapes-proxy": self.proxy, **(getattr(getattr(ctx, "rewards", None), "rewards", None) or {})}
        same_partial = getattr(getattr(rewards.get("shapes-partial"), "cfg", None), "form", self.partial.cfg.form)
        if same_partial == self.partial.cfg.form:
            rewards.pop("shapes-partial", None)  # the run's exact reward is the one computed above
        out["reward"] = {"shapes-partial": partial,
                         **{name: reward(images, per_image).float().mean().item() for name, reward in rewards.items()}}
        feats = self.features(images)
        d = feats.shape[1]
        notes = [f"rule-based detector + GenEval rules on the shapes toy world (not GenEval); FID on the reward "
                 f"proxy's image features (d={d}) against {len(self.reference_features)} renders of the same prompts"]
        if len(per_image) == len(self.reference_features):
            out["fid"] = frechet_distance(feats, self.reference_features)
        else:
            notes.append("fid skipped: the image count differs from the suite's (images_per_prompt changed?)")
        teacher = getattr(ctx, "teacher_samples", None)
        if teacher is None:
            notes.append("fid_t skipped: no teacher samples were provided (ctx.teacher_samples is None)")
        else:
            t_images = teacher()
            if t_images.shape != images.shape:
                raise ValueError(f"teacher samples {tuple(t_images.shape)} do not match images {tuple(images.shape)}")
            out["fid_t"] = frechet_distance(feats, self.features(t_images))
            notes.append("FID-T against the teacher's samples on the same prompts and seeds (the suite's definition)")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(per_image):
            groups.setdefault(p, []).append(i)
        if any(len(idx) > 1 for idx in groups.values()):
            out["diversity"] = float(np.mean([mean_pairwise_distance(feats[idx]) for idx in groups.values() if len(idx) > 1]))
        else:
            notes.append("diversity skipped: one sample per prompt")
        out["note"] = "; ".join(notes)
        return out
