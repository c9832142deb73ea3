"""The GenEval suite (djghosh13/geneval; PROTOCOLS.md "GenEval").

553 prompts from the official `evaluation_metadata.jsonl`, 4 images per prompt, the official
thresholds and rules (rtdmd_bench/geneval/rules.py) and summary_scores.py's figures. The colour CLIP
is OpenAI's ViT-L/14 with QuickGELU, as GenEval's own scorer builds it, whatever the weights'
source; it runs under fp16 autocast on CUDA (fp32 on the CPU), recorded in the result. The
detector is transformers' Mask2Former Swin-S COCO instance model, not the official mmdet one, so
results are versioned "geneval/transformers-m2f-2" and carry a note saying so. With the tiny
random stand-in models the suite is named "geneval[stand-in]" and is never reported under the
official name.
With `scorer="official"` GenEval's own code scores the images in the user's environment instead
(suites/geneval_official.py): "geneval[official]", version "geneval/official-mmdet-1".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.models import (DETECTOR_HUB_ID, ClipActivation, ClipPrecision, ModelSource,
                                        build_colour_classifier, build_detector, resolve_clip_precision)
from rtdmd_bench.geneval.rules import (OFFICIAL, TAGS, ColourFn, Detection, aggregate, evaluate_image,
                                       select_detections)
from rtdmd_bench.ranges import NonNegativeInt, PositiveInt
from suites import prompt_sets
from suites.geneval_official import OfficialScorer, score_official

# -2: QuickGELU colour CLIP from any source, PIL-exact crop transform, float32 thresholds,
# summary_scores.py's figures (correct_images, correct_prompts).
VERSION = "geneval/transformers-m2f-2"
STAND_IN_VERSION = "geneval/stand-in-2"
COLOUR_CLIP_ACTIVATION: ClipActivation = "quick_gelu"  # GenEval's scorer (open_clip 2.20, "openai")
NOTE = ("GenEval rules and thresholds as in djghosh13/geneval; detector = transformers "
        f"Mask2Former ({DETECTOR_HUB_ID}) with mmdet-style instance post-processing instead of the "
        "official mmdet model, so scores are not directly comparable with published GenEval numbers")
STAND_IN_NOTE = ("STAND-IN: tiny randomly initialised Mask2Former and CLIP; these numbers test the code "
                 "path only and are not GenEval scores")


class GenEval:
    """GenEval: object, counting, colour, position and attribute-binding accuracy (4 images/prompt)."""

    @dataclass
    class Config:
        prompts: str = ""
        """Path to GenEval's evaluation_metadata.jsonl; empty = checksum-verified cached download."""
        models: ModelSource = "official"
        """"official": Mask2Former Swin-S COCO + OpenAI CLIP ViT-L/14; "stand-in": tiny random
        models (CI), reported as "geneval[stand-in]"."""
        detector_path: str = ""
        """Local folder of the Mask2Former checkpoint; empty = hub id facebook/mask2former-swin-small-coco-instance."""
        clip_path: str = ""
        """Local OpenAI CLIP ViT-L/14 checkpoint file for open_clip; empty = open_clip's "openai" weights from the hub."""
        allow_download: bool = True
        """Let transformers/open_clip fetch missing weights from the hub (HF_HUB_OFFLINE still applies)."""
        batch_size: PositiveInt = 4
        """Images per detector forward (scores do not depend on it)."""
        device: str = "auto"
        """Where the detector and colour CLIP run: "auto" = CUDA when available, else CPU; or a
        torch device string ("cpu", "cuda:1")."""
        clip_precision: ClipPrecision = "auto"
        """Colour CLIP compute: "auto" = fp16 autocast on CUDA as the official scorer
        (clip_benchmark amp=True), fp32 on the CPU; "fp32" forces fp32; "fp16-autocast" needs CUDA."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts (0 = all 553); a result with a limit is marked partial."""
        stand_in_seed: int = 0
        """Seed of the stand-in models' random initialisation (not a sampling seed)."""
        scorer: Literal["transformers", "official"] = "transformers"
        """"transformers": score in this process with the detector above; "official": run GenEval's own
        evaluate_images.py + summary_scores.py in the environment named by `official` (suites/geneval_official.py),
        reported as "geneval[official]", version geneval/official-mmdet-1."""
        official: OfficialScorer.Config = field(default_factory=OfficialScorer.Config)
        """Where GenEval's own scorer lives (python, checkout, detector folder); used when scorer="official"."""

    name = "geneval"
    version = VERSION
    images_per_prompt = 4
    higher_is_better = {**{t: True for t in TAGS}, "overall": True, "correct_images": True,
                        "correct_prompts": True, "prompts_all_images_correct": True}

    def __init__(self, cfg: "GenEval.Config | None" = None, detector: Any = None, colour_fn: ColourFn | None = None):
        """`detector` (with `detect(images) -> list[list[Detection]]`) and `colour_fn` may be
        injected (tests, agreement studies); injected models count as stand-ins."""
        self.cfg = cfg or GenEval.Config()
        self.stand_in = self.cfg.models == "stand-in" or detector is not None or colour_fn is not None
        if self.stand_in:
            self.name, self.version = "geneval[stand-in]", STAND_IN_VERSION
        self._detector, self._colour_fn = detector, colour_fn
        self._rows: list[dict[str, Any]] | None = None
        self.official: OfficialScorer | None = None
        if self.cfg.scorer == "official":  # checks its python, checkout and detector now, before any generation
            if self.stand_in:
                raise UserError("suite.scorer=official runs GenEval's own models: drop suite.models=stand-in")
            self.official = OfficialScorer(self.cfg.official)
            self.name, self.version = self.official.name, self.official.version

    def metadata(self) -> list[dict[str, Any]]:
        """One GenEval metadata dict per prompt, aligned with `prompts()`."""
        if self._rows is None:
            rows = prompt_sets.load_geneval(prompt_sets.resolve("geneval", self.cfg.prompts))
            self._rows = rows[: self.cfg.limit] if self.cfg.limit > 0 else rows
        return self._rows

    def prompts(self) -> list[str]:
        return [row["prompt"] for row in self.metadata()]

    def prepare(self) -> None:
        """Before any image is generated: the detector and colour CLIP loaded (GenEval's own scorer,
        scorer=official, was checked when the suite was built) and the device settings checked."""
        if self.official is None:
            resolve_clip_precision(self.cfg.clip_precision, self.device().type)
            self.models()

    def models(self) -> tuple[Any, ColourFn]:
        """(detector, colour classifier), built on first use (rtdmd_bench/geneval/models.py); the
        colour CLIP always with QuickGELU, as GenEval's scorer builds it."""
        c = self.cfg
        if self._detector is None:
            self._detector = build_detector(c.models, c.detector_path, c.allow_download, c.batch_size, c.stand_in_seed)
        if self._colour_fn is None:
            self._colour_fn = build_colour_classifier(c.models, c.clip_path, c.allow_download, c.stand_in_seed,
                                                      COLOUR_CLIP_ACTIVATION, c.clip_precision)
        return self._detector, self._colour_fn

    def device(self) -> torch.device:
        """The device the models run on (config `device`)."""
        if self.cfg.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.cfg.device)
        except RuntimeError as err:
            raise UserError(f"suite.device={self.cfg.device!r} is not a torch device "
                            f"(use 'auto', 'cpu', 'cuda' or 'cuda:N')") from err

    def judge(self, images: Tensor, rows: Sequence[dict[str, Any]]) -> list[tuple[bool, str]]:
        """(correct, reason) per image; images (N, 3, H, W) in [0, 1] with rows aligned."""
        detector, colour_fn = self.models()
        return [evaluate_image(image, detected, row, colour_fn, OFFICIAL)
                for image, detected, row in selected_detections(images, rows, detector, self.cfg.batch_size,
                                                                self.device())]

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        """summary_scores.py's figures (see `aggregate`): per-tag image accuracy, overall (their
        unweighted mean), correct_images, correct_prompts (ANY image correct), plus
        prompts_all_images_correct. `prompts` must be this suite's prompts, in order."""
        rows = self.metadata()
        k = self.images_per_prompt
        if list(prompts) != [r["prompt"] for r in rows[: len(prompts)]]:
            raise UserError("GenEval images must come in the order of the suite's prompts() (prompt-major)")
        if images.shape[0] != len(prompts) * k:
            raise UserError(f"GenEval needs {k} images per prompt: got {images.shape[0]} for {len(prompts)} prompts")
        if self.official is not None:
            return score_official(self.official, images, rows[: len(prompts)], k)
        device = self.device()
        precision = resolve_clip_precision(self.cfg.clip_precision, device.type)  # refuse a bad setting first
        per_image_rows = [rows[i // k] for i in range(len(images))]
        judged = self.judge(images, per_image_rows)
        # summary_scores.py groups images into prompts by their metadata JSON string.
        metrics = aggregate([r["tag"] for r in per_image_rows], [ok for ok, _ in judged],
                            [json.dumps(r) for r in per_image_rows])
        return {
            **metrics,
            "suite": self.name,
            "version": self.version,
            "note": STAND_IN_NOTE if self.stand_in else NOTE,
            "device": str(device),
            "clip_precision": precision,
            "clip_activation": COLOUR_CLIP_ACTIVATION,
            "images_per_prompt": k,
            "n_images": len(images),
            "n_prompts": len(prompts),
            "partial": len(prompts) < prompt_sets.OFFICIAL["geneval"].lines,
            "failures": [{"index": i, "prompt": per_image_rows[i]["prompt"], "reason": reason}
                         for i, (ok, reason) in enumerate(judged) if not ok][:50],
        }


def selected_detections(images: Tensor, rows: Sequence[dict[str, Any]], detector: Any, batch_size: int,
                        device: torch.device, swap_channels: bool = False
                        ) -> Iterator[tuple[Tensor, dict[str, list[Detection]], dict[str, Any]]]:
    """Per image: (the image quantised to 8 bits on `device`, (3, H, W) RGB in [0, 1]; its
    detections after GenEval's selection for its row's tag; its row). The detector sees
    `batch_size` images at a time, with the channels in BGR order when `swap_channels` (what
    mmdet's network sees when handed an RGB array, as RTDMD does: suites/geneval_rtdmd.py).
    images: (N, 3, H, W) in [0, 1]; rows aligned with them."""
    # The official pipeline reads 8-bit PNGs: quantise so scores match saved samples.
    images = (images.float().clamp(0, 1) * 255).round().to(device) / 255
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]  # (B, 3, H, W)
        seen = chunk.flip(1) if swap_channels else chunk  # RGB -> BGR along the channel axis
        for image, dets, row in zip(chunk, detector.detect(seen), rows[start:start + len(chunk)]):
            yield image, select_detections(dets, row["tag"], OFFICIAL), row


def write_official_layout(images: Tensor, rows: Sequence[dict[str, Any]], folder: str | Path) -> Path:
    """Write samples in GenEval's reference layout `<dir>/<idx:05d>/metadata.jsonl` +
    `samples/NNNN.png` (8-bit PNG), so the official mmdet evaluator can score the same
    images (agreement studies). images: (P * k, 3, H, W) in [0, 1], prompt-major."""
    folder = Path(folder)
    k = images.shape[0] // max(len(rows), 1)
    if k * len(rows) != images.shape[0]:
        raise UserError(f"{images.shape[0]} images do not split evenly over {len(rows)} prompts")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, row in enumerate(rows):
        samples = folder / f"{i:05d}" / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
        for j in range(k):
            Image.fromarray(pixels[i * k + j]).save(samples / f"{j:04d}.png")
    return folder


def read_official_layout(folder: str | Path) -> tuple[Tensor, list[dict[str, Any]]]:
    """Inverse of `write_official_layout`: (images (P * k, 3, H, W) in [0, 1], rows); every
    prompt folder must hold the same number k of same-sized samples."""
    folder = Path(folder)
    prompt_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file())
    if not prompt_dirs:
        raise UserError(f"{folder} has no <idx>/metadata.jsonl folders (GenEval reference layout)")
    rows, images = [], []
    for d in prompt_dirs:
        rows.append(json.loads((d / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[0]))
        files = sorted((d / "samples").glob("*.png"))
        if len(files) != len(sorted((prompt_dirs[0] / "samples").glob("*.png"))):
            raise UserError(f"{d} has {len(files)} samples; every prompt needs the same number")
        for f in files:
            arr = np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(images), rows
