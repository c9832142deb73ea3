"""Preference-model suites: hpsv2, imagereward, pickscore, aesthetic, clipscore, drawbench.

Each suite scores images with reward models looked up by name in the rewards registry
(`rtdmd_bench.registry.resolve("rewards", name)`, built from their default `Config`) and
reports the mean. Defaults follow PROTOCOLS.md: RTDMD's evaluation is one image per prompt,
seed 42, on DrawBench for CLIP / Aesthetic / PickScore / HPSv2.1 / ImageReward; the HPSv2
benchmark is 4 styles x 800 prompts scored with HPSv2.1 by default, x100 as in its tables.

A suite run with any scorer other than the official one for its slot (e.g. `tiny-hpsv21`,
or a reward whose `name` says "stand-in") is named "<suite>[stand-in]", never the official
name.

Precision and device (recorded in every result): the scorers run on `device` (auto: CUDA when
present), under fp16 autocast where the reference the suite follows does so on CUDA (the `hpsv2`
package's score() and evaluation, the aesthetic predictor's CLIP), float32 otherwise and on CPU.
DrawBench follows RTDMD's evaluation, whose scorers all run in float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import NonNegativeInt, PositiveInt
from suites import prompt_sets

# The reward names that carry each official metric slot (PROTOCOLS.md).
OFFICIAL_SCORERS: dict[str, tuple[str, ...]] = {
    "clipscore": ("clipscore",), "aesthetic": ("aesthetic",), "pickscore": ("pickscore",),
    "hpsv21": ("hpsv21",), "hpsv2": ("hpsv2", "hpsv21"), "imagereward": ("imagereward",),
    "hpsv3": ("hpsv3",),
}
HPS_STYLES: tuple[str, ...] = ("anime", "concept-art", "paintings", "photo")
HPS_SOURCE = ("the HPSv2 benchmark prompts (HF dataset zhwang/HPDv2, folder benchmark/, or the `hpsv2` "
              "package's benchmark prompt files): one JSON list (or .txt, one per line) per style")


Precision = Literal["auto", "float32", "float16"]


def resolve_precision(requested: str, device_type: str, official: str) -> Literal["float32", "float16"]:
    """The precision a scorer runs in: `auto` = `official` (the reference's precision on CUDA)
    on CUDA and float32 elsewhere; an explicit float32 / float16 wins. float16 means CUDA
    autocast, so it needs a CUDA device."""
    if requested not in ("auto", "float32", "float16") or official not in ("float32", "float16"):
        raise UserError(f"precision must be auto, float32 or float16; got {requested!r} (official {official!r})")
    if requested == "auto":
        return official if device_type == "cuda" else "float32"  # type: ignore[return-value]
    if requested == "float16" and device_type != "cuda":
        raise UserError(f"suite.precision=float16 is CUDA fp16 autocast but the scorers run on {device_type}: "
                        "use precision=auto or float32 there")
    return requested  # type: ignore[return-value]


def resolve_device(requested: str) -> torch.device:
    """`auto` = cuda when available, else cpu; otherwise a torch device string (cuda:1, cpu)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(requested)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"suite.device={requested!r} is not a device: use auto, cpu, cuda or cuda:N") from exc


