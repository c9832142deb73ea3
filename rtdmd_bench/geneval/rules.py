"""GenEval scoring rules as pure functions (djghosh13/geneval, evaluation/evaluate_images.py
and evaluation/summary_scores.py; PROTOCOLS.md "GenEval").

No model lives here: a detector turns an image into `Detection`s (rtdmd_bench/geneval/models.py),
a colour classifier names the colour of a detection, and these functions apply the official
rules: confidence thresholds (0.3; 0.9 for every class when tag == "counting", compared in
float32 like the official numpy code), at most 16 objects per class, NMS off, include clauses
(AND), exclude clauses, colour and relative position checks; then summary_scores.py's figures:
per-tag image accuracy, their unweighted mean, "% correct images" and "% correct prompts".
The colour classifier's input is built here too (`masked_crop`, `clip_preprocess`), with the
official PIL/torchvision arithmetic.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# The 80 COCO classes in COCO index order, spelled as GenEval spells them (object_names.txt):
# "computer mouse", "tv remote", "computer keyboard" where COCO says mouse, remote, keyboard.
CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class Rules:
    """The official constants (evaluate_images.py defaults)."""

    threshold: float = 0.3
    """Detection confidence kept (strictly greater, in float32) for every tag but counting."""
    counting_threshold: float = 0.9
    """Confidence for every class when the prompt's tag is "counting"."""
    max_objects: int = 16
    """At most this many detections per class, highest confidence first."""
    max_overlap: float = 1.0
    """Same-class NMS IoU bound; 1.0 = NMS off (official)."""
    position_margin: float = 0.1
    """Offset shrink factor: each |offset| component shrinks by margin * (dims_A + dims_B)."""
    null_offset: float = 1e-3
    """Below this on both axes (after the shrink) the pair has no relation."""
    direction: float = 0.5
    """A normalised offset component beyond +-this gives a relation."""


OFFICIAL = Rules()


@dataclass
class Detection:
    """One detected instance (the `geneval` suite and the `geneval-partial` reward use it)."""

    cls: str  # GenEval class name
    score: float  # confidence in [0, 1]
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels
    mask: Tensor | None = None  # (H, W) bool over the full image, or None


ColourFn = Callable[[Tensor, Sequence[Detection], str], list[str]]
"""(image (3, H, W) in [0, 1], detections of one class, class name) -> one colour each."""


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def above_threshold(score: float, threshold: float) -> bool:
    """score > threshold in float32. The official code compares mmdet's float32 score array
    with a Python float, which numpy casts to float32: a score of exactly float32(0.3)
    (0.30000001...) is not above float32(0.3), although it is above the float64 0.3."""
    return bool(np.float32(score) > np.float32(threshold))


def select_detections(detections: Sequence[Detection], tag: str, rules: Rules = OFFICIAL
                      ) -> dict[str, list[Detection]]:
    """Per class: confidence > threshold in float32 (0.9 for all classes under "counting"),
    sorted by confidence, top `max_objects`, then greedy same-class NMS (a no-op at
    max_overlap 1.0). Classes with nothing left are absent, as in the official `detected` dict."""
    threshold = rules.counting_threshold if tag == "counting" else rules.threshold
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in detections:
        by_class[det.cls].append(det)
    kept: dict[str, list[Detection]] = {}
    for cls, dets in by_class.items():
        ordered = sorted((d for d in dets if above_threshold(d.score, threshold)), key=lambda d: -d.score)
        ordered = ordered[: rules.max_objects]
        chosen: list[Detection] = []
        while ordered:
            best = ordered.pop(0)
            chosen.append(best)
            if rules.max_overlap < 1.0:
                ordered = [d for d in ordered if box_iou(best.box, d.box) < rules.max_overlap]
        if chosen:
            kept[cls] = chosen
    return kept


