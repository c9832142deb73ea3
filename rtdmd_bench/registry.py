"""Name -> lazy "module:Attr" registries for methods, bases, suites and rewards.

Listing never imports model code: each entry is a string plus a one-line description.
`resolve(kind, name)` imports on demand and checks the object is a class with a nested
`Config` dataclass. Out-of-tree plugins register through the entry-point groups
`rtdmd_bench.methods`, `rtdmd_bench.suites`, `rtdmd_bench.bases`, `rtdmd_bench.rewards`
(value "module:Attr"; the description is taken from the object's docstring on resolve, and
from the entry-point name until then).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any


class UnknownName(KeyError):
    """An unknown method/base/suite/reward name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    target: str  # "module:Attr"
    summary: str  # one line for `rtdmd-bench list`


KINDS = ("methods", "bases", "suites", "rewards")

METHODS: dict[str, Entry] = {
    "dmd2": Entry("methods.dmd2:DMD2", "DMD2: fake-score TTUR, backward simulation, normalised DM gradient (paper + official code)"),
    "acdmd": Entry("methods.acdmd:ACDMD", "AC-DMD: RTDMD stage 1, sub-interval ambient targets + consistency regulariser"),
    "rtdmd": Entry("methods.rtdmd:RTDMD", "RTDMD: AC-DMD stage 1, then hybrid GRPO + reward backprop with SubGRPO"),
    "dmd-rl": Entry("methods.dmd_rl:DMDRL", "naive DMD + RL sum (DMDR-like); RL form backprop | grpo"),
    "gdmd": Entry("methods.gdmd:GDMD", "GDMD-style: rewards score DMD implicit targets (suite definition)"),
    "gndm": Entry("methods.gndm:GNDM", "GNDM: group-normalised distribution-matching reward R_dm + PPO (suite definition)"),
    "gndmr": Entry("methods.gndm:GNDMR", "GNDMR: GNDM + adaptive combination with external rewards (suite definition)"),
}

BASES: dict[str, Entry] = {
    "toy2d": Entry("rtdmd_bench.bases.toy2d:Toy2D", "2-D Gaussian-mixture teacher with exact velocity and exact tilted target (CPU, seconds)"),
    "toy2d-hard": Entry("rtdmd_bench.bases.toy2d:Toy2DHard", "harder 2-D mixture (unequal, close modes) for mode-coverage comparisons"),
    "digits": Entry("rtdmd_bench.bases.digits:Digits", "8x8 handwritten digits: trained flow teacher + classifier, cached (CPU, minutes)"),
    "shapes": Entry("rtdmd_bench.bases.shapes:Shapes", "24x24 coloured shapes, GenEval-style prompts: trained flow teacher, cached (CPU, minutes)"),
    "tiny-sd3": Entry("rtdmd_bench.bases.diffusers_sd3:TinySD3", "real SD3 diffusers classes, tiny random config (CPU tests of the real path)"),
    "tiny-flux2": Entry("rtdmd_bench.bases.diffusers_flux2:TinyFlux2", "real FLUX.2-klein diffusers classes, tiny random config (CPU tests)"),
    "sd3": Entry("rtdmd_bench.bases.diffusers_sd3:SD3", "Stable Diffusion 3 medium (stabilityai/stable-diffusion-3-medium-diffusers), GPU"),
    "sd35m": Entry("rtdmd_bench.bases.diffusers_sd3:SD35M", "Stable Diffusion 3.5 medium (stabilityai/stable-diffusion-3.5-medium), GPU"),
    "sd35l": Entry("rtdmd_bench.bases.diffusers_sd3:SD35L", "Stable Diffusion 3.5 large (stabilityai/stable-diffusion-3.5-large), GPU"),
    "flux2-4b": Entry("rtdmd_bench.bases.diffusers_flux2:Flux2Klein4B", "FLUX.2-klein 4B (teacher/fake: -base-4B, generator: -4B), GPU"),
    "flux2-9b": Entry("rtdmd_bench.bases.diffusers_flux2:Flux2Klein9B", "FLUX.2-klein 9B (teacher/fake: -base-9B, generator: -9B), GPU"),
    "flux1-dev": Entry("rtdmd_bench.bases.diffusers_flux1:Flux1Dev", "FLUX.1-dev (guidance embedding instead of CFG), GPU"),
}

