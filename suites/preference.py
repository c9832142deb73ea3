"""Preference-model suites: hpsv2, imagereward, pickscore, aesthetic, clipscore, drawbench.

Each suite scores images with reward models looked up by name in the rewards registry
(`rtdmd_bench.registry.resolve("rewards", name)`, built from their default `Config`) and
reports the mean. Defaults follow PROTOCOLS.md: RTDMD's evaluation is one image per prompt,
seed 42, on DrawBench for CLIP / Aesthetic / PickScore / HPSv2.1 / ImageReward; the HPSv2
benchmark is 4 styles x 800 prompts scored with HPSv2.1 by default, x100 as in its tables.

A suite run with any scorer other than the official one for its slot (e.g. `tiny-hpsv21`,
or a reward whose `name` says "stand-in") is named "<suite>[stand-in]", never the official
name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from suites import prompt_sets

# The reward names that carry each official metric slot (PROTOCOLS.md).
OFFICIAL_SCORERS: dict[str, tuple[str, ...]] = {
    "clipscore": ("clipscore",), "aesthetic": ("aesthetic",), "pickscore": ("pickscore",),
    "hpsv21": ("hpsv21",), "hpsv2": ("hpsv2", "hpsv21"), "imagereward": ("imagereward",),
}
HPS_STYLES: tuple[str, ...] = ("anime", "concept-art", "paintings", "photo")
HPS_SOURCE = ("the HPSv2 benchmark prompts (HF dataset zhwang/HPDv2, folder benchmark/, or the `hpsv2` "
              "package's benchmark prompt files): one JSON list (or .txt, one per line) per style")


def build_reward(name: str) -> Any:
    """A reward from the registry with its default config (weights per its own loading rules)."""
    cls = registry.resolve("rewards", name)
    return cls(cls.Config())


def is_stand_in(slot: str, reward_name: str, reward: Any) -> bool:
    return reward_name not in OFFICIAL_SCORERS[slot] or "stand-in" in str(getattr(reward, "name", ""))


@torch.no_grad()
def reward_scores(reward: Any, images: Tensor, prompts: Sequence[str], batch_size: int) -> Tensor:
    """(N,) scores; images (N, 3, H, W) in [0, 1] with one prompt per image."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
    chunks = [reward(images[i:i + batch_size], list(prompts[i:i + batch_size]))
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
    `limit`, `seed`; this class does the rest."""

    suite_name: str = ""
    official_prompts: str = "drawbench"  # prompt_sets.OFFICIAL key
    slots: tuple[str, ...] = ()  # metric slots, one scorer each
    scale: float = 1.0
    images_per_prompt = 1
    higher_is_better: dict[str, bool] = {}

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
        return f"{self.suite_name}/{kind}{'+'.join(self.scorer_names())}-1"

    def rewards(self) -> dict[str, Any]:
        """Slot -> reward, built on first use (missing weights raise the reward's UserError)."""
        if self._rewards is None:
            self._rewards = {s: build_reward(n) for s, n in zip(self.slots, self.scorer_names())}
            if any(is_stand_in(s, n, self._rewards[s]) for s, n in zip(self.slots, self.scorer_names())):
                self.name = f"{self.suite_name}[stand-in]"
                self.version = self.version_string()
        return self._rewards

    def prompts(self) -> list[str]:
        if self._prompts is None:
            prompts = prompt_sets.load_prompts(prompt_sets.resolve(self.official_prompts, self.cfg.prompts))
            self._prompts = prompts[: self.cfg.limit] if self.cfg.limit > 0 else prompts
        return self._prompts

    def check(self, images: Tensor, prompts: Sequence[str]) -> None:
        if images.shape[0] != len(prompts) * self.images_per_prompt:
            raise UserError(f"{self.name}: expected {self.images_per_prompt} image(s) per prompt, got "
                            f"{images.shape[0]} images for {len(prompts)} prompts")

    def slot_means(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        texts = per_image(prompts, self.images_per_prompt)
        return {slot: self.scale * float(reward_scores(r, images, texts, self.cfg.batch_size).mean())
                for slot, r in self.rewards().items()}

    def describe(self, ctx: Any = None) -> dict[str, Any]:
        rewards = self.rewards()
        out = {
            "suite": self.name, "version": self.version, "images_per_prompt": self.images_per_prompt,
            **seed_record(self.seed, ctx), "scale": self.scale,
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
    batch_size: int = 8
    """Images per reward call (scores do not depend on it)."""
    limit: int = 0
    """Use only the first N prompts (0 = all)."""
    seed: int = 42
    """Sampling seed of the protocol (RTDMD: 42)."""


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
        batch_size: int = 8
        """Images per reward call (scores do not depend on it)."""
        limit: int = 0
        """Use only the first N prompts (0 = all)."""
        seed: int = 42
        """Sampling seed of the protocol (RTDMD: 42)."""

    suite_name = "drawbench"
    slots = ("clipscore", "aesthetic", "pickscore", "hpsv21", "imagereward")
    higher_is_better = {s: True for s in slots}

    def version_string(self) -> str:
        return "drawbench/rtdmd-1" if self.name == "drawbench" else super().version_string()


class HPSv2Suite(PreferenceSuite):
    """HPSv2 benchmark: 4 styles x 800 prompts, HPSv2.1 by default, mean per style and their
    average, x100 as in the HPSv2 tables (v2.0 and v2.1 are not comparable: the version says which)."""

    @dataclass
    class Config:
        prompts: str = ""
        """Folder with anime, concept-art, paintings and photo prompt files (.json list or .txt); required."""
        scorer: str = "hpsv21"
        """"hpsv21" (default) or "hpsv2"; any other reward is reported as a stand-in."""
        batch_size: int = 8
        """Images per reward call (scores do not depend on it)."""
        limit: int = 0
        """Use only the first N prompts of each style (0 = all)."""
        seed: int = 42
        """Sampling seed (one image per prompt)."""

    suite_name, slots, scale = "hpsv2", ("hpsv2",), 100.0
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
        reward = self.rewards()["hpsv2"]
        scores = self.scale * reward_scores(reward, images, per_image(prompts, 1), self.cfg.batch_size)
        metrics, start = {}, 0
        for style, style_prompts in self.style_prompts().items():
            if list(prompts[start:start + len(style_prompts)]) != style_prompts:
                raise UserError("hpsv2 images must come in the order of the suite's prompts() (styles in order)")
            metrics[style] = float(scores[start:start + len(style_prompts)].mean())
            start += len(style_prompts)
        metrics["average"] = sum(metrics[s] for s in HPS_STYLES) / len(HPS_STYLES)
        return {**metrics, **self.describe(ctx), "n_prompts": len(prompts)}
