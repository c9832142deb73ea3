"""GenEval partial-credit reward for GRPO (non-differentiable).

RTDMD (like Flow-GRPO, whose reward server it uses) trains SD3 with a GenEval reward that
gives partial credit per clause instead of GenEval's all-or-nothing image accuracy, on
GenEval-style *training* prompts (same templates, disjoint from the 553 evaluation prompts).
The detector, thresholds (0.3; 0.9 under tag "counting"), the 16-per-class cap, NMS off, the
colour classifier and the position rule are GenEval's (rtdmd_bench/geneval/, shared with the
`geneval` suite: transformers Mask2Former instead of mmdet, see there).

Colour CLIP activation: RTDMD's scorer loads `("ViT-L-14", "openai")` with its pinned
open_clip 3.3.0, which builds OpenAI's QuickGELU-trained weights with plain GELU. This reward
keeps RTDMD's GELU by default (config `colour_clip_activation="gelu"`), so it computes RTDMD's
training reward; "quick_gelu" builds it as OpenAI trained it and as GenEval's own scorer (and
the `geneval` suite) does, and the reward's name then says so ("geneval-partial[quickgelu-clip]").

Two forms (config `form`):
- "rtdmd" (default), RTDMD's `evaluate_reward` (rtdmd/rewards/geneval_scorer.py): per include
  clause a count term 1 - |count - found| / count over ALL detections kept for the class
  (negative when more than 2x count are found); if the count is not exact, one 0 for the
  colour/position attribute; else a colour term 1 - |count - n_colour| / count and, if the
  colour matched, a position term: 0 when the target group did not match, else 1, but a
  failing object pair appends a 0 *and* the 1 (a quirk of the official loop, reproduced).
  Exclude clauses do not enter this score. Reward = mean of the terms.
- "clauses": the fraction of clauses satisfied under GenEval's own evaluation rules, in
  [0, 1]: per include clause its count (top-`count` detections exist), colour and position
  sub-clauses; per exclude clause (fewer than `count` found).

Training prompts: `training_metadata` / `rtdmd-bench prepare geneval-train` draw
GenEval-style rows from GenEval's templates, excluding the evaluation prompts. All 80
single-object prompts are evaluation prompts, so a disjoint set has no single_object rows.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol, Sequence

import torch
from torch import Tensor

from rtdmd_bench import prompt_files
from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.models import ModelSource, build_colour_classifier, build_detector
from rtdmd_bench.geneval.rules import (
    CLASSES, COLORS, OFFICIAL, RELATIONS, Detection, Rules, relative_position, select_detections,
)
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.rewards.clip_based import check_inputs
from rtdmd_bench.rewards.loading import cached_model
from rtdmd_bench.runs import atomic_write_text

ColourFn = Any  # (image (3,H,W), detections of one class, class) -> list of colour names


class Detector(Protocol):
    """What the reward needs from a detector (rtdmd_bench.geneval.models.Mask2FormerDetector)."""

    def detect(self, images: Tensor) -> list[list[Detection]]:  # (B,3,H,W) in [0,1]
        ...


def _position_ok(found: Sequence[Detection], targets: Sequence[Detection], relation: str,
                 rules: Rules) -> bool:
    """Every found object stands in `relation` to every target object (official loop)."""
    return all(relation in relative_position(a, b, rules) for a in found for b in targets)


def rtdmd_partial_credit(image: Tensor, detected: Mapping[str, list[Detection]],
                         meta: Mapping[str, Any], colour_fn: ColourFn,
                         rules: Rules = OFFICIAL) -> tuple[float, bool]:
    """RTDMD's partial-credit reward of one image and whether it is strictly correct
    (every include clause exact). See the module docstring for the terms."""
    terms: list[float] = []
    groups: list[list[Detection] | None] = []
    strict = True
    for req in meta.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = list(detected.get(cls, []))
        matched = len(found) == count
        terms.append(1 - abs(count - len(found)) / count)
        if not matched and ("color" in req or "position" in req):
            terms.append(0.0)
        if matched and "color" in req:
            n_colour = colour_fn(image, found, cls).count(req["color"])
            terms.append(1 - abs(count - n_colour) / count)
            matched = n_colour == count
        if matched and "position" in req:
            relation, target = req["position"]
            if groups[target] is None:
                matched = False
                terms.append(0.0)
            else:
                if not _position_ok(found, groups[target], relation, rules):
                    matched = False
                    terms.append(0.0)
                terms.append(1.0)  # official: appended after the pair loop even on failure
        strict = strict and matched
        groups.append(found if matched else None)
    return (sum(terms) / len(terms) if terms else 0.0), strict


def clause_fraction(image: Tensor, detected: Mapping[str, list[Detection]],
                    meta: Mapping[str, Any], colour_fn: ColourFn,
                    rules: Rules = OFFICIAL) -> tuple[float, bool]:
    """Fraction of GenEval clauses satisfied (GenEval's evaluation semantics) and whether
    all are (= GenEval's image correctness)."""
    passed: list[bool] = []
    groups: list[list[Detection] | None] = []
    for req in meta.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = list(detected.get(cls, []))[:count]
        ok = len(found) >= count
        passed.append(ok)
        if "color" in req:
            colour_ok = ok and colour_fn(image, found, cls).count(req["color"]) >= count
            passed.append(colour_ok)
            ok = ok and colour_ok
        if "position" in req:
            relation, target = req["position"]
            pos_ok = ok and groups[target] is not None and _position_ok(found, groups[target], relation, rules)
            passed.append(pos_ok)
            ok = ok and pos_ok
        groups.append(found if ok else None)
    for req in meta.get("exclude", []):
        passed.append(len(detected.get(req["class"], [])) < int(req["count"]))
    return (sum(passed) / len(passed) if passed else 0.0), all(passed)


FORMS = {"rtdmd": rtdmd_partial_credit, "clauses": clause_fraction}


MODELS_KIND = "geneval-models"
"""rtdmd_bench.rewards.loading cache kind of the (detector, colour classifier) pairs."""


def model_settings(cfg: Any) -> tuple[Any, ...]:
    """What selects the models of a config with the fields models, detector_path, clip_path,
    allow_download, stand_in_seed and colour_clip_activation (this reward's, the geneval-rtdmd
    suite's): the cache key. batch_size is no part of it: it changes no score, so they share."""
    return (cfg.models, cfg.detector_path, cfg.clip_path, cfg.allow_download, cfg.stand_in_seed,
            cfg.colour_clip_activation)


def shared_models(cfg: Any) -> tuple[Detector, ColourFn]:
    """The detector and colour classifier of `cfg` (fields of `model_settings` and batch_size),
    built by the GenEval suite's builders (rtdmd_bench/geneval/models.py: same models and settings
    as the suite, but the colour CLIP's activation of `colour_clip_activation`), once per process
    and settings; `release_models(MODELS_KIND, model_settings(cfg))` frees them."""
    def build() -> tuple[Detector, ColourFn]:
        return (build_detector(cfg.models, cfg.detector_path, cfg.allow_download, cfg.batch_size, cfg.stand_in_seed),
                build_colour_classifier(cfg.models, cfg.clip_path, cfg.allow_download, cfg.stand_in_seed,
                                        cfg.colour_clip_activation))

    return cached_model(MODELS_KIND, model_settings(cfg), build)


def load_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """GenEval-style metadata jsonl (one {"tag", "include", "exclude"?, "prompt"} per line),
    indexed by prompt text."""
    rows: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(prompt_files.read_text(Path(path), "metadata file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["prompt"]] = row
            _ = row["tag"], row["include"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{n}: not a GenEval metadata line ({exc}); expected "
                            '{"tag": ..., "include": [...], "prompt": ...}') from exc
    return rows


# ---------------------------------------------------------------------------------------
# GenEval-style training prompts (GenEval's generation templates, spelling as in its file:
# "an" before a vowel, plural = +"es" after a final "s" else +"s", e.g. "benchs", "buses").

TAG_NAMES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {2: "two", 3: "three", 4: "four"}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


def geneval_style_row(tag: str, rng: random.Random) -> dict[str, Any]:
    """One metadata row of `tag` drawn from GenEval's templates."""
    a, b = rng.sample(CLASSES, 2)
    if tag == "single_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {_a(a)}"}
    if tag == "two_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {_a(a)} and {_a(b)}"}
    if tag == "counting":
        n = rng.choice(sorted(NUMBERS))
        return {"tag": tag, "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
                "prompt": f"a photo of {NUMBERS[n]} {_plural(a)}"}
    if tag == "colors":
        c = rng.choice(COLORS)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c}], "prompt": f"a photo of {_a(c + ' ' + a)}"}
    if tag == "position":
        rel = rng.choice(RELATIONS)
        return {"tag": tag, "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {_a(a)} {rel} {_a(b)}"}
    if tag == "color_attr":
        ca, cb = rng.sample(COLORS, 2)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                "prompt": f"a photo of {_a(ca + ' ' + a)} and {_a(cb + ' ' + b)}"}
    raise ValueError(f"unknown GenEval tag {tag!r}; valid: {', '.join(TAG_NAMES)}")


