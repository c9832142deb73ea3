"""The `hpsv3` suite: mean HPSv3 score (mu) over RTDMD's HPSv3 test prompts, one image per line.

Prompts: RTDMD's `dataset/hpsv3/test.txt` (1024 distinct captions; verified download, or
`--set suite.prompts=PATH`); not the HPDv3 benchmark of the HPSv3 paper. One image per line, seed
42, value = mean of mu over the images, as RTDMD's evaluation computes its HPSv3 column. The scorer
is the `hpsv3` reward (rtdmd_bench/rewards/hpsv3.py: transformers-5 re-implementation of the
`hpsv3` package's scoring), so results are versioned `hpsv3/transformers5-1`.

Stand-ins: `--set suite.models=stand-in` (or `suite.scorer=tiny-hpsv3`) scores with the tiny random
model of the same classes; the result is then named `hpsv3[stand-in]`, never `hpsv3`.

HPSv3 is a 7B vision-language model (~17 GB peak in bf16): `release()` frees it after scoring, so
an evaluation can load one heavy scorer at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from rtdmd_bench.ranges import NonNegativeInt, PositiveInt
from rtdmd_bench.rewards.hpsv3 import HPSv3, weight_files
from suites.preference import PreferenceSuite

VERSION = "hpsv3/transformers5-1"
STAND_IN_VERSION = "hpsv3/stand-in-1"
PROTOCOL = ("RTDMD's dataset/hpsv3/test.txt prompts (not the HPDv3 benchmark), one image per line, mean of mu; "
            "uint8 -> PIL bicubic to HPSv3's pixel budget -> Qwen2-VL processor; sequential positions")


class HPSv3Suite(PreferenceSuite):
    """HPSv3 mean mu on RTDMD's hpsv3/test.txt (1 image/prompt, seed 42)."""

    @dataclass
    class Config:
        prompts: str = ""
        """Prompt file (.txt, one per line); empty = RTDMD's hpsv3/test.txt (1024 lines, verified download)."""
        models: Literal["official", "stand-in"] = "official"
        """"official": the HPSv3 weights; "stand-in": the tiny random model (tests/CI), reported as
        hpsv3[stand-in]."""
        scorer: str = "hpsv3"
        """Reward name in the registry; anything but hpsv3 is reported as a stand-in (models=stand-in
        uses tiny-hpsv3)."""
        hpsv3: HPSv3.Config = field(default_factory=HPSv3.Config)
        """The scorer's settings (weights source, dtype, pixel budget, its batch size): e.g.
        --set suite.hpsv3.local_path=DIR. Its `models` is overridden by suite.models when that says stand-in."""
        batch_size: PositiveInt = 8
        """Images per reward call (the reward splits them further by suite.hpsv3.batch_size)."""
        limit: NonNegativeInt = 0
        """Use only the first N prompts (0 = all)."""
        seed: int = 42
        """Sampling seed of the protocol (RTDMD: 42)."""
        device: str = "auto"
        """Device the scorer runs on: auto (cuda when available, else cpu), cpu, cuda or cuda:N."""

    suite_name, official_prompts, slots = "hpsv3", "hpsv3", ("hpsv3",)
    higher_is_better = {"hpsv3": True}

    def stand_in_models(self) -> bool:
        return self.cfg.models == "stand-in" or self.cfg.hpsv3.models == "stand-in"

    def scorer_names(self) -> tuple[str, ...]:
        return ("tiny-hpsv3",) if self.stand_in_models() and self.cfg.scorer == "hpsv3" else (self.cfg.scorer,)

    def scorer_overrides(self, slot: str) -> dict[str, Any]:
        """The suite's scorer settings; the stand-in choice wins over hpsv3.models."""
        settings = dataclasses.asdict(self.cfg.hpsv3)
        if self.stand_in_models():
            settings["models"] = "stand-in"
        elif self.scorer_names() != ("hpsv3",):
            settings.pop("models")  # another reward keeps its own default model source
        return settings

    def prepare(self) -> None:
        """Before any image is generated: the official HPSv3's files are found (not loaded: the 7B
        model loads when scoring, so an evaluation holds one heavy scorer at a time); another scorer
        (a stand-in) is loaded as the other preference suites do."""
        if self.scorer_names() == ("hpsv3",) and not self.stand_in_models():
            weight_files(HPSv3.Config(**self.scorer_overrides("hpsv3")))
        else:
            super().prepare()

    def precisions(self) -> dict[str, str]:
        """No autocast (recorded as such): the reward runs its backbone in its own dtype and its head
        in float32."""
        return {"hpsv3": f"no autocast ({self.cfg.hpsv3.dtype} backbone, float32 head)"}

    def describe(self, ctx: Any = None) -> dict[str, Any]:
        return {**super().describe(ctx), "protocol": PROTOCOL}

    def version_string(self) -> str:
        if self.name.endswith("[stand-in]"):
            return f"{STAND_IN_VERSION}:{'+'.join(self.scorer_names())}"
        return VERSION

    def release(self) -> int:
        """Free the scorer's model (process cache, then CUDA's cached blocks); the next score loads it again."""
        rewards, self._rewards = self._rewards, None
        return sum(r.release() for r in (rewards or {}).values() if hasattr(r, "release"))