SUITES: dict[str, Entry] = {
    "toy-tilt": Entry("suites.toy_tilt:ToyTilt", "toy2d: KL/MMD/energy distance to the exact tilted target and teacher, reward, mode mass"),
    "digits": Entry("suites.digits:DigitsSuite", "digits: class accuracy, rewards, FID/FID-T on classifier features, diversity"),
    "shapes-geneval": Entry("suites.shapes:ShapesGenEval", "shapes: GenEval per-tag/overall accuracy (rule-based detector + GenEval rules), rewards, FID/FID-T, diversity"),
    "geneval": Entry("suites.geneval:GenEval", "GenEval 553 prompts x4: official rules, transformers Mask2Former detector (versioned apart)"),
    "geneval-rtdmd": Entry("suites.geneval_rtdmd:GenEvalRTDMD", "RTDMD's GenEval column: partial credit per line of its test_metadata.jsonl (2212 lines), GELU colour CLIP, swapped detector channels"),
    "hpsv2": Entry("suites.preference:HPSv2Suite", "HPSv2 benchmark: 4 styles, HPSv2.1 by default, x100"),
    "imagereward": Entry("suites.preference:ImageRewardSuite", "ImageReward mean on DrawBench (1 image/prompt, seed 42)"),
    "pickscore": Entry("suites.preference:PickScoreSuite", "PickScore v1 mean on RTDMD's PickScore test prompts"),
    "aesthetic": Entry("suites.preference:AestheticSuite", "LAION aesthetic v2 mean on DrawBench"),
    "clipscore": Entry("suites.preference:ClipScoreSuite", "CLIPScore mean on DrawBench (convention recorded)"),
    "geneval2": Entry("suites.geneval2:GenEval2Suite", "GenEval2 800 prompts x1: Soft-TIFA GM, Qwen3-VL-8B judge; official (bf16, x100) or RTDMD's form (fp16, fraction)"),
    "drawbench": Entry("suites.preference:DrawBench", "RTDMD DrawBench protocol: CLIP, Aesthetic, PickScore, HPSv2.1, ImageReward at once"),
    "ocr": Entry("suites.ocr:OCRSuite", "RTDMD's OCR metric on its ocr/test.txt: PaddleOCR 2.9.1 in a user-named environment, 1 - edit distance"),
    "hpsv3": Entry("suites.hpsv3:HPSv3Suite", "HPSv3 mean mu on RTDMD's hpsv3/test.txt (1 image/prompt, seed 42)"),
    "rtdmd-drawbench": Entry("suites.rtdmd_protocol:RTDMDDrawBench", "RTDMD protocol (rtdmd-64 / rtdmd-full): CLIPScore, Aesthetic, PickScore (raw), HPSv2.1, ImageReward on its drawbench/test.txt"),
    "rtdmd-geneval": Entry("suites.rtdmd_protocol:RTDMDGenEval", "RTDMD protocol: its GenEval column (partial credit, geneval-rtdmd) on its geneval/test_metadata.jsonl"),
    "rtdmd-geneval2": Entry("suites.rtdmd_protocol:RTDMDGenEval2", "RTDMD protocol: its GenEval2 column (geneval2 in RTDMD's form: fp16 judge, a fraction)"),
    "rtdmd-ocr": Entry("suites.rtdmd_protocol:RTDMDOCR", "RTDMD protocol: its OCR column (PaddleOCR 2.9.1) on its ocr/test.txt"),
    "rtdmd-hpsv3": Entry("suites.rtdmd_protocol:RTDMDHPSv3", "RTDMD protocol: its HPSv3 column (mean mu) on its hpsv3/test.txt"),
    "fid": Entry("suites.fid:FID", "clean-fid FID against a reference image folder"),
    "fid-t": Entry("suites.fid:FIDT", "clean-fid FID against the teacher's samples on the same prompts and seeds"),
}