def training_metadata(n: int, seed: int, exclude: set[str], tags: Sequence[str] = TAG_NAMES
                      ) -> list[dict[str, Any]]:
    """`n` distinct GenEval-style rows, tags in turn, none of whose prompts is in `exclude`
    (pass the 553 evaluation prompts: training stays disjoint from evaluation)."""
    rng, rows, seen = random.Random(seed), [], set(exclude)
    for attempt in range(100 * n):
        if len(rows) == n:
            break
        row = geneval_style_row(tags[attempt % len(tags)], rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    if len(rows) < n:
        raise UserError(f"only {len(rows)} distinct GenEval-style prompts for tags {list(tags)}; ask for fewer")
    return rows


def write_training_metadata(out: Path | None, n: int, seed: int, exclude: Path | None) -> int:
    """Write `n` GenEval-style training rows (`training_metadata`) to `out` as jsonl, none of
    whose prompts is in the metadata file `exclude` (GenEval's evaluation_metadata.jsonl), for
    `rtdmd-bench prepare geneval-train`. Returns the number of rows written."""
    if out is None or out.is_dir():
        raise UserError("prepare geneval-train needs --out FILE (the metadata jsonl to write)"
                        + ("" if out is None else f"; {out} is a folder"))
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"--out {out}: {blocked} is a file, not a folder")
    if exclude is not None and not exclude.is_file():
        raise UserError(f"--exclude {exclude} is not a file (give GenEval's evaluation_metadata.jsonl)")
    excluded = set(load_metadata(exclude)) if exclude is not None else set()
    rows = training_metadata(n, seed, excluded)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


