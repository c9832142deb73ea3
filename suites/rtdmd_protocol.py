"""RTDMD's evaluation protocol as named suites (Harahan/RTDMD at 6c3cb03: scripts/inference.sh,
rtdmd/inference.py, configs/inference/*.yaml, rtdmd/rewards/multi_scorer.py).

RTDMD's published tables (its README's SD3-M table = paper Table 1, FLUX.2 4B = Table 2) were
scored by its own evaluation code, which differs from the original benchmarks. The protocol suites
compute those columns and are never named like the benchmarks:

| suite | RTDMD file | columns (metric keys) | scored by |
|---|---|---|---|
| rtdmd-drawbench | drawbench/test.txt (200 prompts x5, shuffled) | clipscore, aesthetic, pickscore (raw), hpsv21, imagereward | `drawbench` |
| rtdmd-geneval | geneval/test_metadata.jsonl (553 x4, shuffled) | geneval_rtdmd (partial credit), accuracy, ... | `geneval-rtdmd` |
| rtdmd-geneval2 | geneval2/test.jsonl (800) | geneval2 (fp16 judge, a fraction) | `geneval2`, form rtdmd |
| rtdmd-ocr | ocr/test.txt (1018) | ocr | `ocr` |
| rtdmd-hpsv3 | hpsv3/test.txt (1024) | hpsv3 (mean mu) | `hpsv3` |

`rtdmd-bench eval --suite rtdmd` runs the five in RTDMD's dataset order. Every suite applies the
protocol around the suite that scores it:
- lines: one image per line of RTDMD's file, duplicates counted again, the mean over images;
  variant "64" keeps the first 64 lines (the released inference script, `num_media_images`),
  "full" the whole file (the training-time evaluation); the README does not say which produced the
  tables, so the variant is in the suite's name (rtdmd-64-drawbench, rtdmd-full-drawbench);
- sampler: 4 CPS steps, eta 0.9, guidance 1 (hard-coded in RTDMD's distilled loop), seed 42, for a
  run's student; a teacher keeps the sampler the user chose, at guidance 1 unless one is given;
- resolution: 1024 px on every real base (also those trained at 512); tiny stand-in bases keep
  their size (recorded);
- pixels: RTDMD rounds its bf16 decode to uint8 in bf16 (`to_uint8_bf16`); every scorer then sees
  those uint8 levels (its own resize afterwards);
- noise: RTDMD draws from one CUDA stream per rank, so its exact images depend on the GPU count,
  batch size and every image made before; the suite keeps its per-(seed, line, image) noise. Results
  agree with RTDMD's in distribution, not image by image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.prompt_files import RTDMD_COMMIT
from rtdmd_bench.ranges import NonNegative, NonNegativeInt
from rtdmd_bench.rewards.pixels import to_uint8_bf16
from suites import prompt_sets
from suites.geneval2 import GenEval2Suite
from suites.geneval_rtdmd import GenEvalRTDMD
from suites.hpsv3 import HPSv3Suite
from suites.ocr import OCRSuite
from suites.preference import DrawBench

Variant = Literal["64", "full"]
VERSION = "rtdmd-protocol-1"
FIRST_LINES = 64  # rtdmd/inference.py: num_media_images
STEPS, ETA, GUIDANCE, SEED, RESOLUTION = 4, 0.9, 1.0, 42, 1024
MAX_BATCH = 64
NOISE_NOTE = ("RTDMD's images come from one CUDA noise stream per rank (seed 42 + rank), so they depend on the GPU "
              "count, the batch of 4 and every image generated before; this suite draws each line's noise from "
              "(seed, line, image): the same distribution, not the same images")
SOURCE = f"Harahan/RTDMD {RTDMD_COMMIT[:7]}: rtdmd/inference.py, configs/inference/*.yaml, rtdmd/rewards/multi_scorer.py"


def batch_for_memory(budget_gb: float, weights_gb: float, per_item_gb: float, cap: int = MAX_BATCH) -> int:
    """Items per scorer call that fit `budget_gb` of device memory beside the scorer's weights,
    between 1 and `cap`."""
    if budget_gb <= weights_gb:
        return 1
    return max(1, min(cap, int((budget_gb - weights_gb) // per_item_gb)))


@dataclass
class ProtocolConfig:
    variant: Variant = "64"
    """"64": the first 64 lines of RTDMD's file (its released inference script, default); "full": the
    whole file (its training-time evaluation). Part of the suite's name."""
    resolution: NonNegativeInt = RESOLUTION
    """Image side on real bases (RTDMD: 1024 for every base; its training-time evaluation of FLUX.2 4B
    used 512). 0 = the base's own size. Tiny stand-in bases keep theirs."""
    quantise: Literal["bf16", "fp32"] = "bf16"
    """uint8 rounding before the scorers: "bf16" = RTDMD's (x * 255 in bf16, then round); "fp32" = the
    scorers' own rounding of the float images (one level apart on about a quarter of the pixels)."""
    models: Literal["official", "stand-in"] = "official"
    """"official": the real scorers; "stand-in": tiny random scorers of the same classes (tests/CI),
    named [stand-in], never reported as the column."""
    memory_gb: NonNegative = 60.0
    """Device memory a heavy scorer may use: sets the batch sizes of scorers whose scores do not
    depend on them (DrawBench's five, HPSv3, the GenEval detector) from estimated per-item figures
    (docs/rtdmd_protocol.md) unless `scoring` sets one; 0 = the scorers' own batch sizes. GenEval2
    keeps RTDMD's one atom per call."""


