"""The `geneval-rtdmd` suite: RTDMD's GenEval column (Harahan/RTDMD 6c3cb03,
rtdmd/rewards/geneval_scorer.py through multi_scorer.GenevalScorerAdapter and inference.py's means).

It is not GenEval's accuracy (the `geneval` suite) and is never reported under that name.

Prompts: RTDMD's dataset/geneval/test_metadata.jsonl (GenEval's 553 evaluation rows, each 4 times,
shuffled: 2212 lines; verified download, or `--set suite.prompts=PATH`). One image per LINE, scored
against that line's own row (a repeated prompt counts again), seed 42. RTDMD's inference script keeps
the first 64 lines (`limit=64`), its training-time evaluation all of them.

Per image, from GenEval's selected detections (thresholds 0.3, or 0.9 for every class under tag
"counting"; top 16 per class; NMS off: rtdmd_bench/geneval/rules.py):
- `geneval_rtdmd`: RTDMD's partial credit (`score`; rewards/geneval_partial.rtdmd_partial_credit:
  exact counts over all kept detections, exclude clauses ignored);
- `accuracy`: GenEval's image correctness (rules.evaluate_image; RTDMD's `correct`);
- `strict_accuracy`: every include clause exact (RTDMD's `strict_correct`);
- `<tag>_accuracy`, `<tag>_strict_accuracy` over the images of each tag present. RTDMD reports no
  per-tag partial credit, so neither does this suite.
Each figure is the mean over images of the values other than -10, RTDMD's marker of "another tag":
RTDMD's mean also drops an image whose partial credit is exactly -10 (a single-object image with 12
detections of its class, a two-object image with 24 in all), kept only with `minus_ten="keep"`.

Two RTDMD behaviours that look accidental are the defaults, each with a named switch:
- `detector_channels="swapped"`: RTDMD hands mmdet 2.28.2 an RGB array where mmdet expects BGR (its
  Normalize to_rgb=True then swaps it), so the network sees the channels swapped. Emulated by flipping
  RGB -> BGR before the detector only; the colour CLIP sees RGB crops, as in RTDMD. "rgb" is what mmdet
  sees when it reads the image file itself (GenEval's own evaluation).
- `colour_clip_activation="gelu"`: open_clip 3.3.0 builds ("ViT-L-14", "openai") with plain GELU
  although OpenAI trained the weights with QuickGELU.

Not exact: the detector is transformers' Mask2Former (facebook/mask2former-swin-small-coco-instance,
mmdet-style post-processing; rtdmd_bench/geneval/models.py), not mmdet 2.28.2's with GenEval's
checkpoint, so results are versioned "geneval-rtdmd/transformers-m2f-..." and carry a note saying so.
RTDMD's multi-GPU mean weights each rank's mean by its image count; in one process it is the plain mean.

The detector and colour CLIP come from the process cache the `geneval-partial` reward uses
(`shared_models`); `release()` frees this suite's entry, so an evaluation can hold one heavy scorer
at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.models import DETECTOR_HUB_ID, ClipActivation, ModelSource, resolve_clip_precision
from rtdmd_bench.geneval.rules import OFFICIAL, TAGS, ColourFn, evaluate_image
from rtdmd_bench.ranges import NonNegativeInt, PositiveInt
from rtdmd_bench.rewards.geneval_partial import (MODELS_KIND, Detector, model_settings, rtdmd_partial_credit,
                                                 shared_models)
from rtdmd_bench.rewards.loading import release_models
from suites import prompt_sets
from suites.geneval import selected_detections
from suites.preference import resolve_device, seed_record

DetectorChannels = Literal["swapped", "rgb"]
MinusTen = Literal["drop", "keep"]
PROMPT_SET = "geneval-rtdmd"  # prompt_sets.OFFICIAL key
MINUS_TEN = -10.0  # RTDMD's "not this tag" marker, dropped from every mean
MAX_LISTED = 50  # per-image details kept in the result
NOTE = ("RTDMD's GenEval partial credit (not GenEval's accuracy); detector = transformers Mask2Former "
        f"({DETECTOR_HUB_ID}) with mmdet-style post-processing instead of RTDMD's mmdet 2.28.2 Mask2Former, so "
        "scores are close to but not exactly RTDMD's; RTDMD's images depend on its CUDA noise streams and are "
        "not reproduced")
STAND_IN_NOTE = ("STAND-IN: tiny randomly initialised (or injected) detector and colour CLIP; these numbers "
                 "test the code path only and are not RTDMD GenEval scores")


def rtdmd_means(tags: Sequence[str], scores: Sequence[float], correct: Sequence[bool], strict: Sequence[bool],
                drop_minus_ten: bool = True) -> tuple[dict[str, float], int]:
    """RTDMD's figures from per-image values (compute_geneval's lists, inference.py's
    `_score_details_to_mean_metrics`): the mean of each list without its -10 entries (in float64,
    numpy's mean); a tag's lists hold -10 for the images of other tags, so its figures average its
    own images, and a tag with no image has none. Returns (figures, partial credits dropped as -10)."""
    def mean(values: Sequence[float]) -> float:
        kept = [v for v in values if not (drop_minus_ten and v == MINUS_TEN)]
        return float(np.mean(np.asarray(kept, dtype=np.float64))) if kept else float("nan")

    right = [1.0 if c else 0.0 for c in correct]
    exact = [1.0 if s else 0.0 for s in strict]
    out = {"geneval_rtdmd": mean(scores), "accuracy": mean(right), "strict_accuracy": mean(exact)}
    for tag in [t for t in TAGS if t in tags]:
        out[f"{tag}_accuracy"] = mean([r for t, r in zip(tags, right) if t == tag])
        out[f"{tag}_strict_accuracy"] = mean([e for t, e in zip(tags, exact) if t == tag])
    dropped = sum(1 for s in scores if s == MINUS_TEN) if drop_minus_ten else 0
    return out, dropped


class GenEvalRTDMD:
    """RTDMD's GenEval column: partial credit per image, averaged over the lines of its test_metadata.jsonl."""

    @dataclass
    class Config:
        prompts: str = ""
        """GenEval metadata jsonl, one row per line, each line one image (RTDMD's format); empty = RTDMD's
        dataset/geneval/test_metadata.jsonl (2212 lines, checksum-verified cached download)."""
        limit: NonNegativeInt = 0
        """Use only the first N lines (0 = all; RTDMD's inference script: 64); fewer than 2212 is marked partial."""
        seed: int = 42
        """Sampling seed of the protocol (RTDMD: 42)."""
        models: ModelSource = "official"
        """"official": Mask2Former Swin-S COCO + OpenAI CLIP ViT-L/14; "stand-in": tiny random models
        (CI), reported as "geneval-rtdmd[stand-in]"."""
        detector_path: str = ""
        """Local folder of the Mask2Former checkpoint; empty = hub id facebook/mask2former-swin-small-coco-instance."""
        clip_path: str = ""
        """Local OpenAI CLIP ViT-L/14 checkpoint file for open_clip; empty = open_clip's "openai" weights from the hub."""
        allow_download: bool = True
        """Let transformers/open_clip fetch missing weights from the hub (HF_HUB_OFFLINE still applies)."""
        batch_size: PositiveInt = 4
        """Images per detector forward (scores do not depend on it; RTDMD: 64)."""
        device: str = "auto"
        """Where the detector and colour CLIP run: "auto" = CUDA when available, else CPU; or a torch
        device string ("cpu", "cuda:1"). The colour CLIP runs under fp16 autocast on CUDA, fp32 on the
        CPU, as RTDMD's (clip_benchmark amp=True)."""
        stand_in_seed: int = 0
        """Seed of the stand-in models' random initialisation (not a sampling seed)."""
        colour_clip_activation: ClipActivation = "gelu"
        """MLP activation of the colour CLIP. "gelu" (default, RTDMD's): its open_clip 3.3.0 builds
        ("ViT-L-14", "openai") with plain GELU although OpenAI trained the weights with QuickGELU
        (apparently accidental). "quick_gelu": OpenAI's activation, as GenEval's own scorer uses;
        the suite is then named "geneval-rtdmd[quickgelu-clip]"."""
        detector_channels: DetectorChannels = "swapped"
        """Channel order the detector network sees. "swapped" (default, RTDMD's): RTDMD hands mmdet 2.x
        an RGB array where mmdet expects BGR, so the network sees BGR (apparently accidental); emulated by
        flipping RGB -> BGR before the detector only (the colour CLIP still sees RGB). "rgb": what mmdet
        sees when it reads the image file itself; named "geneval-rtdmd[rgb-detector]"."""
        minus_ten: MinusTen = "drop"
        """"drop" (default, RTDMD's): every mean skips values equal to -10, RTDMD's marker of another tag,
        which also skips an image whose partial credit is exactly -10 (apparently accidental). "keep":
        such images count; named "geneval-rtdmd[keep-minus-ten]"."""

    images_per_prompt = 1

    def __init__(self, cfg: "GenEvalRTDMD.Config | None" = None, detector: Detector | None = None,
                 colour_fn: ColourFn | None = None) -> None:
        """`detector` (`detect(images) -> list[list[Detection]]`) and `colour_fn` may be injected
        (tests); then the name says "[injected models]" and the result is a stand-in's."""
        self.cfg = c = cfg or GenEvalRTDMD.Config()
        if c.detector_channels not in ("swapped", "rgb") or c.minus_ten not in ("drop", "keep") \
                or c.colour_clip_activation not in ("gelu", "quick_gelu"):
            raise UserError("suite geneval-rtdmd: detector_channels must be swapped|rgb, minus_ten drop|keep, "
                            "colour_clip_activation gelu|quick_gelu")
        self._injected = (detector, colour_fn)
        self._detector, self._colour_fn = detector, colour_fn
        injected = detector is not None or colour_fn is not None
        self.stand_in = c.models == "stand-in" or injected
        tags = (["stand-in"] if c.models == "stand-in" else []) + (["injected models"] if injected else []) + \
               (["rgb-detector"] if c.detector_channels == "rgb" else []) + \
               (["quickgelu-clip"] if c.colour_clip_activation == "quick_gelu" else []) + \
               (["keep-minus-ten"] if c.minus_ten == "keep" else [])
        self.name = "geneval-rtdmd" + (f"[{','.join(tags)}]" if tags else "")
        activation = c.colour_clip_activation.replace("_", "")
        keep = "-keep-minus-ten" if c.minus_ten == "keep" else ""
        self.version = (f"geneval-rtdmd/{'stand-in' if self.stand_in else 'transformers-m2f'}-"
                        f"{c.detector_channels}-{activation}{keep}-1")
        self.seed = c.seed
        self.higher_is_better: dict[str, bool] = {"geneval_rtdmd": True, "accuracy": True, "strict_accuracy": True}
        self._rows: list[dict[str, Any]] | None = None

    def metadata(self) -> list[dict[str, Any]]:
        """One GenEval metadata row per line (the first `limit`), aligned with `prompts()`."""
        if self._rows is None:
            rows = prompt_sets.load_geneval(prompt_sets.resolve(PROMPT_SET, self.cfg.prompts))
            self._rows = rows[: self.cfg.limit] if self.cfg.limit > 0 else rows
        return self._rows

    def prompts(self) -> list[str]:
        return [row["prompt"] for row in self.metadata()]

    def models(self) -> tuple[Detector, ColourFn]:
        """(detector, colour classifier): the injected ones, else the process-cached pair of this
        config's settings (rewards/geneval_partial.shared_models)."""
        if self._detector is None or self._colour_fn is None:
            detector, colour_fn = shared_models(self.cfg)
            self._detector = self._detector or detector
            self._colour_fn = self._colour_fn or colour_fn
        return self._detector, self._colour_fn

    def prepare(self) -> None:
        """Before any image is generated: the detector and colour CLIP loaded (into the process cache
        `release` frees) and the device checked."""
        resolve_device(self.cfg.device)
        self.models()

    def release(self) -> int:
        """Free the cached detector and colour CLIP of this suite's settings (process cache, then
        CUDA's cached blocks; another holder, e.g. a geneval-partial reward, keeps them alive); the
        next score loads them again. Returns how many cache entries were dropped."""
        self._detector, self._colour_fn = self._injected
        return release_models(MODELS_KIND, model_settings(self.cfg))

    def judge(self, images: Tensor, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per image: RTDMD's partial credit, GenEval's correctness (and why not), strict
        correctness and the number of kept detections per class. images (N, 3, H, W) in [0, 1]."""
        detector, colour_fn = self.models()
        out = []
        for image, detected, row in selected_detections(images, rows, detector, self.cfg.batch_size,
                                                        resolve_device(self.cfg.device),
                                                        swap_channels=self.cfg.detector_channels == "swapped"):
            score, strict = rtdmd_partial_credit(image, detected, row, colour_fn, OFFICIAL)
            correct, reason = evaluate_image(image, detected, row, colour_fn, OFFICIAL)
            out.append({"tag": row["tag"], "prompt": row["prompt"], "geneval_rtdmd": score, "correct": correct,
                        "strict_correct": strict, "reason": reason,
                        "detected": {cls: len(dets) for cls, dets in detected.items()}})
        return out

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        """RTDMD's figures (`rtdmd_means`) over the images, one per line of `prompts()`, in order."""
        rows = self.metadata()
        if list(prompts) != [r["prompt"] for r in rows[: len(prompts)]]:
            raise UserError("geneval-rtdmd images must come in the order of the suite's prompts() (one per line)")
        if images.shape[0] != len(prompts) or not prompts:
            raise UserError(f"geneval-rtdmd needs one image per line: got {images.shape[0]} for {len(prompts)} lines")
        device = resolve_device(self.cfg.device)
        precision = resolve_clip_precision("auto", device.type)
        judged = self.judge(images, rows[: len(prompts)])
        metrics, dropped = rtdmd_means([j["tag"] for j in judged], [j["geneval_rtdmd"] for j in judged],
                                       [j["correct"] for j in judged], [j["strict_correct"] for j in judged],
                                       drop_minus_ten=self.cfg.minus_ten == "drop")
        self.higher_is_better = {k: True for k in metrics}
        record = seed_record(self.seed, ctx)
        notes = [STAND_IN_NOTE if self.stand_in else NOTE, record.pop("seed_note", "")]
        return {
            **metrics,
            "suite": self.name,
            "version": self.version,
            "note": "; ".join(n for n in notes if n),
            **record,
            "detector": ("injected" if self._injected[0] is not None else
                         "stand-in" if self.cfg.models == "stand-in" else
                         f"transformers Mask2Former {self.cfg.detector_path or DETECTOR_HUB_ID} (not mmdet 2.28.2)"),
            "detector_channels": self.cfg.detector_channels,
            "clip_activation": self.cfg.colour_clip_activation,
            "clip_precision": precision,
            "device": str(device),
            "minus_ten": self.cfg.minus_ten,
            "n_dropped_minus_ten": dropped,
            "images_per_prompt": 1,
            "n_images": len(judged),
            "n_prompts": len(prompts),
            "partial": len(prompts) < prompt_sets.OFFICIAL[PROMPT_SET].lines,
            "images": [{"index": i, **j} for i, j in enumerate(judged)][:MAX_LISTED],
        }

