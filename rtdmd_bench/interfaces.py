"""The four interfaces every component implements (docs/architecture.md, "The four interfaces").

Kept deliberately small. Methods talk to bases only through `Base`; bases never know
which method runs them; rewards and suites see tensors, never PIL, in training.

Conventions (METHODS.md section 1): flow matching with `x_sigma = (1-sigma) x0 + sigma eps`,
sigma in [0, 1] (1 = pure noise), models predict velocity `v ~ eps - x0`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from rtdmd_bench.core.parallel import BatchRandom, Shard
from rtdmd_bench.errors import UserError

Role = Literal["teacher", "student", "fake"]
ROLES: tuple[str, ...] = ("teacher", "student", "fake")


@runtime_checkable
class Base(Protocol):
    """A generative base: teacher, student (generator) and fake score over one latent space.

    Construction: `BaseClass(cfg)` where `cfg` is an instance of the nested `BaseClass.Config`
    dataclass. Heavy work (loading weights, fitting the student to the teacher) happens in
    `prepare(meter)`, called once by the training loop before the first step.
    """

    name: str
    latent_shape: tuple[int, ...]  # per-sample shape of x, e.g. (2,) or (16, 64, 64)
    default_cfg: float  # teacher classifier-free guidance scale used by DM terms

    def prepare(self, meter: Any) -> None:
        """Load or build the networks; initialise student/fake from the teacher.

        The cost of initialisation is charged to `meter` under role "init" (outside the budget,
        identical for every method)."""

    def train_prompts(self) -> list[str]:
        """The distillation prompt set ("distill": sampled uniformly by the loop for every step)."""

    def reward_prompts(self) -> list[str]:
        """The prompt set of reward-optimising steps ("reward", `Batch.draw`); real bases: RTDMD's
        stage-2 set (GenEval-style training metadata, which the GenEval reward needs)."""

    def encode(self, prompts: Sequence[str]) -> Any:
        """Text conditioning for a batch; opaque to methods (pass it back to `velocity`).

        Methods that need K samples per prompt repeat the prompts before encoding."""

    def velocity(
        self,
        role: str,
        x: Tensor,  # (B, *latent_shape)
        sigma: Tensor,  # (B,) noise level in [0, 1]
        cond: Any,
        cfg: float | None = None,  # teacher guidance scale; None = conditional only
        step: Tensor | None = None,  # (B,) long, sampler step index (fake_step_conditioning)
    ) -> Tensor:  # (B, *latent_shape) predicted velocity eps - x0
        """Velocity prediction of one role. Gradients flow as the caller's autograd mode says."""

    def decode(self, x: Tensor) -> Tensor:
        """Latents -> what rewards and suites see: images in [0, 1] (B, 3, H, W) for image bases;
        the sample itself for `toy2d`."""

    def sigmas(self, num_steps: int) -> Tensor:
        """(num_steps + 1,) descending noise levels with the base's shift, ending at 0: the few-step
        schedule of the student (and of the teacher's few-step CPS sampler)."""

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """(num_steps + 1,) descending noise levels of the teacher's own multi-step sampler, ending
        at 0. Diffusers bases: their scheduler's `set_timesteps(num_steps, mu=...)` sigmas plus the
        final 0, as RTDMD's normal inference mode sets them; `pipeline=True` asks for the schedule
        the base's diffusers pipeline sets where it differs (FLUX pipelines pass sigmas
        linspace(1, 1/N, N)). Bases without a diffusers scheduler return `sigmas(num_steps)`.
        Only samplers call this; methods train on `sigmas`."""

    def trainable(self, role: str) -> list[nn.Parameter]:
        """Parameters the method may optimise for `role` (student or fake)."""

    def state_dict(self, role: str) -> dict[str, Tensor]:
        """Trainable state of a role (LoRA adapters only on large bases)."""

    def load_state_dict(self, role: str, state: dict[str, Tensor]) -> None:
        """Inverse of `state_dict`."""

    def restart_adapter(self, role: str) -> bool:
        """Freeze the role's trainable adapter into the model (it stays active: the function is
        unchanged) and train a fresh one from now on (RTDMD's stage switch on LoRA bases). Bases
        whose roles are whole networks return False and change nothing."""

    def parallelize(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Data-parallel training: from now on call the trainable modules through `wrap(module)`
        (accelerate's DDP/FSDP wrapper); `trainable` / `state_dict` keep the raw modules."""


@runtime_checkable
class Reward(Protocol):
    """A scalar reward per image. Construction: `RewardClass(cfg)` with its nested `Config`."""

    name: str
    differentiable: bool

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:  # (B,)
        """Images from `Base.decode`; for image rewards in [0, 1] (B, 3, H, W)."""


@dataclass
class RewardSet:
    """The rewards a run optimises, their weights and the tilt temperature beta.

    The reward-tilted target is p*(x) ∝ p_teacher(x) exp(r(x)/beta) with r = sum_k w_k r_k
    (METHODS.md section 4)."""

    rewards: dict[str, Reward] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    beta: float = 1.0

    def each(self, images: Tensor, prompts: Sequence[str], differentiable_only: bool = False
             ) -> dict[str, Tensor]:
        """Unweighted scores per reward name, each (B,)."""
        return {n: r(images, prompts) for n, r in self.rewards.items()
                if r.differentiable or not differentiable_only}

    def total(self, images: Tensor, prompts: Sequence[str], differentiable_only: bool = False
              ) -> Tensor:
        """Weighted sum sum_k w_k r_k, (B,)."""
        scores = self.each(images, prompts, differentiable_only)
        if not scores:
            raise ValueError("no rewards configured: set --rewards NAME[=WEIGHT],...")
        return sum(self.weights[n] * s for n, s in scores.items())

    def __bool__(self) -> bool:
        return bool(self.rewards)


class PromptPools:
    """The training prompt sets of a run by name, each loaded on first use (a real base's reward
    set may be a download that a method without rewards never needs).

    "distill": the prompts every step's `Batch.prompts` are drawn from (official RTDMD stage 1:
    dataset/pickscore/train.txt); "reward": the prompts of reward-optimising steps (official RTDMD
    stage 2: dataset/geneval/train_metadata.jsonl). On the CPU bases both are the same list."""

    def __init__(self, loaders: dict[str, Callable[[], Sequence[str]]]) -> None:
        self._loaders = dict(loaders)
        self._loaded: dict[str, list[str]] = {}

    def get(self, name: str) -> list[str]:
        if name not in self._loaders:
            raise KeyError(f"unknown prompt set {name!r}; valid: {', '.join(self._loaders)}")
        if name not in self._loaded:
            self._loaded[name] = list(self._loaders[name]())
        return self._loaded[name]


def draw_prompts(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """`n` prompts drawn uniformly with replacement from `pool` by a generator seeded with `seed`
    (identical on every rank). The first m of a draw of n equal a draw of m with the same seed."""
    g = torch.Generator().manual_seed(int(seed))
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=g).tolist()]


@dataclass
class Batch:
    """One training batch handed to `Method.train_step`."""

    prompts: list[str]  # B prompts of the GLOBAL batch from the "distill" set (group methods repeat them K times)
    seed: int  # per-step seed shared by all ranks (subset choice, group noise, all draws)
    shard: Shard = Shard()  # this process's rank among the data-parallel ranks
    pools: PromptPools | None = None  # the run's prompt sets, for `draw` (None: `draw` reuses `prompts`)
    draw_seed: int = 0  # seed of this step's prompt draws (`prompts` is the "distill" draw)
    micro_batches: int = 1  # micro-batches per process (gradient accumulation), see `chunks`

    def random(self) -> BatchRandom:
        """The step's randomness: per-row draws for the global batch, this rank's rows kept."""
        return BatchRandom(self.seed, self.shard)

    def local(self, prompts: Sequence[str], group_size: int = 1) -> list[str]:
        """This rank's rows of a global per-sample prompt list (e.g. `grouped_prompts(...)`), whole
        groups of `group_size` consecutive rows per rank."""
        rows = len(prompts) // self.shard.world
        if len(prompts) % self.shard.world or rows % group_size:
            raise UserError(f"{len(prompts)} samples in groups of {group_size} cannot be split into whole "
                            f"groups over {self.shard.world} {self.shard.unit()}: make train.batch_size (the step's "
                            f"sample count) a multiple of group_size x {self.shard.world}")
        return self.shard.take(prompts)

    def draw(self, pool: str, n: int) -> list[str]:
        """`n` prompts of the step's global batch from the named prompt set (PromptPools), drawn
        with this step's prompt seed, identical on every rank. Without pools (unit tests) the first
        `n` of `prompts`."""
        if self.pools is None:
            if n > len(self.prompts):
                raise UserError(f"the step needs {n} prompts but the batch holds {len(self.prompts)}: "
                                "raise train.batch_size")
            return list(self.prompts[:n])
        return draw_prompts(self.pools.get(pool), n, self.draw_seed)

    def for_rewards(self) -> "Batch":
        """This step's batch with its prompts drawn from the reward prompt set (same size, same
        seed): what a method uses for a step that optimises external rewards (RTDMD stage 2 draws
        its groups with `draw` directly). On bases with one prompt set it is the same batch."""
        if self.pools is None:
            return self
        return dataclasses.replace(self, prompts=self.draw("reward", len(self.prompts)))

    def chunks(self) -> list["Batch"]:
        """This process's micro-batches (`train.micro_batches` = C; gradient accumulation): C
        batches whose shards are virtual ranks rank x C + c of world x C. Each chunk's `local`
        rows and `random()` draws are exactly the rows and draws of the unchunked step, so a method
        that sums chunk gradients (`core.optim.accumulated_step`) computes the same update whatever
        C is (up to float summation order). Collectives stay on `self.shard` (the process)."""
        if self.micro_batches == 1:
            return [self]
        s, c = self.shard, self.micro_batches
        return [dataclasses.replace(self, shard=Shard(s.rank * c + i, s.world * c, s.device, micro=c),
                                    micro_batches=1) for i in range(c)]


@runtime_checkable
class Method(Protocol):
    """A training method. Construction: `MethodClass(cfg, base, rewards, meter)`.

    `stages` names the stages in order; `stage_of(flops_fraction)` tells which is active.
    Optional `smoke_test_overrides`: the `--set` overrides under which the method runs a few steps
    on batches of 4 to 16 samples (e.g. a group size of 2); every registered method gets the
    smoke, resume and two-process tests with them (tests/test_every_method.py).
    """

    name: str
    source: str  # "paper", "official code", "suite definition (...)" - recorded in results

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One iteration; returns finite scalar logs (loss terms by name)."""

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...

    def generator(self) -> Any:
        """A context manager under which `base` role "student" holds the weights to evaluate
        (the EMA weights where the method keeps an EMA)."""


@runtime_checkable
class Suite(Protocol):
    """An evaluation suite. Construction: `SuiteClass(cfg)` with its nested `Config`."""

    name: str
    version: str
    images_per_prompt: int
    higher_is_better: dict[str, bool]

    def prompts(self) -> list[str]:
        ...

    def score(self, images: Tensor, prompts: Sequence[str], ctx: "EvalContext") -> dict[str, Any]:
        """Metrics for `images` (decoded samples, ordered prompt-major: prompt i's j-th sample
        at i * images_per_prompt + j)."""

    # Optional hooks the engine calls when present: `prepare()` before any image is generated
    # (load the scorer models, or check the files of heavy ones, so missing weights fail in
    # seconds: every built-in suite has one), `bind(base)` (prompts that depend on the base),
    # `sampler(spec)` (a protocol's sampler), `release()` (free a heavy scorer after scoring).


@dataclass
class EvalContext:
    """What a suite may need beyond the images: the base (for exact targets), the run's
    rewards and beta, the resolved run config as a dict, and a way to get the teacher's
    samples on the same prompts and seeds (for FID-T)."""

    base: Any
    rewards: RewardSet
    run_config: dict[str, Any]
    teacher_samples: Any = None  # callable () -> Tensor like `images`, or None
    seed: int = 0


def device_of(module_or_params: Any) -> torch.device:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else iter(module_or_params)
    for p in params:
        return p.device
    return torch.device("cpu")
