"""`shapes`: a compositional, GenEval-like base on CPU (issue 15).

Scenes of one to four coloured circles, squares and triangles on 24x24 pixels, prompted with
GenEval's templates in its six tags (rtdmd_bench/shapes/scenes.py); the `shapes-geneval` suite
scores samples with a rule-based detector and GenEval's rules module. Where `digits` saturates
(every method draws the asked digit), here the teacher gets counting, colour binding and
positions only partly right, so rewards have headroom.

- Prompts are text; `encode` gives (B, 12) word ids (rtdmd_bench.shapes.nets.tokenize).
- Latents are object slots, (4, 12): per slot presence, position, size, colour and shape logits
  (rtdmd_bench/shapes/slots.py); `decode` is a differentiable soft renderer to (B, 3, 24, 24) images
  in [0, 1], the part a real base's VAE decoder plays (rewards back-propagate through it).
- Teacher: a prompt-conditioned flow-matching `ShapesFlowNet`, trained once and cached (see
  `prepare_shapes`); CFG uses the empty prompt. Student and fake score are full copies of the
  teacher initialised from its weights (as on digits; zero-initialised step embedding).
- Training prompts (`train_prompts`, also the reward prompts) are disjoint from the suite's.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.compute import measure_flops
from rtdmd_bench.core.schedules import few_step_sigmas
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_write_json
from rtdmd_bench.ranges import Positive, PositiveInt
from rtdmd_bench.shapes.cache import cache_paths, evaluator_accuracy, load_or_train
from rtdmd_bench.shapes.nets import MAX_WORDS, ShapesFlowNet, TeacherConfig, guided_velocity, tokenize
from rtdmd_bench.shapes.scenes import split_rows
from rtdmd_bench.shapes.slots import LATENT_SHAPE, decode_slots
from rtdmd_bench.shapes.training import teacher_check, train_teacher

TEACHER_CHECK_FLOOR = 0.3
"""`prepare` refuses a teacher below this GenEval overall score: it did not learn the scenes."""


@dataclass
class ShapesConfig:
    """Configuration of the `shapes` base."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher architecture and training (its hash keys the teacher cache)."""
    default_cfg: float = 4.0
    """Teacher CFG scale used by distribution-matching terms and the teacher check (measured on the
    default teacher, 50-step Euler: GenEval overall 0.39 at 1, 0.52 at 2, 0.55 at 4)."""
    shift: Positive = 1.0
    """Constant timestep shift of the student schedule; 1 = none (small images, as digits)."""
    check_steps: PositiveInt = 50
    """Euler steps of the teacher check's ODE sampler."""
    check_samples_per_prompt: PositiveInt = 8
    """Teacher-check samples per evaluation prompt (fixed seeds)."""
    require_teacher_check: bool = True
    """`prepare` raises if the teacher's GenEval overall is below TEACHER_CHECK_FLOOR. Turn off only
    for deliberately tiny test teachers."""
    progress: bool = True
    """Show rich progress bars while training the cached networks."""


def load_teacher(cfg: TeacherConfig, force: bool = False, progress: bool = True) -> tuple[ShapesFlowNet, dict[str, Any]]:
    """The cached teacher (trained now if absent, or if `force`) and its metadata."""
    return load_or_train("teacher", cfg, lambda: ShapesFlowNet(cfg), lambda: train_teacher(cfg, progress), force)


def _check_key(cfg: ShapesConfig) -> str:
    return f"w{cfg.default_cfg:g}-n{cfg.check_samples_per_prompt}-s{cfg.check_steps}"


def _build(cfg: ShapesConfig, force: bool) -> tuple[ShapesFlowNet, dict[str, Any]]:
    """(teacher, info): load or train the teacher, run its check once per key (recorded in the
    teacher's metadata) and read the evaluator's measured accuracy (cached apart: no teacher in it)."""
    teacher, meta = load_teacher(cfg.teacher, force=force, progress=cfg.progress)
    weights, meta_path = cache_paths("teacher", cfg.teacher)
    checks = meta.setdefault("checks", {})
    if force or _check_key(cfg) not in checks:
        checks[_check_key(cfg)] = teacher_check(teacher, cfg.default_cfg, cfg.check_samples_per_prompt, cfg.check_steps)
        atomic_write_json(meta_path, meta)
    return teacher, {"teacher": str(weights), "teacher_meta": str(meta_path), "teacher_check": checks[_check_key(cfg)],
                     "evaluator_accuracy": evaluator_accuracy()}


def prepare_shapes(cfg: ShapesConfig | None = None, force: bool = False) -> dict[str, Any]:
    """Build (if absent, or if `force`) the shapes teacher cache, run the teacher check and the
    evaluator accuracy measurement, record them. Used by `rtdmd-bench prepare shapes`."""
    return _build(cfg or ShapesConfig(), force)[1]