def relative_position(a: Detection, b: Detection, rules: Rules = OFFICIAL) -> set[str]:
    """Relations of A relative to B (image y grows downwards, so "above" is dy < 0).

    offset = centre(A) - centre(B); each component shrinks towards 0 by
    margin * (dims_A + dims_B) (sign kept); no relation when both shrunk components are
    < 1e-3; else divide by the norm of the *unshrunk* offset and compare with +-0.5."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    offset = torch.tensor([(ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2], dtype=torch.float64)
    dims = torch.tensor([abs(ax1 - ax0) + abs(bx1 - bx0), abs(ay1 - ay0) + abs(by1 - by0)], dtype=torch.float64)
    shrunk = (offset.abs() - rules.position_margin * dims).clamp(min=0) * offset.sign()  # (2,)
    if bool((shrunk.abs() < rules.null_offset).all()):
        return set()
    dx, dy = (shrunk / offset.norm()).tolist()
    relations = set()
    if dx < -rules.direction:
        relations.add("left of")
    if dx > rules.direction:
        relations.add("right of")
    if dy < -rules.direction:
        relations.add("above")
    if dy > rules.direction:
        relations.add("below")
    return relations


def evaluate_image(image: Tensor, detected: Mapping[str, list[Detection]], metadata: Mapping[str, Any],
                   colour_fn: ColourFn | None, rules: Rules = OFFICIAL) -> tuple[bool, str]:
    """Is one image correct for its prompt metadata? Returns (correct, reason).

    Include clauses must all hold: the top-`count` detections of the class exist; if a colour
    is asked, at least `count` of them are classified that colour; if a position is asked,
    every one of them stands in the relation to every object of the referenced clause (which
    must itself have matched). Exclude clauses fail when at least `count` are detected."""
    correct, reasons = True, []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = detected.get(cls, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        if matched and "color" in req:
            if colour_fn is None:
                raise ValueError("a colour clause needs a colour classifier")
            colours = colour_fn(image, found, cls)
            if colours.count(req["color"]) < count:
                matched = False
                reasons.append(f"expected {req['color']} {cls}>={count}, found colours {colours}")
        if matched and "position" in req:
            relation, target = req["position"]
            targets = matched_groups[target] if target < len(matched_groups) else None
            if targets is None:
                matched = False
                reasons.append(f"no target for {cls} to be {relation}")
            else:
                bad = [(o, t) for o in found for t in targets if relation not in relative_position(o, t, rules)]
                if bad:
                    matched = False
                    found_rel = " and ".join(sorted(relative_position(*bad[0], rules))) or "no relation"
                    reasons.append(f"expected {cls} {relation} target, found {found_rel}")
        correct = correct and matched
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        if len(detected.get(cls, [])) >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {len(detected[cls])}")
    return correct, "\n".join(reasons)


def aggregate(tags: Sequence[str], correct: Sequence[bool], prompt_keys: Sequence[str]) -> dict[str, float]:
    """summary_scores.py's figures, as fractions in [0, 1] (it prints percentages):

    - one entry per tag: the tag's image accuracy ("Task breakdown");
    - "overall": the unweighted mean of the per-tag accuracies ("Overall score (avg. over tasks)");
    - "correct_images": correct images / all images ("% correct images");
    - "correct_prompts": prompts with ANY correct image / prompts ("% correct prompts");
    - "prompts_all_images_correct": prompts with ALL images correct / prompts. Not an official
      figure (this suite's former "prompt_accuracy"), kept under a name that says what it is.

    Prompts are grouped by `prompt_keys` as the official script groups by the metadata JSON.
    tags, correct, prompt_keys: one entry per image."""
    if not len(tags) == len(correct) == len(prompt_keys):
        raise ValueError(f"{len(tags)} tags, {len(correct)} results and {len(prompt_keys)} prompt keys")
    per_tag: dict[str, list[bool]] = defaultdict(list)
    per_prompt: dict[str, list[bool]] = defaultdict(list)
    for tag, ok, key in zip(tags, correct, prompt_keys):
        per_tag[tag].append(bool(ok))
        per_prompt[key].append(bool(ok))
    out = {f"{tag}": sum(v) / len(v) for tag, v in sorted(per_tag.items(), key=lambda kv: _tag_order(kv[0]))}
    nan = float("nan")
    out["overall"] = sum(out[t] for t in per_tag) / len(per_tag) if per_tag else nan
    out["correct_images"] = sum(map(bool, correct)) / len(correct) if len(correct) else nan
    out["correct_prompts"] = sum(any(v) for v in per_prompt.values()) / len(per_prompt) if per_prompt else nan
    out["prompts_all_images_correct"] = (sum(all(v) for v in per_prompt.values()) / len(per_prompt)
                                         if per_prompt else nan)
    return out


def _tag_order(tag: str) -> int:
    return TAGS.index(tag) if tag in TAGS else len(TAGS)


def masked_crop(image: Tensor, det: Detection, background: float = 0x99 / 255) -> Tensor:
    """The colour classifier's input: the detection's mask pasted onto a uniform #999
    background (official `Image.composite` with the boolean mask), cropped to its box with
    PIL's rounding of box coordinates (Python's round: halves to even). Boxes derived from
    masks lie inside the image and are non-empty; others are clamped to the image with at
    least one pixel here, where PIL would pad with black or the official transform would fail.

    image: (3, H, W) in [0, 1] -> (3, h, w)."""
    if det.mask is not None:
        if tuple(det.mask.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"mask {tuple(det.mask.shape)} does not match image {tuple(image.shape[-2:])}")
        image = torch.where(det.mask.to(image.device).bool(), image, torch.full_like(image, background))
    h, w = image.shape[-2:]
    x0, y0, x1, y1 = (int(round(v)) for v in det.box)
    x0, x1 = max(min(x0, w - 1), 0), max(min(x1, w), 1)
    y0, y1 = max(min(y0, h - 1), 0), max(min(y1, h), 1)
    return image[:, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]


def shorter_side_resize(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) of torchvision `Resize(size)` (int size): the shorter side becomes
    `size`, the longer one `int(size * long / short)`, truncated, not rounded."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def centre_crop_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision `CenterCrop(size)` on an (h, w) image at least `size` on
    each side: int(round((h - size) / 2)), Python's round, so halves go to the even number."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def clip_preprocess(crop: Tensor, size: int = 224, mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                    std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)) -> Tensor:
    """The official colour crop transform, open_clip's eval transform on the PIL crop:
    torchvision `Resize(size, BICUBIC)` (on a PIL image that is PIL's own bicubic resize of
    8-bit pixels, skipped when the size already matches), `CenterCrop(size)`, `ToTensor`
    (uint8 / 255 in float32), `Normalize(mean, std)`. Done with PIL here, so every pixel is
    the official one.

    crop: (3, h, w) in [0, 1], on the 8-bit grid (the suite quantises images as the official
    PNGs are) -> (3, size, size) float32 on the CPU."""
    pixels = (crop.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    h, w = pixels.shape[-2:]
    new_h, new_w = shorter_side_resize(h, w, size)
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = centre_crop_offsets(new_h, new_w, size)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, new_h, new_w) uint8
    x = x[:, top:top + size, left:left + size].float().div(255)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s