class GenevalPartial:
    """GenEval partial-credit reward (RTDMD's GRPO reward), non-differentiable."""

    @dataclass
    class Config:
        metadata_path: str = ""
        """GenEval-style training metadata jsonl whose prompts are trained on, or the named set
        rtdmd:geneval/train_metadata.jsonl (RTDMD's, the real bases' recipes), else
        $RTDMD_BENCH_GENEVAL_TRAIN_METADATA; every prompt scored must be in it."""
        disjoint_from: str = ""
        """Optional path to GenEval's evaluation_metadata.jsonl: error if any training prompt is in it."""
        form: Literal["rtdmd", "clauses"] = "rtdmd"
        """"rtdmd": RTDMD's partial credit (official training reward); "clauses": fraction of clauses met."""
        models: ModelSource = "official"
        """Detector + colour CLIP: "official" (Mask2Former Swin-S COCO, CLIP ViT-L/14) or tiny stand-ins."""
        detector_path: str = ""
        """Local Mask2Former folder (empty = hub facebook/mask2former-swin-small-coco-instance)."""
        clip_path: str = ""
        """Local OpenAI CLIP ViT-L/14 checkpoint file for the colour classifier (empty = hub)."""
        allow_download: bool = True
        """Let the detector/CLIP loaders use the hub (HF_HUB_OFFLINE still applies)."""
        batch_size: PositiveInt = 4
        """Images per detector forward (scores do not depend on it)."""
        stand_in_seed: int = 0
        """Seed of the stand-in models' random initialisation."""
        colour_clip_activation: Literal["gelu", "quick_gelu"] = "gelu"
        """MLP activation of the colour CLIP. "gelu" (default, official for this reward): RTDMD's
        open_clip 3.3.0 builds ("ViT-L-14", "openai") with plain GELU although OpenAI trained the
        weights with QuickGELU (apparently accidental), and RTDMD trained with that. "quick_gelu":
        OpenAI's activation, as GenEval's own scorer and the `geneval` suite use."""

    name = "geneval-partial"
    differentiable = False

    def __init__(self, cfg: "GenevalPartial.Config | None" = None, detector: Detector | None = None,
                 colour_fn: ColourFn | None = None) -> None:
        """`detector` / `colour_fn` may be injected (tests); then the name says so."""
        self.cfg = cfg or self.Config()
        self.name = "tiny-geneval-partial[stand-in]" if self.cfg.models == "stand-in" else "geneval-partial"
        if self.cfg.colour_clip_activation == "quick_gelu":
            self.name = f"{self.name}[quickgelu-clip]"
        if detector is not None or colour_fn is not None:
            self.name = f"{self.name}[injected models]"
        self.metadata = self._load_metadata()
        self._detector, self._colour_fn = detector, colour_fn
        self._models()  # load now: missing weights fail at construction, like the other rewards

    def _load_metadata(self) -> dict[str, dict[str, Any]]:
        path = self.cfg.metadata_path or os.environ.get("RTDMD_BENCH_GENEVAL_TRAIN_METADATA", "")
        if path in prompt_files.TRAINING:  # a named public set: its verified download
            path = str(prompt_files.resolve_source(path, f"--set reward.{self.name.split('[')[0]}.metadata_path"))
        if not path or not Path(path).is_file():
            raise UserError(
                f"reward {self.name!r} needs GenEval-style training metadata (jsonl with tag/include/"
                f"exclude/prompt per line; e.g. Flow-GRPO's dataset/geneval/train_metadata.jsonl): "
                f"pass --set reward.{self.name.split('[')[0]}.metadata_path=FILE or set "
                f"RTDMD_BENCH_GENEVAL_TRAIN_METADATA=FILE "
                f"(write one with `rtdmd-bench prepare geneval-train --out FILE --exclude "
                f"EVALUATION_METADATA.jsonl`)"
                + (f" ({path} is not a file)" if path else ""))
        rows = load_metadata(Path(path))
        if self.cfg.disjoint_from:
            overlap = sorted(set(rows) & set(load_metadata(Path(self.cfg.disjoint_from))))
            if overlap:
                raise UserError(f"{len(overlap)} training prompts of {path} are GenEval evaluation "
                                f"prompts (e.g. {overlap[0]!r}); training prompts must be disjoint")
        return rows

    def _models(self) -> tuple[Detector, ColourFn]:
        """The detector and colour CLIP (`shared_models`), unless injected."""
        if self._detector is None or self._colour_fn is None:
            detector, colour_fn = shared_models(self.cfg)
            self._detector = self._detector or detector
            self._colour_fn = self._colour_fn or colour_fn
        return self._detector, self._colour_fn

    def lookup(self, prompt: str) -> dict[str, Any]:
        if prompt not in self.metadata:
            raise UserError(f"geneval-partial has no metadata for prompt {prompt!r}: train on the "
                            f"prompts of metadata_path ({len(self.metadata)} prompts)")
        return self.metadata[prompt]

    @torch.no_grad()
    def details(self, images: Tensor, prompts: Sequence[str]) -> list[tuple[float, bool]]:
        """(partial credit, strictly correct) per image."""
        check_inputs(images, prompts)
        metas = [self.lookup(p) for p in prompts]
        detector, colour_fn = self._models()
        # RTDMD's reward adapter (like the GenEval suite) scores 8-bit images: quantise.
        images = (images.detach().float().clamp(0, 1) * 255).round() / 255
        detections = detector.detect(images)
        score = FORMS[self.cfg.form]
        return [score(image, select_detections(dets, meta["tag"]), meta, colour_fn)
                for image, dets, meta in zip(images, detections, metas)]

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        scores = [s for s, _ in self.details(images, prompts)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)