class Shapes:
    """Coloured shapes on 24x24 pixels from object-slot latents: prompt-conditioned flow teacher,
    student and fake copies."""

    Config = ShapesConfig
    name = "shapes"
    latent_shape: tuple[int, ...] = LATENT_SHAPE

    def __init__(self, cfg: ShapesConfig | None = None) -> None:
        self.cfg = cfg or ShapesConfig()
        self.default_cfg = self.cfg.default_cfg
        self.nets: dict[str, ShapesFlowNet] = {}
        self.runners: dict[str, nn.Module] = {}
        self.prepared: dict[str, Any] = {}

    def prepare(self, meter: Any) -> None:
        """Load (building on first use) the cached teacher; copy it into student and fake score; set
        `meter.teacher_forward_flops`. Nothing is charged to "init" (as on digits)."""
        teacher, self.prepared = _build(self.cfg, force=False)
        check = self.prepared["teacher_check"]
        if self.cfg.require_teacher_check and check["overall"] < TEACHER_CHECK_FLOOR:
            raise UserError(f"shapes: the teacher's GenEval overall is {check['overall']:.2f} (needs >= "
                            f"{TEACHER_CHECK_FLOOR}); train it longer (--set base.teacher.train_steps=...)")
        self.nets = {"teacher": teacher}
        for role in ("student", "fake"):
            self.nets[role] = copy.deepcopy(teacher).train().requires_grad_(True)
        x = torch.zeros(1, *LATENT_SHAPE)
        _, flops = measure_flops(lambda: teacher(x, torch.ones(1), torch.zeros(1, MAX_WORDS, dtype=torch.long)))
        meter.teacher_forward_flops = flops

    def _net(self, role: str) -> ShapesFlowNet:
        if role not in ("teacher", "student", "fake"):
            raise ValueError(f"unknown role {role!r}; valid: teacher, student, fake")
        if not self.nets:
            raise RuntimeError("Shapes.prepare(meter) must run before the networks are used")
        return self.nets[role]

    def train_prompts(self) -> list[str]:
        """The training prompts (disjoint from the suite's evaluation prompts)."""
        return [r["prompt"] for r in split_rows("train")]

    def reward_prompts(self) -> list[str]:
        """Reward-optimising steps train on the same prompts (one prompt set on this base)."""
        return self.train_prompts()

    def restart_adapter(self, role: str) -> bool:
        """Nothing to restart: the student and fake score are whole networks, not adapters."""
        return False

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """(B, 12) long word ids; words outside the benchmark's vocabulary raise UserError."""
        return tokenize(prompts)

    def velocity(self, role: str, x: Tensor, sigma: Tensor, cond: Tensor, cfg: float | None = None,
                 step: Tensor | None = None) -> Tensor:
        """(B, 4, 12) velocity eps - x0 of `role`; `cfg` applies CFG against the empty prompt.
        The teacher is step-agnostic, so `step` only reaches the student and fake score."""
        net = self.runners[role] if role in self.runners else self._net(role)
        if x.shape[1:] != LATENT_SHAPE:
            raise ValueError(f"shapes latents are (B, {LATENT_SHAPE[0]}, {LATENT_SHAPE[1]}), got {tuple(x.shape)}")
        if cond.shape != (x.shape[0], MAX_WORDS):
            raise ValueError(f"shapes cond must be (B, {MAX_WORDS}) word ids from encode(), got {tuple(cond.shape)}")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return guided_velocity(net, x, sigma, cond.to(x.device), cfg, None if role == "teacher" else step)

    def decode(self, x: Tensor) -> Tensor:
        """(B, 4, 12) slot latents -> (B, 3, 24, 24) images in [0, 1] (differentiable renderer)."""
        return decode_slots(x)

    def sigmas(self, num_steps: int) -> Tensor:
        """(num_steps + 1,) descending sigmas with the base's shift, ending at 0."""
        return few_step_sigmas(num_steps, shift=self.cfg.shift)

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """No diffusers scheduler: the teacher walks the student's formula (N uniform steps)."""
        return self.sigmas(num_steps)

    def parallelize(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Call the student and fake score through `wrap(net)` (the frozen teacher stays bare)."""
        self.runners = {role: wrap(self._net(role)) for role in ("student", "fake")}
        self.params = {role: list(self._net(role).parameters()) for role in ("student", "fake")}

    def _trainable_net(self, role: str) -> nn.Module:
        if role == "teacher":
            raise ValueError("the shapes teacher is frozen; only 'student' and 'fake' are trainable")
        return self._net(role)

    def trainable(self, role: str) -> list[nn.Parameter]:
        params = getattr(self, "params", {})
        return list(params[role]) if role in params else list(self._trainable_net(role).parameters())

    def state_dict(self, role: str) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self._trainable_net(role).state_dict().items()}

    def load_state_dict(self, role: str, state: dict[str, Tensor]) -> None:
        self._trainable_net(role).load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        """Provenance for results JSON: configs, cache paths, teacher check, evaluator accuracy."""
        return {"config": asdict(self.cfg), **self.prepared}