class RTDMDProtocolSuite:
    """One RTDMD column group: the scoring suite `inner` run under RTDMD's protocol (module docstring)."""

    Config = ProtocolConfig
    column = ""
    inner: type = object  # the suite that scores (its Config is the `scoring` field)
    prompt_set = ""  # prompt_sets.OFFICIAL key of RTDMD's file
    fixed: dict[str, Any] = {}  # scoring fields the protocol sets (RTDMD's values)
    stand_in: dict[str, Any] = {}  # scoring fields that select the stand-in scorers
    memory: tuple[float, float, tuple[str, ...]] | None = None  # weights GB, GB per item, batch fields
    images_per_prompt = 1
    seed = SEED

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg or self.Config()
        if self.cfg.variant not in ("64", "full"):
            raise UserError(f"suite {self.registry_name()}: variant must be 64 or full, got {self.cfg.variant!r}")
        if self.cfg.resolution < 0:
            raise UserError(f"suite {self.registry_name()}: resolution must be >= 0, got {self.cfg.resolution}")
        self.resolution = self.cfg.resolution
        self.inner_suite = self.inner(self.scoring_config())
        self._prompt_file: dict[str, Any] | None = None
        self.name = self.protocol_name()
        self.version = f"{VERSION}/{self.cfg.variant}/{self.cfg.quantise}-uint8/{self.inner_suite.version}"

    @classmethod
    def registry_name(cls) -> str:
        return f"rtdmd-{cls.column}"

    def scoring_config(self) -> Any:
        """The scoring suite's config: the user's `scoring` fields, RTDMD's lines and seed, the fields
        the protocol fixes (set by the user to anything else: an error), stand-ins, batch sizes."""
        cfg, default = self.cfg.scoring, type(self.cfg.scoring)()
        fixed = {"limit": FIRST_LINES if self.cfg.variant == "64" else 0, "seed": SEED, **self.fixed}
        for key in fixed:
            if getattr(cfg, key) != getattr(default, key):
                raise UserError(f"suite {self.registry_name()}: the RTDMD protocol sets scoring.{key}; "
                                "use suite.variant (64 or full) for the lines, or the scoring suite itself for "
                                "another setting")
        changes = {**fixed, **(self.stand_in if self.cfg.models == "stand-in" else {})}
        if self.memory and self.cfg.memory_gb > 0:
            weights, per_item, fields = self.memory
            n = batch_for_memory(self.cfg.memory_gb, weights, per_item)
            changes.update({f: n for f in fields if _get_path(cfg, f) == _get_path(default, f)})
        return _replace_path(cfg, changes)

    def protocol_name(self) -> str:
        inner = self.inner_suite.name
        tags = inner[inner.index("[") + 1:-1].split(",") if "[" in inner else []
        tags = [t for t in tags if t != "rtdmd"]  # the form is the protocol's own
        if self.cfg.quantise != "bf16":
            tags.append("fp32-uint8")
        if self._prompt_file is not None and not self._prompt_file["official"]:
            tags.append("own prompts")
        return f"rtdmd-{self.cfg.variant}-{self.column}" + (f"[{','.join(tags)}]" if tags else "")

    def prepare(self) -> None:
        """The scoring suite's own check before generation (models loaded, or the heavy judges' files found)."""
        self.inner_suite.prepare()

    def prompts(self) -> list[str]:
        prompts = list(self.inner_suite.prompts())
        if self._prompt_file is None:
            path = prompt_sets.resolve(self.prompt_set, self.cfg.scoring.prompts)
            official = prompt_sets.OFFICIAL[self.prompt_set]
            digest = prompt_sets.sha256_of(path)
            self._prompt_file = {"path": str(path), "sha256": digest, "official": digest == official.sha256,
                                 "rtdmd_file": official.url}
            self.name = self.protocol_name()
        return prompts

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return dict(self.inner_suite.higher_is_better)

    def sampler(self, spec: Any) -> Any:
        """RTDMD's sampler for a run's student (4 CPS steps, eta 0.9); a teacher keeps the user's
        sampler, at RTDMD's guidance 1 unless a scale was given (RTDMD's teacher rows' settings are not
        in its code)."""
        if spec.role == "student":
            return dataclasses.replace(spec, kind="cps", num_steps=STEPS, eta=ETA)
        return spec if spec.cfg is not None else dataclasses.replace(spec, cfg=GUIDANCE)

    def describe(self) -> dict[str, Any]:
        return {
            "protocol": "rtdmd", "variant": f"rtdmd-{self.cfg.variant}", "version": VERSION, "source": SOURCE,
            "lines": "first 64" if self.cfg.variant == "64" else "all",
            "resolution": self.resolution or "the base's own",
            "sampler": f"student: {STEPS} CPS steps, eta {ETA}, guidance {GUIDANCE}; seed {SEED}",
            "uint8": {"bf16": "RTDMD's: bf16(x) * 255 rounded half to even",
                      "fp32": "the scorers' own fp32 rounding (not RTDMD's)"}[self.cfg.quantise],
            "prompt_file": self._prompt_file, "scored_by": self.inner_suite.name, "noise": NOISE_NOTE,
        }

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        if self.cfg.quantise == "bf16":  # scorers re-round these levels to the same uint8 values
            images = to_uint8_bf16(images).float() / 255
        out = self.inner_suite.score(images, prompts, ctx)
        self.name = self.protocol_name()  # the scorer may have turned out to be a stand-in
        scored = {"suite": out.get("suite", self.inner_suite.name), "version": out.get("version", self.inner_suite.version)}
        return {**out, "suite": self.name, "version": self.version, "rtdmd_protocol": self.describe(),
                "scoring_suite": scored}

    def release(self) -> int:
        """Free the scoring suite's heavy models (one heavy scorer in memory at a time)."""
        release = getattr(self.inner_suite, "release", None)
        return int(release() or 0) if release is not None else 0


