"""`digits`: 8x8 handwritten digits with a trained flow teacher, on a laptop CPU (issue 4).

Where `toy2d` proves the mathematics, `digits` shows the methods on images, where a reward
(`digit-correct`, `digit-ink`) and fidelity to the teacher pull against each other.

- Prompts are text ("a handwritten digit seven", "a handwritten 7", "digit 7"), parsed into
  the class 0..9 (`rtdmd_bench.digits.data.parse_prompt`); `encode` returns (B,) long labels.
- Latents are the images themselves, (1, 8, 8) in [-1, 1]; `decode` maps them to grey
  images in [0, 1] repeated to (B, 3, 8, 8).
- Teacher: a class-conditional flow-matching `FlowNet`, trained once and cached (see
  `prepare_digits`); CFG uses the null class. Student and fake score are full copies of the
  teacher's network initialised from its weights, as in DMD; their zero-initialised step
  embedding makes them equal to the teacher until trained (fake_step_conditioning).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.compute import measure_flops
from rtdmd_bench.core.schedules import few_step_sigmas
from rtdmd_bench.digits.cache import cache_key, cache_paths, load_classifier, load_teacher
from rtdmd_bench.digits.data import DIGIT_WORDS, IMAGE_SHAPE, NUM_CLASSES, parse_prompts
from rtdmd_bench.digits.nets import ClassifierConfig, FlowNet, TeacherConfig, guided_velocity
from rtdmd_bench.digits.training import TEACHER_CHECK_THRESHOLD, teacher_check
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_write_json
from rtdmd_bench.ranges import Positive, PositiveInt


@dataclass
class DigitsConfig:
    """Configuration of the `digits` base."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher architecture and training (its hash keys the teacher cache)."""
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    """Classifier used for the teacher check (same defaults as the rewards and the suite)."""
    default_cfg: float = 2.0
    """Teacher CFG scale used by distribution-matching terms (and by the teacher check)."""
    shift: Positive = 1.0
    """Constant timestep shift of the student schedule; 1 = none (8x8 images carry little
    signal to destroy, so SD3's high-resolution shift of 3 is not needed)."""
    check_steps: PositiveInt = 50
    """Euler steps of the teacher check's ODE sampler (issue 4: 50)."""
    check_samples_per_class: PositiveInt = 50
    """Teacher-check samples per class (fixed seeds)."""
    require_teacher_check: bool = True
    """`prepare` raises if fewer than 90% of teacher samples are classified as prompted.
    Turn off only for deliberately tiny test teachers."""
    progress: bool = True
    """Show rich progress bars while training the cached networks."""


def _check_key(cfg: DigitsConfig) -> str:
    """Which check: the result depends on the classifier, the guidance scale and the sampler."""
    return (f"{cache_key('classifier', cfg.classifier)}-w{cfg.default_cfg:g}-n{cfg.check_samples_per_class}"
            f"-s{cfg.check_steps}")


def _build(cfg: DigitsConfig, force: bool) -> tuple[FlowNet, dict[str, Any]]:
    """(teacher, info): load or train both networks, run the check once per key, record it."""
    clf, clf_meta = load_classifier(cfg.classifier, force=force, progress=cfg.progress)
    teacher, t_meta = load_teacher(cfg.teacher, force=force, progress=cfg.progress)
    t_path, t_meta_path = cache_paths("teacher", cfg.teacher)
    c_path, c_meta_path = cache_paths("classifier", cfg.classifier)
    check = t_meta.get("checks", {}).get(_check_key(cfg))
    if check is None or force:
        check = teacher_check(teacher, clf, cfg.default_cfg, cfg.check_samples_per_class, cfg.check_steps)
        t_meta.setdefault("checks", {})[_check_key(cfg)] = check
        atomic_write_json(t_meta_path, t_meta)
    return teacher, {"teacher": str(t_path), "teacher_meta": str(t_meta_path), "classifier": str(c_path),
                     "classifier_meta": str(c_meta_path),
                     "classifier_held_out_accuracy": clf_meta["held_out_accuracy"], "teacher_check": check}


def prepare_digits(cfg: DigitsConfig | None = None, force: bool = False) -> dict[str, Any]:
    """Build (if absent, or if `force`) the digits classifier and teacher caches, run the
    teacher check and record it in the teacher's metadata JSON (under "checks").

    Returns {"teacher": path, "teacher_meta": path, "classifier": path, "classifier_meta": path,
    "classifier_held_out_accuracy": float, "teacher_check": {...}}. Used by
    `rtdmd-bench prepare digits`; `Digits.prepare` does the same on first use."""
    return _build(cfg or DigitsConfig(), force)[1]