REWARDS: dict[str, Entry] = {
    "toy-quadratic": Entry("rtdmd_bench.rewards.toy:QuadraticReward", "toy2d: r(x) = -(x-c)^T Q (x-c) / 2, bounded above, exact tilt"),
    "toy-linear": Entry("rtdmd_bench.rewards.toy:CappedLinearReward", "toy2d: r(x) = min(a^T x, cap); the cap keeps it bounded"),
    "digit-correct": Entry("rtdmd_bench.rewards.digits:DigitCorrect", "digits: log p(prompted class) under the cached CNN classifier"),
    "digit-ink": Entry("rtdmd_bench.rewards.digits:DigitInk", "digits: stroke ink (mean brightness), a style reward that conflicts with fidelity"),
    "shapes-partial": Entry("rtdmd_bench.rewards.shapes:ShapesPartial", "shapes: GenEval partial credit of the rule-based detector's objects, non-differentiable"),
    "shapes-proxy": Entry("rtdmd_bench.rewards.shapes:ShapesProxy", "shapes: learned differentiable proxy of the partial credit (small CNN trained on renders, cached)"),
    "clipscore": Entry("rtdmd_bench.rewards.clip_based:CLIPScore", "CLIP ViT-L/14 (OpenAI) cosine; RTDMD raw cosine, torchmetrics max(100cos,0) option"),
    "hpsv2": Entry("rtdmd_bench.rewards.clip_based:HPSv2", "HPSv2.0: open_clip ViT-H-14 + HPS_v2_compressed.pt, cosine (~0.28)"),
    "hpsv21": Entry("rtdmd_bench.rewards.clip_based:HPSv21", "HPSv2.1: open_clip ViT-H-14 + HPS_v2.1_compressed.pt, cosine (~0.28)"),
    "pickscore": Entry("rtdmd_bench.rewards.clip_based:PickScore", "PickScore v1: logit_scale.exp() * cos (~20-24); divide_by=26 for RTDMD training"),
    "aesthetic": Entry("rtdmd_bench.rewards.clip_based:Aesthetic", "LAION aesthetic v2 MLP on normalised CLIP ViT-L/14 embeddings (~1-10)"),
    "imagereward": Entry("rtdmd_bench.rewards.imagereward:ImageReward", "ImageReward v1.0 (BLIP) in transformers' BLIP classes, official normalisation"),
    "geneval-partial": Entry("rtdmd_bench.rewards.geneval_partial:GenevalPartial", "GenEval partial credit per clause (RTDMD GRPO reward), non-differentiable"),
    "geneval2": Entry("rtdmd_bench.rewards.geneval2:GenEval2", "GenEval2 Soft-TIFA GM per image, Qwen3-VL-8B-Instruct judge (RTDMD: fp16), non-differentiable"),
    "ocr": Entry("rtdmd_bench.rewards.ocr:OCR", "OCR (RTDMD): PaddleOCR 2.9.1 in a user-named environment, 1 - min(edit distance, len)/len, non-differentiable"),
    "hpsv3": Entry("rtdmd_bench.rewards.hpsv3:HPSv3", "HPSv3: Qwen2-VL-7B + HPSv3 head, score = mu (~10-16), transformers 5, non-differentiable"),
    "tiny-clipscore": Entry("rtdmd_bench.rewards.tiny:TinyCLIPScore", "STAND-IN for clipscore: tiny random CLIP (tests/CI only)"),
    "tiny-hpsv2": Entry("rtdmd_bench.rewards.tiny:TinyHPSv2", "STAND-IN for hpsv2: tiny random open_clip (tests/CI only)"),
    "tiny-hpsv21": Entry("rtdmd_bench.rewards.tiny:TinyHPSv21", "STAND-IN for hpsv21: tiny random open_clip (tests/CI only)"),
    "tiny-pickscore": Entry("rtdmd_bench.rewards.tiny:TinyPickScore", "STAND-IN for pickscore: tiny random CLIP (tests/CI only)"),
    "tiny-aesthetic": Entry("rtdmd_bench.rewards.tiny:TinyAesthetic", "STAND-IN for aesthetic: tiny random CLIP + MLP (tests/CI only)"),
    "tiny-imagereward": Entry("rtdmd_bench.rewards.tiny:TinyImageReward", "STAND-IN for imagereward: tiny random BLIP (tests/CI only)"),
    "tiny-geneval-partial": Entry("rtdmd_bench.rewards.tiny:TinyGenevalPartial", "STAND-IN for geneval-partial: tiny random detector + CLIP (tests/CI only)"),
    "tiny-geneval2": Entry("rtdmd_bench.rewards.geneval2:TinyGenEval2", "STAND-IN for geneval2: tiny random Qwen3-VL judge (tests/CI only)"),
    "tiny-ocr": Entry("rtdmd_bench.rewards.tiny:TinyOCR", "STAND-IN for ocr: the test stand-in OCR environment (tests/ocr_stand_in.py; tests/CI only)"),
    "tiny-hpsv3": Entry("rtdmd_bench.rewards.tiny:TinyHPSv3", "STAND-IN for hpsv3: tiny random Qwen2-VL + HPSv3 head (tests/CI only)"),
}

# Names that stand for several suites on the command line (`eval --suite rtdmd`).
SUITE_GROUPS: dict[str, tuple[str, ...]] = {
    # RTDMD's inference walks its datasets in this order (rtdmd/inference.py, reward_fn's order).
    "rtdmd": ("rtdmd-drawbench", "rtdmd-geneval", "rtdmd-geneval2", "rtdmd-ocr", "rtdmd-hpsv3"),
}

_TABLES = {"methods": METHODS, "bases": BASES, "suites": SUITES, "rewards": REWARDS}


def _plugins(kind: str) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    for ep in entry_points(group=f"rtdmd_bench.{kind}"):
        found[ep.name] = Entry(ep.value, f"(plugin {ep.value})")
    return found


def table(kind: str) -> dict[str, Entry]:
    """All entries of a kind, built-in first, then plugins (a plugin may not shadow a built-in)."""
    if kind not in _TABLES:
        raise UnknownName(f"unknown registry kind {kind!r}; valid: {', '.join(KINDS)}")
    out = dict(_TABLES[kind])
    for name, entry in _plugins(kind).items():
        out.setdefault(name, entry)
    return out


def names(kind: str) -> list[str]:
    return sorted(table(kind))


def entry(kind: str, name: str) -> Entry:
    t = table(kind)
    if name not in t:
        singular = kind[:-1]
        raise UnknownName(f"unknown {singular} {name!r}; valid {kind}: {', '.join(sorted(t))}")
    return t[name]


def resolve(kind: str, name: str) -> Any:
    """Import the class registered under `name`; check it has a nested `Config` dataclass."""
    target = entry(kind, name).target
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr, None)
    if obj is None:
        raise ImportError(f"{kind[:-1]} {name!r}: {module_name} has no attribute {attr!r}")
    if not isinstance(obj, type):
        raise TypeError(f"{kind[:-1]} {name!r}: {target} is not a class")
    cfg = getattr(obj, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise TypeError(f"{kind[:-1]} {name!r}: {target} needs a nested `Config` dataclass")
    return obj
