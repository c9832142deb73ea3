"""The OCR suite: RTDMD's text-rendering metric on its ocr/test.txt (Harahan/RTDMD at 6c3cb03).

One image per line of `dataset/ocr/test.txt` (1018 prompts, each quoting the text the image must
show), seed 42. Per image, PaddleOCR 2.9.1 reads the image as RTDMD's `OcrScorer` does (English
models, drop score 0.5, CPU, the RGB array where PaddleOCR expects BGR) and the score is
1 - min(Levenshtein, len)/len between the prompt's first straight-quoted span and the texts read
(rtdmd_bench/rewards/ocr_text.py says exactly which texts, spaces and case); the suite reports
their mean over images, as RTDMD's evaluation does.

PaddleOCR runs in an environment the user names (rtdmd_bench/rewards/ocr.py: field `python` or
$RTDMD_BENCH_OCR_PYTHON, model folder `local_path` or $RTDMD_BENCH_OCR_PATH), checked when the suite
is built, before any image is generated. Results are named "ocr", versioned
"ocr/paddleocr-2.9.1-rgb-1" ("-bgr-" with channel_order=bgr); with the test stand-in environment
(models=stand-in) they are "ocr[stand-in]", version "ocr/stand-in-<order>-1", never the real name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import NonNegativeInt
from rtdmd_bench.rewards.ocr import EngineConfig, PaddleOCREngine
from rtdmd_bench.rewards.ocr_text import normalise, ocr_score, recognised_text, target_text
from suites import prompt_sets
from suites.preference import seed_record

SCORING = ("target = the text between the prompt's first two straight double quotes; read = the texts of the "
           "detections with confidence > 0 (PaddleOCR drops those < 0.5) joined without separator in PaddleOCR's "
           "order; both without ASCII spaces and lower-cased; score = 1 - min(d, len(target)) / len(target), d = 0 "
           "when the target is a substring of the read text, else their Levenshtein distance; an image PaddleOCR "
           "fails on scores 0; mean over images")
STAND_IN_NOTE = ("STAND-IN: a test environment whose fake paddleocr reads text encoded in the pixels; these numbers "
                 "test the code path only and are not OCR scores")
MAX_LISTED = 50  # per-image reads and errors kept in the result


class OCRSuite:
    """Mean OCR score (RTDMD's metric) over RTDMD's ocr/test.txt, one image per prompt."""

    @dataclass
    class Config(EngineConfig):
        prompts: str = ""
        """Prompt file (.txt, one prompt per line, each quoting its target text); empty = RTDMD's
        dataset/ocr/test.txt (1018 prompts, verified download)."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts (0 = all); a result with fewer than the official 1018 is marked partial."""
        seed: int = 42
        """Sampling seed of the protocol (RTDMD: 42)."""

    images_per_prompt = 1
    higher_is_better = {"ocr": True}

    def __init__(self, cfg: "OCRSuite.Config | None" = None):
        self.cfg = cfg or OCRSuite.Config()
        self.seed = self.cfg.seed
        self._prompts: list[str] | None = None
        self.engine = PaddleOCREngine(self.cfg)  # checks the environment before anything is generated
        self.name = "ocr[stand-in]" if self.engine.stand_in else "ocr"
        self.version = self.engine.version

    def prepare(self) -> None:
        """Nothing more before generation: the OCR environment was checked when the suite was built."""

    def prompts(self) -> list[str]:
        """The prompt lines, each checked to quote a target RTDMD can score."""
        if self._prompts is None:
            path = prompt_sets.resolve("ocr", self.cfg.prompts)
            prompts = prompt_sets.load_prompts(path)
            prompts = prompts[: self.cfg.limit] if self.cfg.limit > 0 else prompts
            for n, prompt in enumerate(prompts, 1):
                try:
                    target_text(prompt)
                except UserError as err:
                    raise UserError(f"{path}, prompt {n}: {err}") from None
            self._prompts = prompts
        return self._prompts

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        if images.shape[0] != len(prompts):
            raise UserError(f"{self.name}: one image per prompt; got {images.shape[0]} images for {len(prompts)} prompts")
        if not prompts:
            raise UserError(f"{self.name}: no prompts to score")
        targets = [target_text(p) for p in prompts]
        reads = self.engine.read(images)
        seen = [recognised_text(r.lines) for r in reads]
        scores = [0.0 if r.error is not None else ocr_score(s, t) for r, s, t in zip(reads, seen, targets)]
        errors = [{"index": i, "prompt": prompts[i], "error": r.error} for i, r in enumerate(reads) if r.error]
        record = seed_record(self.seed, ctx)
        notes = [STAND_IN_NOTE if self.engine.stand_in else "", record.pop("seed_note", "")]
        return {
            "ocr": sum(scores) / len(scores),
            "suite": self.name,
            "version": self.version,
            "note": "; ".join(n for n in notes if n),
            **record,
            "images_per_prompt": 1,
            "n_prompts": len(prompts),
            "n_images": len(scores),
            "partial": len(prompts) < prompt_sets.OFFICIAL["ocr"].lines,
            "scoring": SCORING,
            "engine": self.engine.provenance(),
            "n_errors": len(errors),
            "errors": errors[:MAX_LISTED],
            "reads": [{"index": i, "target": normalise(t), "read": normalise(s), "score": v}
                      for i, (t, s, v) in enumerate(zip(targets, seen, scores))][:MAX_LISTED],
        }