def build_reward(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """A reward from the registry with its default config (weights per its own loading rules);
    `overrides` set config fields the reward has (a reward without pixel pipelines, say, keeps
    its config; the result records every scorer's config)."""
    cls = registry.resolve("rewards", name)
    cfg = cls.Config()
    known = {k: v for k, v in (overrides or {}).items() if k in {f.name for f in dataclasses.fields(cfg)}}
    return cls(dataclasses.replace(cfg, **known))


def is_stand_in(slot: str, reward_name: str, reward: Any) -> bool:
    return reward_name not in OFFICIAL_SCORERS[slot] or "stand-in" in str(getattr(reward, "name", ""))


@torch.no_grad()
def reward_scores(reward: Any, images: Tensor, prompts: Sequence[str], batch_size: int,
                  device: torch.device | None = None, precision: str = "float32") -> Tensor:
    """(N,) scores; images (N, 3, H, W) in [0, 1] with one prompt per image, scored chunk by
    chunk on `device` (default: where the images are), under fp16 autocast if `precision` is
    float16."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
    device = images.device if device is None else device
    with torch.autocast(device.type, dtype=torch.float16, enabled=precision == "float16"):
        chunks = [reward(images[i:i + batch_size].to(device), list(prompts[i:i + batch_size]))
                  for i in range(0, images.shape[0], batch_size)]
    scores = torch.cat([c.detach().float().reshape(-1) for c in chunks])
    if not torch.isfinite(scores).all():
        raise UserError(f"reward {getattr(reward, 'name', reward)!r} returned non-finite scores")
    return scores


def per_image(prompts: Sequence[str], images_per_prompt: int) -> list[str]:
    """Prompt-major expansion: prompt i repeated for its images_per_prompt samples."""
    return [p for p in prompts for _ in range(images_per_prompt)]


def seed_record(protocol_seed: int, ctx: Any) -> dict[str, Any]:
    """The protocol's seed and the one the engine sampled with (`ctx.seed`); a mismatch is noted,
    not hidden (the images were already generated when a suite sees them)."""
    used = getattr(ctx, "seed", None)
    out: dict[str, Any] = {"protocol_seed": protocol_seed, "sampling_seed": used}
    if used is not None and used != protocol_seed:
        out["seed_note"] = f"sampled with seed {used}; the protocol uses seed {protocol_seed} (pass --seed {protocol_seed})"
    return out


def reward_config(reward: Any) -> dict[str, Any]:
    cfg = getattr(reward, "cfg", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}


class PreferenceSuite:
    """Mean reward per metric slot over a prompt set. Subclasses set the class attributes
    and a nested `Config` with fields `prompts`, `scorers` (or `scorer`), `batch_size`,
    `limit`, `seed`, `precision`, `device`; this class does the rest."""

    suite_name: str = ""
    official_prompts: str = "drawbench"  # prompt_sets.OFFICIAL key
    slots: tuple[str, ...] = ()  # metric slots, one scorer each
    scale: float = 1.0
    images_per_prompt = 1
    higher_is_better: dict[str, bool] = {}
    official_precision: dict[str, str] = {}  # slot -> the reference's precision on CUDA (default float32)

    def __init__(self, cfg: Any = None):
        self.cfg = cfg or self.Config()  # type: ignore[attr-defined]
        names = self.scorer_names()
        if len(names) != len(self.slots):
            raise UserError(f"{self.suite_name}: give {len(self.slots)} scorer names for "
                            f"{', '.join(self.slots)}; got {list(names)}")
        self.seed = self.cfg.seed
        self._rewards: dict[str, Any] | None = None
        self._prompts: list[str] | None = None
        # Named stand-in up front from the scorer names; `score` re-checks the built rewards.
        unofficial = any(n not in OFFICIAL_SCORERS[s] for s, n in zip(self.slots, names))
        self.name = f"{self.suite_name}[stand-in]" if unofficial else self.suite_name
        self.version = self.version_string()

    def scorer_names(self) -> tuple[str, ...]:
        return tuple(self.cfg.scorers) if hasattr(self.cfg, "scorers") else (self.cfg.scorer,)

    def version_string(self) -> str:
        kind = "stand-in:" if self.name.endswith("[stand-in]") else ""
        # -2: official pixel pipelines (uint8 -> PIL / HPSv2 transform) and precision (issue #10)
        return f"{self.suite_name}/{kind}{'+'.join(self.scorer_names())}-2"

    def scorer_overrides(self, slot: str) -> dict[str, Any]:
        """Config fields the suite's protocol sets on the reward of `slot` (none by default)."""
        return {}

    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def precisions(self) -> dict[str, str]:
        """Slot -> the precision its scorer runs in on this suite's device."""
        kind = self.device().type
        return {s: resolve_precision(self.cfg.precision, kind, self.official_precision.get(s, "float32"))
                for s in self.slots}

    def rewards(self) -> dict[str, Any]:
        """Slot -> reward, built on first use (missing weights raise the reward's UserError)."""
        if self._rewards is None:
            self._rewards = {s: build_reward(n, self.scorer_overrides(s)) for s, n in zip(self.slots, self.scorer_names())}
            if any(is_stand_in(s, n, self._rewards[s]) for s, n in zip(self.slots, self.scorer_names())):
                self.name = f"{self.suite_name}[stand-in]"
                self.version = self.version_string()
        return self._rewards

    def prepare(self) -> None:
        """Before any image is generated: every scorer loaded (missing weights fail now; the models
        stay in the process cache for `score`) and the device and precision settings checked."""
        self.rewards()
        self.precisions()

    def prompts(self) -> list[str]:
        if self._prompts is None:
            prompts = prompt_sets.load_prompts(prompt_sets.resolve(self.official_prompts, self.cfg.prompts))
            self._prompts = prompts[: self.cfg.limit] if self.cfg.limit > 0 else prompts
        return self._prompts

    def check(self, images: Tensor, prompts: Sequence[str]) -> None:
        if images.shape[0] != len(prompts) * self.images_per_prompt:
            raise UserError(f"{self.name}: expected {self.images_per_prompt} image(s) per prompt, got "
                            f"{images.shape[0]} images for {len(prompts)} prompts")

    def slot_scores(self, slot: str, images: Tensor, texts: Sequence[str]) -> Tensor:
        """(N,) scores of the slot's reward on this suite's device and precision."""
        return reward_scores(self.rewards()[slot], images, texts, self.cfg.batch_size, self.device(),
                             self.precisions()[slot])

    def slot_means(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        texts = per_image(prompts, self.images_per_prompt)
        return {slot: self.scale * float(self.slot_scores(slot, images, texts).mean()) for slot in self.slots}

    def describe(self, ctx: Any = None) -> dict[str, Any]:
        rewards = self.rewards()
        out = {
            "suite": self.name, "version": self.version, "images_per_prompt": self.images_per_prompt,
            **seed_record(self.seed, ctx), "scale": self.scale,
            "device": str(self.device()), "precision": self.precisions(),
            "scorers": {s: {"reward": n, "name": str(getattr(rewards[s], "name", n)), "config": reward_config(rewards[s])}
                        for s, n in zip(self.slots, self.scorer_names())},
        }
        notes = [out.pop("seed_note", "")]
        if self.name.endswith("[stand-in]"):
            notes.insert(0, "STAND-IN scorers: these numbers test the code path only and are not the official metric")
        out["note"] = "; ".join(n for n in notes if n)
        return out

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        self.check(images, prompts)
        metrics = self.slot_means(images, prompts)
        return {**metrics, **self.describe(ctx), "n_prompts": len(prompts)}


@dataclass
class SingleRewardConfig:
    prompts: str = ""
    """Prompt file (.txt, one per line); empty = the suite's official file (verified download)."""
    scorer: str = ""
    """Reward name in the registry; anything but the suite's own name is reported as a stand-in."""
    batch_size: PositiveInt = 8
    """Images per reward call (scores do not depend on it)."""
    limit: NonNegativeInt = 0
    """Use only the first N prompts (0 = all)."""
    seed: int = 42
    """Sampling seed of the protocol (RTDMD: 42)."""
    precision: Precision = "auto"
    """Scorer precision: auto = the official scorer's on CUDA (fp16 autocast for the aesthetic
    predictor's CLIP; float32 for ImageReward, PickScore, CLIPScore), float32 on CPU; float16 =
    CUDA fp16 autocast; float32. Recorded in the result."""
    device: str = "auto"
    """Device the scorer runs on: auto (cuda when available, else cpu), cpu, cuda or cuda:N."""


def _single_reward_config(name: str) -> type:
    """The shared single-reward config with `scorer` defaulting to the suite's own reward."""
    @dataclass
    class Config(SingleRewardConfig):
        scorer: str = name
        """Reward name in the registry; anything but the suite's own name is reported as a stand-in."""

    return Config


class ImageRewardSuite(PreferenceSuite):
    """ImageReward (THUDM) mean reward on DrawBench, one image per prompt, seed 42."""

    Config = _single_reward_config("imagereward")
    suite_name, slots = "imagereward", ("imagereward",)
    higher_is_better = {"imagereward": True}


class PickScoreSuite(PreferenceSuite):
    """PickScore v1 mean (logit_scale x cosine, ~20-24) on RTDMD's PickScore test prompts."""

    Config = _single_reward_config("pickscore")
    suite_name, official_prompts, slots = "pickscore", "pickscore", ("pickscore",)
    higher_is_better = {"pickscore": True}


class AestheticSuite(PreferenceSuite):
    """LAION aesthetic predictor v2 mean (scale ~1-10) on DrawBench."""

    Config = _single_reward_config("aesthetic")
    suite_name, slots = "aesthetic", ("aesthetic",)
    higher_is_better = {"aesthetic": True}
    official_precision = {"aesthetic": "float16"}  # clip.load on CUDA keeps fp16 weights


class ClipScoreSuite(PreferenceSuite):
    """CLIPScore with the `clipscore` reward's convention (recorded in the output) on DrawBench."""

    Config = _single_reward_config("clipscore")
    suite_name, slots = "clipscore", ("clipscore",)
    higher_is_better = {"clipscore": True}


class DrawBench(PreferenceSuite):
    """RTDMD's DrawBench protocol: one image per prompt, seed 42, CLIP / Aesthetic / PickScore /
    HPSv2.1 / ImageReward at once (raw scales, as the rewards return them).

    RTDMD's dataset/drawbench/test.txt has 1000 lines: the 200 DrawBench prompts, each 5 times
    in shuffled order; every line is one sample (the engine's per-index seeds make them differ)."""

    @dataclass
    class Config:
        prompts: str = ""
        """Prompt file; empty = RTDMD's DrawBench test.txt (1000 lines, verified download)."""
        scorers: tuple[str, ...] = ("clipscore", "aesthetic", "pickscore", "hpsv21", "imagereward")
        """Reward names for the slots clipscore, aesthetic, pickscore, hpsv21, imagereward, in that order."""
        batch_size: PositiveInt = 8
        """Images per reward call (scores do not depend on it)."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts (0 = all)."""
        seed: int = 42
        """Sampling seed of the protocol (RTDMD: 42)."""
        scorer_inputs: Literal["rtdmd", "official"] = "rtdmd"
        """Pixels each scorer sees: rtdmd = as RTDMD's evaluation feeds them (clipscore through its
        torchvision bilinear transform on uint8-rounded images, aesthetic through CLIPImageProcessor; pickscore, hpsv21 and
        imagereward through their official pipelines); official = every reward's own default."""
        precision: Precision = "auto"
        """Scorer precision: auto = float32 (RTDMD runs every scorer in float32); float16 = CUDA fp16
        autocast; float32. Recorded in the result."""
        device: str = "auto"
        """Device the scorers run on: auto (cuda when available, else cpu), cpu, cuda or cuda:N."""

    suite_name = "drawbench"
    slots = ("clipscore", "aesthetic", "pickscore", "hpsv21", "imagereward")
    higher_is_better = {s: True for s in slots}
    # RTDMD's MultiScorer (rtdmd/rewards/multi_scorer.py): ClipScorer's tensor transform, and
    # AestheticScorer's CLIPProcessor; the other three go through their official pipelines.
    # Its evaluation rounds every image to uint8 before any scorer (multi_scorer.py), so CLIPScore's
    # tensor transform sees uint8 levels ("rtdmd_tensor_uint8"; suite version 3).
    rtdmd_inputs: dict[str, dict[str, str]] = {"clipscore": {"pixels": "rtdmd_tensor_uint8"},
                                               "aesthetic": {"pixels": "clip_processor"}}

    def scorer_overrides(self, slot: str) -> dict[str, Any]:
        return dict(self.rtdmd_inputs.get(slot, {})) if self.cfg.scorer_inputs == "rtdmd" else {}

    def version_string(self) -> str:
        if self.name != "drawbench":
            return super().version_string()
        return "drawbench/rtdmd-3" if self.cfg.scorer_inputs == "rtdmd" else "drawbench/rtdmd-official-inputs-2"


class HPSv2Suite(PreferenceSuite):
    """HPSv2 benchmark: 4 styles x 800 prompts, HPSv2.1 by default, mean per style and their
    average, x100 as in the HPSv2 tables (v2.0 and v2.1 are not comparable: the version says which)."""

    @dataclass
    class Config:
        prompts: str = ""
        """Folder with anime, concept-art, paintings and photo prompt files (.json list or .txt); required."""
        scorer: str = "hpsv21"
        """"hpsv21" (default) or "hpsv2"; any other reward is reported as a stand-in."""
        batch_size: PositiveInt = 8
        """Images per reward call (scores do not depend on it)."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts of each style (0 = all)."""
        seed: int = 42
        """Sampling seed (one image per prompt)."""
        precision: Precision = "auto"
        """Scorer precision: auto = float16 autocast on CUDA (as hpsv2.score() and its benchmark
        evaluation), float32 on CPU; float16; float32. Recorded in the result."""
        device: str = "auto"
        """Device the scorer runs on: auto (cuda when available, else cpu), cpu, cuda or cuda:N."""

    suite_name, slots, scale = "hpsv2", ("hpsv2",), 100.0
    official_precision = {"hpsv2": "float16"}  # torch.cuda.amp.autocast() in img_score.py / evaluation.py
    higher_is_better = {**{s: True for s in HPS_STYLES}, "average": True}

    def style_prompts(self) -> dict[str, list[str]]:
        """Style -> prompts, read from the folder given in `prompts`."""
        if not self.cfg.prompts:
            raise UserError(f"the hpsv2 suite needs {HPS_SOURCE}; pass the folder with --set suite.prompts=DIR "
                            f"(files {', '.join(s + '.json' for s in HPS_STYLES)})")
        folder = Path(self.cfg.prompts).expanduser()
        out = {}
        for style in HPS_STYLES:
            found = [folder / f"{style}{ext}" for ext in (".json", ".txt") if (folder / f"{style}{ext}").is_file()]
            if not found:
                raise UserError(f"{folder} has no {style}.json or {style}.txt: the hpsv2 suite needs {HPS_SOURCE}")
            prompts = prompt_sets.load_prompts(found[0])
            out[style] = prompts[: self.cfg.limit] if self.cfg.limit > 0 else prompts
        return out

    def prompts(self) -> list[str]:
        if self._prompts is None:
            self._prompts = [p for ps in self.style_prompts().values() for p in ps]
        return self._prompts

    def score(self, images: Tensor, prompts: Sequence[str], ctx: Any = None) -> dict[str, Any]:
        self.check(images, prompts)
        scores = self.scale * self.slot_scores("hpsv2", images, per_image(prompts, 1))
        metrics, start = {}, 0
        for style, style_prompts in self.style_prompts().items():
            if list(prompts[start:start + len(style_prompts)]) != style_prompts:
                raise UserError("hpsv2 images must come in the order of the suite's prompts() (styles in order)")
            metrics[style] = float(scores[start:start + len(style_prompts)].mean())
            start += len(style_prompts)
        metrics["average"] = sum(metrics[s] for s in HPS_STYLES) / len(HPS_STYLES)
        return {**metrics, **self.describe(ctx), "n_prompts": len(prompts)}