def _get_path(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _replace_path(cfg: Any, changes: dict[str, Any]) -> Any:
    """dataclasses.replace with dotted keys into nested dataclasses ("hpsv3.batch_size")."""
    flat = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if "." in key:
            head, rest = key.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, sub in nested.items():
        flat[head] = _replace_path(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **flat)


class RTDMDDrawBench(RTDMDProtocolSuite):
    """RTDMD protocol: CLIPScore, Aesthetic, PickScore (raw, as the tables), HPSv2.1, ImageReward on its
    drawbench/test.txt, each scorer fed as RTDMD's MultiScorer feeds it, in float32."""

    @dataclass
    class Config(ProtocolConfig):
        scoring: DrawBench.Config = field(default_factory=DrawBench.Config)
        """The `drawbench` suite's settings (scorer weights are the rewards' own; device, batch_size)."""

    column, inner, prompt_set = "drawbench", DrawBench, "drawbench"
    fixed = {"scorer_inputs": "rtdmd", "precision": "float32"}
    stand_in = {"scorers": ("tiny-clipscore", "tiny-aesthetic", "tiny-pickscore", "tiny-hpsv21", "tiny-imagereward")}
    memory = (13.2, 0.1, ("batch_size",))  # CLIP-L x2, CLIP-H x2, BLIP in fp32; ~0.1 GB per 224 px image


class RTDMDGenEval(RTDMDProtocolSuite):
    """RTDMD protocol: its GenEval column, partial credit per image (geneval-rtdmd), on its
    geneval/test_metadata.jsonl."""

    @dataclass
    class Config(ProtocolConfig):
        scoring: GenEvalRTDMD.Config = field(default_factory=GenEvalRTDMD.Config)
        """The `geneval-rtdmd` suite's settings (detector/CLIP paths, colour activation, detector channels)."""

    column, inner, prompt_set = "geneval", GenEvalRTDMD, "geneval-rtdmd"
    stand_in = {"models": "stand-in"}
    memory = (2.0, 0.5, ("batch_size",))  # Mask2Former Swin-S + CLIP-L; ~0.5 GB per 800 px detector input


class RTDMDGenEval2(RTDMDProtocolSuite):
    """RTDMD protocol: its GenEval2 column (fp16 Qwen3-VL judge, soft-TIFA GM, a fraction)."""

    @dataclass
    class Config(ProtocolConfig):
        scoring: GenEval2Suite.Config = field(default_factory=GenEval2Suite.Config)
        """The `geneval2` suite's settings (judge folder, device); its form is RTDMD's."""

    column, inner, prompt_set = "geneval2", GenEval2Suite, "geneval2"
    fixed = {"form": "rtdmd"}
    stand_in = {"models": "stand-in"}


class RTDMDOCR(RTDMDProtocolSuite):
    """RTDMD protocol: its OCR column (PaddleOCR 2.9.1 in a user-named environment)."""

    @dataclass
    class Config(ProtocolConfig):
        scoring: OCRSuite.Config = field(default_factory=OCRSuite.Config)
        """The `ocr` suite's settings (the OCR environment's python and model folder, channel order)."""

    column, inner, prompt_set = "ocr", OCRSuite, "ocr"
    stand_in = {"models": "stand-in"}


class RTDMDHPSv3(RTDMDProtocolSuite):
    """RTDMD protocol: its HPSv3 column (mean mu) on its hpsv3/test.txt."""

    @dataclass
    class Config(ProtocolConfig):
        scoring: HPSv3Suite.Config = field(default_factory=HPSv3Suite.Config)
        """The `hpsv3` suite's settings (weights folder, dtype, device)."""

    column, inner, prompt_set = "hpsv3", HPSv3Suite, "hpsv3"
    stand_in = {"models": "stand-in"}
    memory = (16.6, 0.25, ("batch_size", "hpsv3.batch_size"))  # Qwen2-VL-7B bf16; ~900 tokens per image
