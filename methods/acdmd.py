"""AC-DMD: ambient-consistent distribution matching, RTDMD's stage 1 (METHODS.md section 3).

Source: official code Harahan/RTDMD (`rtdmd/trainers/ac_dmd_trainer.py`, `ac_dmd_mixin.py`,
`ac_dmd_utils.py`) and its `configs/cold_start/*.yaml` for the defaults, as summarised in
METHODS.md section 3; the RTDMD paper's abstract for the idea.

Per iteration (official `DMDTrainer.train_step` order):
1. fake-score step on a fresh random-stop rollout (no grad): x_s = output of step k at level s,
   re-noised to t ~ U[s + 0.01, 1]; loss min(1, 10 b^2) |v_phi(x_t, t) - v*|^2 with the ambient
   target v* (unbiased for the marginal velocity at t given only x_s) + 0.01 x consistency;
2. every `num_fake_per_gen`-th iteration (TTUR 10) a generator step on another fresh rollout,
   gradient through step k only: teacher (CFG) and fake predictions at (x_t, t) mapped back to s
   by one CPS transition with shared noise; normalised DMD gradient on x_s;
3. generator EMA (0.99) every iteration, as the official `ema_every: 1`.
The sub-interval targets are what distinguishes it from DMD2: the fake score at t models the
re-noised output of the step that ends at s, not a mix of every step's x0-predictions.
The pieces live in rtdmd_bench.core.acdmd_terms because `rtdmd` (stage 1 + 2) composes them too.
"""

from __future__ import annotations

from typing import Any

from rtdmd_bench.core import acdmd_terms as ac
from rtdmd_bench.interfaces import Batch, RewardSet

# The AC-DMD hyper-parameters are shared with `rtdmd` (its nested `stage1` config), so they live
# in rtdmd_bench.core.acdmd_terms; the defaults are the official cold-start config.
Config = ac.ACDMDConfig


class ACDMD:
    """AC-DMD (RTDMD stage 1): sub-interval ambient fake-score targets, consistency regulariser,
    shared-noise CPS mapping of the DM gradient (official code Harahan/RTDMD)."""

    Config = Config
    name = "acdmd"
    source = ("official code Harahan/RTDMD (ac_dmd_trainer.py, ac_dmd_mixin.py; configs/cold_start) "
              "as summarised in METHODS.md section 3; RTDMD paper abstract")
    stages = ("acdmd",)
    micro_batching = True  # train.micro_batches: each optimiser step accumulates the micro-batches
    # The suite's smoke, resume and two-process tests run every registered method for a few steps on
    # batches of 4 to 16 samples with these overrides (tests/test_every_method.py).
    smoke_test_overrides = ("method.num_fake_per_gen=2",)  # a generator step within two steps

    def __init__(self, cfg: Config, base: Any, rewards: RewardSet, meter: Any) -> None:
        self.cfg, self.base, self.meter = cfg, base, meter
        self.state = ac.stage1_state(base, cfg)  # AdamW x2 + generator EMA
        self.sigmas = base.sigmas(cfg.num_steps)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        chunks = batch.chunks()  # micro-batches: together exactly the rows and draws of the whole step
        return ac.stage1_step(self.base, self.cfg, self.state, self.sigmas, [c.local(c.prompts) for c in chunks],
                              [c.random() for c in chunks], step)

    def generator(self) -> Any:
        return self.state.ema.swapped()

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict(self.base)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(self.base, state)