class Digits:
    """8x8 handwritten digits: trained class-conditional flow teacher, student and fake copies."""

    Config = DigitsConfig
    name = "digits"
    latent_shape: tuple[int, ...] = IMAGE_SHAPE

    def __init__(self, cfg: DigitsConfig | None = None) -> None:
        self.cfg = cfg or DigitsConfig()
        self.default_cfg = self.cfg.default_cfg
        self.nets: dict[str, FlowNet] = {}
        self.runners: dict[str, nn.Module] = {}  # data-parallel wrappers of student and fake
        self.prepared: dict[str, Any] = {}

    # --------------------------------------------------------------------- setup
    def prepare(self, meter: Any) -> None:
        """Load (building on first use) the cached teacher and classifier; copy the teacher into
        student and fake score; set `meter.teacher_forward_flops`.

        Nothing is charged to "init": the teacher is the pretrained model every method shares
        (like SD3's weights on the real bases), not part of the distillation, and copying
        weights costs no FLOPs."""
        teacher, self.prepared = _build(self.cfg, force=False)
        check = self.prepared["teacher_check"]
        if self.cfg.require_teacher_check and not check["passed"]:
            raise UserError(
                f"digits: the classifier labels only {check['accuracy']:.1%} of the teacher's CFG samples as "
                f"prompted (needs >= {TEACHER_CHECK_THRESHOLD:.0%}); train it longer "
                "(--set base.teacher.train_steps=...) or raise base.default_cfg")
        self.nets = {"teacher": teacher}
        for role in ("student", "fake"):
            net = copy.deepcopy(teacher).train()
            net.requires_grad_(True)
            self.nets[role] = net
        x = torch.zeros(1, *IMAGE_SHAPE)
        _, flops = measure_flops(lambda: teacher(x, torch.ones(1), torch.zeros(1, dtype=torch.long)))
        meter.teacher_forward_flops = flops

    def _net(self, role: str) -> FlowNet:
        if role not in ("teacher", "student", "fake"):
            raise ValueError(f"unknown role {role!r}; valid: teacher, student, fake")
        if not self.nets:
            raise RuntimeError("Digits.prepare(meter) must run before the networks are used")
        return self.nets[role]

    # --------------------------------------------------------------------- prompts
    def train_prompts(self) -> list[str]:
        """30 prompts: every class in three phrasings (word, numeral, short)."""
        out = []
        for c, word in enumerate(DIGIT_WORDS):
            out += [f"a handwritten digit {word}", f"a handwritten {c}", f"digit {c}"]
        return out

    def reward_prompts(self) -> list[str]:
        """Reward-optimising steps train on the same prompts (one prompt set on this base)."""
        return self.train_prompts()

    def restart_adapter(self, role: str) -> bool:
        """Nothing to restart: the student and fake score are whole networks, not adapters."""
        return False

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """(B,) long digit classes; malformed prompts raise UserError."""
        return parse_prompts(prompts)

    # --------------------------------------------------------------------- networks
    def velocity(self, role: str, x: Tensor, sigma: Tensor, cond: Tensor, cfg: float | None = None,
                 step: Tensor | None = None) -> Tensor:
        """(B, 1, 8, 8) velocity eps - x0 of `role`; `cfg` applies CFG against the null class.

        The teacher is step-agnostic (it was never trained with a step), so `step` only
        reaches the student and fake score."""
        net = self.runners[role] if role in self.runners else self._net(role)
        if x.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"digits latents are (B, 1, 8, 8), got {tuple(x.shape)}")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if cond.shape != (x.shape[0],) or cond.max() >= NUM_CLASSES:
            raise ValueError(f"digits cond must be (B,) labels 0..9 from encode(), got {tuple(cond.shape)}")
        return guided_velocity(net, x, sigma, cond, cfg, None if role == "teacher" else step)

    def decode(self, x: Tensor) -> Tensor:
        """(B, 1, 8, 8) in [-1, 1] -> (B, 3, 8, 8) grey images in [0, 1] (clamped)."""
        return ((x + 1) / 2).clamp(0, 1).repeat(1, 3, 1, 1)

    def sigmas(self, num_steps: int) -> Tensor:
        """(num_steps + 1,) descending sigmas with the base's shift, ending at 0."""
        return few_step_sigmas(num_steps, shift=self.cfg.shift)

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """No diffusers scheduler here: the teacher walks the same formula as the student (with
        shift 1, N uniform steps; what the committed teacher rows and FID-T references used)."""
        return self.sigmas(num_steps)

    def parallelize(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Call the student and fake score through `wrap(net)` (the frozen teacher stays bare)."""
        self.runners = {role: wrap(self._net(role)) for role in ("student", "fake")}
        # The parameters as the wrapper holds them now (FSDP2 shards; see Toy2D.parallelize).
        self.params = {role: list(self._net(role).parameters()) for role in ("student", "fake")}

    def _trainable_net(self, role: str) -> nn.Module:
        if role == "teacher":
            raise ValueError("the digits teacher is frozen; only 'student' and 'fake' are trainable")
        return self._net(role)

    def trainable(self, role: str) -> list[nn.Parameter]:
        params = getattr(self, "params", {})
        return list(params[role]) if role in params else list(self._trainable_net(role).parameters())

    def state_dict(self, role: str) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self._trainable_net(role).state_dict().items()}

    def load_state_dict(self, role: str, state: dict[str, Tensor]) -> None:
        self._trainable_net(role).load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        """Provenance for results JSON: configs, cache paths, teacher check."""
        return {"config": asdict(self.cfg), **self.prepared}
