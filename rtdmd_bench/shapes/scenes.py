"""Scenes, the renderer and GenEval-style prompts of the `shapes` benchmark.

A scene is one to four flat-coloured objects (circle, square, triangle) on a black 24x24 RGB
background. Prompts follow GenEval's templates in its six tags (djghosh13/geneval
prompts/create_prompts.py phrasing: "a photo of a red circle", "a photo of three squares", "a
photo of a circle left of a square", ...), with GenEval's metadata rows ({"tag", "include",
"exclude"?, "prompt"}), so the GenEval rules module scores them unchanged. Shapes play GenEval's
object classes, five of GenEval's ten colour names its colours.

Every prompt exists once in a fixed table (`all_rows`); `split_rows` cuts it once, per tag, into
disjoint training and evaluation prompts (as GenEval's training prompts are disjoint from its
553): all single-object prompts are evaluation prompts, as in GenEval (three shapes give only three).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import Detection, Rules, relative_position

IMAGE_SIZE = 24
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# Five of GenEval's colour names, at saturated RGB values far apart from each other and from the
# black background (nearest-colour assignment then tolerates generated images' noise).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.3, 1.0),
    "yellow": (1.0, 1.0, 0.0), "white": (1.0, 1.0, 1.0)}
COLOURS: tuple[str, ...] = tuple(PALETTE)
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RADIUS_RANGE = (3.0, 3.6)
"""Object radius in pixels (diameter ~6-7 px on 24 px): small enough for four, large enough for
the shape to read from the mask."""
GAP = 2
"""Pixels of background at least between the boxes of two objects (they never touch)."""
SPLIT_SEED = 0
EVAL_PROMPTS_PER_TAG = {"single_object": 3, "two_object": 3, "counting": 4, "colors": 7, "position": 12,
                        "color_attr": 24}
"""Evaluation prompts per tag; the rest of each tag are training prompts (single_object: all 3 evaluation)."""
CLEAN_RELATION = Rules(direction=0.7)
"""Rendered relations hold with a margin (normalised offset beyond 0.7, GenEval needs 0.5)."""


@dataclass(frozen=True)
class SceneObject:
    """One object: its shape, colour name, centre (x, y) in pixels and radius."""

    shape: str
    colour: str
    cx: float
    cy: float
    r: float


def object_mask(obj: SceneObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool mask of one object, tested at pixel centres (i + 0.5).

    circle: within r of the centre; square: half-side 0.85 r (about the circle's area);
    triangle: apex up, height 2r, base 2.3 r."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - obj.cx, y - obj.cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= obj.r * obj.r
    if obj.shape == "square":
        return (np.abs(dx) <= 0.85 * obj.r) & (np.abs(dy) <= 0.85 * obj.r)
    if obj.shape == "triangle":
        depth = (dy + obj.r) / (2 * obj.r)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= 1.15 * obj.r * depth)
    raise UserError(f"shapes: unknown shape {obj.shape!r}; valid: {', '.join(SHAPES)}")


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) pixel box of a non-empty mask, x1/y1 one past the last pixel (as GenEval's
    mask-derived boxes)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def render(scene: Sequence[SceneObject], size: int = IMAGE_SIZE) -> Tensor:
    """(3, size, size) float32 image in [0, 1]: black background, each object its palette colour
    (later objects drawn over earlier ones; sampled scenes never overlap). Pure: same scene, same image."""
    img = np.zeros((size, size, 3), dtype=np.float32)
    for obj in scene:
        img[object_mask(obj, size)] = PALETTE[obj.colour]
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def truth_detections(scene: Sequence[SceneObject], size: int = IMAGE_SIZE) -> list["ColouredDetection"]:
    """The scene's objects as the detections a perfect detector would return (box and mask from
    the rendered mask, confidence 1): what the evaluator's accuracy is measured against."""
    out = []
    for obj in scene:
        mask = object_mask(obj, size)
        out.append(ColouredDetection(obj.shape, 1.0, mask_box(mask), torch.from_numpy(mask), colour=obj.colour))
    return out


@dataclass
class ColouredDetection(Detection):
    """A GenEval detection that also carries its colour name (the detector reads it off the pixels)."""

    colour: str = ""


# ----------------------------------------------------------------------------- prompts
def _a(shape: str) -> str:
    return f"a {shape}"


def all_rows() -> list[dict[str, Any]]:
    """Every prompt of the benchmark as a GenEval metadata row, in a fixed order."""
    rows: list[dict[str, Any]] = []
    for s in SHAPES:
        rows.append({"tag": "single_object", "include": [{"class": s, "count": 1}], "prompt": f"a photo of {_a(s)}"})
    for s1, s2 in itertools.permutations(SHAPES, 2):
        rows.append({"tag": "two_object", "include": [{"class": s1, "count": 1}, {"class": s2, "count": 1}],
                     "prompt": f"a photo of {_a(s1)} and {_a(s2)}"})
    for s, (n, word) in itertools.product(SHAPES, NUMBERS.items()):
        rows.append({"tag": "counting", "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}],
                     "prompt": f"a photo of {word} {PLURALS[s]}"})
    for c, s in itertools.product(COLOURS, SHAPES):
        rows.append({"tag": "colors", "include": [{"class": s, "count": 1, "color": c}],
                     "prompt": f"a photo of a {c} {s}"})
    for (s1, s2), rel in itertools.product(itertools.permutations(SHAPES, 2), RELATIONS):
        # GenEval's order: the reference object first, the positioned one refers to clause 0.
        rows.append({"tag": "position", "include": [{"class": s2, "count": 1},
                                                    {"class": s1, "count": 1, "position": [rel, 0]}],
                     "prompt": f"a photo of {_a(s1)} {rel} {_a(s2)}"})
    for (s1, s2), (c1, c2) in itertools.product(itertools.permutations(SHAPES, 2), itertools.permutations(COLOURS, 2)):
        rows.append({"tag": "color_attr", "include": [{"class": s1, "count": 1, "color": c1},
                                                      {"class": s2, "count": 1, "color": c2}],
                     "prompt": f"a photo of a {c1} {s1} and a {c2} {s2}"})
    return rows


