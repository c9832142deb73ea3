"""The `shapes` evaluator: a rule-based detector scored with GenEval's rules module.

Detector (per image, no learning): a pixel is foreground when its brightest channel exceeds
`FOREGROUND`; it takes the nearest palette colour (Euclidean in RGB); each colour's foreground
splits into 8-connected components (scipy.ndimage.label); components under `MIN_AREA` pixels are
noise, over `MAX_AREA` no single object. A component's shape is the template (circle, square,
apex-up triangle drawn to fill the component's box) its mask overlaps best; under `MIN_IOU` it is
no object (noise, smears), so a noisy or smeared sample cannot pass by chance. Box = the mask's box, confidence 1 (so GenEval's 0.3 / 0.9 thresholds keep every
detection), colour = the palette colour nearest the component's mean pixel.

The detections then go through `rtdmd_bench.geneval.rules` (select_detections, evaluate_image:
counting, colours, relative position) exactly as the `geneval` suite's Mask2Former detections do.
`evaluator_accuracy` measures how often this gives the verdict that the true objects give.
"""

from __future__ import annotations

import random
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from rtdmd_bench.geneval.rules import Detection, evaluate_image, select_detections
from rtdmd_bench.shapes.scenes import (
    COLOURS, PALETTE, SHAPES, ColouredDetection, all_rows, render, scene_for, truth_detections,
)
from rtdmd_bench.shapes.slots import decode_slots, encode_scene

FOREGROUND = 0.4
"""A pixel belongs to an object when max(R, G, B) > this (background is black)."""
MIN_AREA = 12
"""Components smaller than this (pixels) are noise (rendered objects have ~21-41)."""
MAX_AREA = 80
"""Components larger than this are no object (two merged objects, a smear, a noise field)."""
MIN_IOU = 0.6
"""A component is an object only if its best shape template overlaps it this well (IoU); noise
blobs and smears do not (rendered objects: >= 0.75)."""
_PALETTE = torch.tensor([PALETTE[c] for c in COLOURS])  # (C, 3)
_EIGHT = np.ones((3, 3), dtype=bool)


def nearest_colour(rgb: Tensor) -> Tensor:
    """(..., 3) RGB -> (...) index into COLOURS of the nearest palette colour."""
    return torch.cdist(rgb.reshape(-1, 3).float(), _PALETTE).argmin(1).view(rgb.shape[:-1])


def shape_templates(box: tuple[float, float, float, float], size_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each shape drawn to fill `box` (x0, y0, x1, y1), as (H, W) bool masks tested at pixel centres:
    circle of radius (w + h) / 4 at the box centre; the box itself (square); an apex-up triangle
    with its apex at the top edge's centre and its base along the bottom edge."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    y, x = np.mgrid[0:size_hw[0], 0:size_hw[1]].astype(np.float64) + 0.5
    dx, dy = x - (x0 + x1) / 2, y - (y0 + y1) / 2
    r = (w + h) / 4
    depth = (y - y0) / h  # 0 at the top edge, 1 at the bottom
    return {"circle": dx * dx + dy * dy <= r * r,
            "square": (np.abs(dx) <= w / 2) & (np.abs(dy) <= h / 2),
            "triangle": (depth >= 0) & (depth <= 1) & (np.abs(dx) <= w / 2 * depth + 0.25)}


def shape_of(mask: np.ndarray) -> tuple[str, float]:
    """(circle | square | triangle, IoU) of one component's (H, W) bool mask: the shape whose
    template drawn in the component's box overlaps the mask best (ties go to the first in SHAPES)."""
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    best, best_iou = SHAPES[0], -1.0
    for name, tmpl in shape_templates(box, mask.shape).items():
        iou = (mask & tmpl).sum() / max((mask | tmpl).sum(), 1)
        if iou > best_iou:
            best, best_iou = name, float(iou)
    return best, best_iou


def detect(image: Tensor) -> list[ColouredDetection]:
    """Objects of one (3, H, W) image in [0, 1], in a fixed order (colour, then component label)."""
    pix = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0)  # (H, W, 3)
    fg = (pix.max(-1).values > FOREGROUND).numpy()  # (H, W)
    colour_idx = nearest_colour(pix).numpy()  # (H, W)
    out = []
    for c, name in enumerate(COLOURS):
        labels, n = ndimage.label(fg & (colour_idx == c), structure=_EIGHT)
        for k in range(1, n + 1):
            mask = labels == k
            if not MIN_AREA <= mask.sum() <= MAX_AREA:
                continue
            shape, iou = shape_of(mask)
            if iou < MIN_IOU:
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            mean_rgb = pix[torch.from_numpy(mask)].mean(0)  # (3,)
            colour = COLOURS[int(nearest_colour(mean_rgb[None])[0])]
            out.append(ColouredDetection(shape, 1.0, box, torch.from_numpy(mask), colour=colour))
    return out


def colour_of(image: Tensor, dets: Sequence[Detection], cls: str) -> list[str]:
    """GenEval's colour-classifier slot: the colour each detection carries."""
    return [d.colour for d in dets]  # type: ignore[attr-defined]


def verdict(detections: Sequence[Detection], meta: Mapping[str, Any]) -> bool:
    """GenEval's image correctness of these detections for one metadata row (official rules)."""
    selected = select_detections(detections, meta["tag"])
    return evaluate_image(torch.zeros(3, 1, 1), selected, meta, colour_of)[0]


def noisy(image: Tensor, std: float, gen: torch.Generator) -> Tensor:
    """The image plus N(0, std^2) pixel noise, clamped to [0, 1] (a stand-in for a sampler's residue)."""
    return (image + std * torch.randn(image.shape, generator=gen)).clamp(0, 1)


def evaluator_accuracy(n_scenes: int = 600, seed: int = 10_000, noise_std: float = 0.1,
                       source: Literal["render", "decoded"] = "render") -> dict[str, Any]:
    """How often the detector + rules give the verdict the true objects give, on held-out renders.

    Each of `n_scenes` scenes is rendered for a prompt (uniform tag, then uniform prompt) and
    scored twice: against its own prompt (true verdict: correct) and against another prompt of the
    same tag (the true objects' verdict: usually wrong). Renders carry N(0, noise_std^2) pixel
    noise. source "decoded": the scene's slot code drawn by the base's soft renderer instead of the
    hard render (what generated samples go through). Also reports scene recovery: the detected
    (shape, colour) multiset equals the truth.
    Seeds from 10000 up are used by nothing else (training draws from 0)."""
    rows = all_rows()
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    tags = sorted(by_tag)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    agree, scene_ok, per_tag = 0, 0, {t: [0, 0] for t in tags}
    for _ in range(n_scenes):
        tag = rng.choice(tags)
        meta, other = rng.choice(by_tag[tag]), rng.choice(by_tag[tag])
        scene = scene_for(meta, rng)
        image = render(scene) if source == "render" else decode_slots(encode_scene(scene, rng)[None])[0]
        dets, truth = detect(noisy(image, noise_std, gen)), truth_detections(scene)
        scene_ok += sorted((d.cls, d.colour) for d in dets) == sorted((d.cls, d.colour) for d in truth)
        for m in (meta, other):
            same = verdict(dets, m) == verdict(truth, m)
            agree += same
            per_tag[tag][0] += same
            per_tag[tag][1] += 1
    return {"verdict_accuracy": agree / (2 * n_scenes), "scene_accuracy": scene_ok / n_scenes,
            "per_tag": {t: a / max(n, 1) for t, (a, n) in per_tag.items()},
            "n_scenes": n_scenes, "seed": seed, "noise_std": noise_std, "source": source}