@lru_cache(maxsize=1)
def _split() -> tuple[tuple[int, ...], tuple[int, ...]]:
    rows = all_rows()
    train, held = [], []
    rng = random.Random(SPLIT_SEED)
    for tag, n_eval in EVAL_PROMPTS_PER_TAG.items():
        idx = [i for i, r in enumerate(rows) if r["tag"] == tag]
        rng.shuffle(idx)
        held += sorted(idx[:n_eval])
        train += sorted(idx[n_eval:])
    return tuple(sorted(train)), tuple(sorted(held))


def split_rows(split: Literal["train", "eval"]) -> list[dict[str, Any]]:
    """The fixed, disjoint training or evaluation metadata rows (per tag: EVAL_PROMPTS_PER_TAG)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rows = all_rows()
    return [rows[i] for i in _split()[0 if split == "train" else 1]]


@lru_cache(maxsize=1)
def _by_prompt() -> dict[str, dict[str, Any]]:
    return {r["prompt"]: r for r in all_rows()}


def metadata_of(prompt: str) -> dict[str, Any]:
    """The GenEval metadata row of a benchmark prompt (case and extra spaces ignored); any other
    text raises UserError with examples."""
    row = _by_prompt().get(" ".join(str(prompt).lower().split()))
    if row is None:
        raise UserError(f"shapes: {prompt!r} is not a shapes prompt; they follow GenEval's templates over "
                        f"{', '.join(SHAPES)} and the colours {', '.join(COLOURS)}, e.g. 'a photo of a red circle', "
                        "'a photo of three squares', 'a photo of a circle left of a triangle'")
    return row


# ----------------------------------------------------------------------------- scenes for prompts
def _separated(a: SceneObject, b: SceneObject) -> bool:
    # Boxes of radius r (+1 for the triangle's wider base) at least GAP pixels apart on some axis.
    ra, rb = 1.2 * a.r + GAP / 2, 1.2 * b.r + GAP / 2
    return abs(a.cx - b.cx) > ra + rb or abs(a.cy - b.cy) > ra + rb


def _place(rng: random.Random, shape: str, colour: str, others: list[SceneObject], size: int) -> SceneObject | None:
    for _ in range(200):
        r = rng.uniform(*RADIUS_RANGE)
        lo, hi = 1.2 * r + 0.5, size - 1.2 * r - 0.5
        obj = SceneObject(shape, colour, rng.uniform(lo, hi), rng.uniform(lo, hi), r)
        if all(_separated(obj, o) for o in others):
            return obj
    return None


def scene_for(meta: dict[str, Any], rng: random.Random, size: int = IMAGE_SIZE) -> list[SceneObject]:
    """A random scene that satisfies `meta` exactly: its include clauses' objects (count, colour
    given or uniform, relation with a margin), nothing else. Objects never touch."""
    for _ in range(100):
        objects: list[SceneObject] = []
        groups: list[list[SceneObject]] = []
        ok = True
        for req in meta["include"]:
            group = []
            for _ in range(int(req["count"])):
                obj = _place(rng, req["class"], req.get("color") or rng.choice(COLOURS), objects, size)
                if obj is None:
                    ok = False
                    break
                objects.append(obj)
                group.append(obj)
            if ok and "position" in req:
                rel, target = req["position"]
                dets = truth_detections(group + groups[target], size)
                ok = all(rel in relative_position(a, b, CLEAN_RELATION) for a in dets[:len(group)]
                         for b in dets[len(group):])
            if not ok:
                break
            groups.append(group)
        if ok:
            return objects
    raise RuntimeError(f"shapes: could not place a scene for {meta['prompt']!r}")  # never seen at 24 px


def training_scenes(n: int, seed: int, rows: Sequence[dict[str, Any]] | None = None
                    ) -> tuple[list[list[SceneObject]], list[str], random.Random]:
    """(scenes, prompts, the generator after drawing them): n scenes, each for a prompt drawn with a
    uniform tag and then a uniform prompt of that tag from `rows` (default: every prompt: the teacher's
    "pretraining" world holds all of them, as a real teacher's does). Deterministic in `seed`."""
    rows = list(rows or all_rows())
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    tags = sorted(by_tag)
    rng = random.Random(seed)
    scenes, prompts = [], []
    for _ in range(n):
        meta = rng.choice(by_tag[rng.choice(tags)])
        scenes.append(scene_for(meta, rng))
        prompts.append(meta["prompt"])
    return scenes, prompts, rng


def training_pairs(n: int, seed: int, rows: Sequence[dict[str, Any]] | None = None) -> tuple[Tensor, list[str]]:
    """(images (n, 3, H, W) in [0, 1], prompts): the renders of `training_scenes(n, seed, rows)`."""
    scenes, prompts, _ = training_scenes(n, seed, rows)
    return torch.stack([render(s) for s in scenes]), prompts
