"""`toy2d`: a prompt-conditional 2-D Gaussian-mixture teacher with an exact velocity field.

The teacher is analytic (rtdmd_bench.toy_mixture.mixture_velocity); the student and the fake
score are small MLPs, initialised as DMD initialises from a teacher: both start from one
network fitted by regression to the teacher's exact conditional velocity (cached on disk,
its cost charged to the meter's "init" role).

Prompts select subsets of the mixture components ("upper half" -> the modes with y > 0);
the unconditional field used by CFG is the mixture of all components. `Toy2DHard` is the
same class with harder defaults (unequal weights, close modes).

Teacher-forward unit: the analytic teacher has no network, so `meter.teacher_forward_flops`
(the unit of budgets written in `tf`) is defined as ONE forward of the student-size MLP on
ONE sample, measured with FlopCounterMode in `prepare`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rtdmd_bench.compute import measure_flops
from rtdmd_bench.core.schedules import few_step_sigmas
from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path
from rtdmd_bench.paths import cache_dir, config_hash
from rtdmd_bench.ranges import NonNegative, NonNegativeInt, Positive, PositiveInt
from rtdmd_bench.toy_mixture import Mixture, mixture_velocity

FIT_FORMAT = 1  # bump when the fit procedure changes, so stale caches are not reused


class VelocityMLP(nn.Module):
    """v(x, sigma, prompt, step): MLP on [x, Fourier(sigma), prompt embedding, step one-hot]."""

    def __init__(self, num_prompts: int, num_step_slots: int, hidden: int, depth: int,
                 sigma_freqs: int, prompt_dim: int) -> None:
        super().__init__()
        self.num_step_slots = num_step_slots
        self.register_buffer("freqs", math.pi * torch.arange(1, sigma_freqs + 1, dtype=torch.float32))
        self.prompt_emb = nn.Embedding(num_prompts, prompt_dim)
        width = 2 + 1 + 2 * sigma_freqs + prompt_dim + num_step_slots
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: Tensor, prompt: Tensor, slot: Tensor) -> Tensor:
        # x (B, 2), sigma (B,), prompt (B,) long, slot (B,) long in [0, num_step_slots)
        ang = sigma[:, None] * self.freqs  # (B, F)
        feats = [x, sigma[:, None], torch.sin(ang), torch.cos(ang), self.prompt_emb(prompt),
                 nn.functional.one_hot(slot, self.num_step_slots).to(x.dtype)]
        return self.net(torch.cat(feats, -1))  # (B, 2)


class Toy2D:
    """2-D Gaussian-mixture teacher with exact velocity; MLP student and fake score."""

    name = "toy2d"
    latent_shape = (2,)

    @dataclass
    class Config:
        num_modes: PositiveInt = 8
        """Number of mixture components, placed on a ring."""
        radius: NonNegative = 4.0
        """Ring radius."""
        angles_deg: tuple[float, ...] = ()
        """Component angles in degrees; empty = equally spaced, mode k at 360 (k + 0.5) / K."""
        std: Positive = 0.3
        """Isotropic standard deviation of every component."""
        weights: tuple[NonNegative, ...] = ()
        """Unnormalised component weights; empty = equal."""
        prompts: tuple[str, ...] = ("all modes: 0 1 2 3 4 5 6 7", "upper half: 0 1 2 3",
                                    "left half: 2 3 4 5", "modes 0 and 4: 0 4")
        """Prompts as "name: i j ...", the component indices the prompt selects (weights
        renormalised within the subset). With the default ring, modes 0-3 have y > 0."""
        default_cfg: float = 1.0
        """Teacher CFG scale used by DM terms (1 = the exact conditional field)."""
        shift: Positive = 3.0
        """Timestep shift of the few-step schedule (core.schedules.few_step_sigmas). 3 gives SD3's
        4-step schedule [1, .9, .75, .5, 0]; the teacher's own 4-step CPS sampler is then far from
        the teacher (KL ~2.6), which is what few-step distillation has to fix (with shift 1 it is ~0.7)."""
        num_sampler_steps: PositiveInt = 4
        """Largest sampler step index + 1 the fake score can be conditioned on (one-hot slots;
        one extra slot means "no step")."""
        hidden: PositiveInt = 128
        """Width of the student / fake MLP."""
        depth: PositiveInt = 3
        """Hidden layers of the student / fake MLP."""
        sigma_freqs: NonNegativeInt = 8
        """Fourier frequencies of the sigma embedding (sin/cos of k pi sigma, k = 1..F)."""
        prompt_dim: PositiveInt = 16
        """Prompt embedding width."""
        fit_steps: NonNegativeInt = 2000
        """Adam steps of the regression of the initial MLP onto the exact teacher velocity."""
        fit_batch: PositiveInt = 512
        """Batch size of that regression."""
        fit_lr: NonNegative = 1e-2
        """Peak Adam learning rate of the fit (cosine decay to 0). Measured on the default toy
        (2000 steps): lr 2e-3 -> velocity MSE 0.009, student 50-step Euler KL 0.27 nats;
        1e-2 -> MSE 0.0014, KL 0.10 (exact teacher: 0.05); 2e-2 barely better."""
        init_seed: int = 0
        """Seed of the MLP initialisation and the fit data (the fit is deterministic)."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or self.Config()
        self.default_cfg = float(self.cfg.default_cfg)
        self.mixture = self._build_mixture()
        self.prompt_names, self.prompt_modes = self._parse_prompts()
        self._prompt_ids = {name: i for i, name in enumerate(self.prompt_names)}  # names are unique
        self.conditionals = [self.mixture.subset(m) for m in self.prompt_modes]
        self.prompt_log_weights = torch.full((len(self.prompt_modes), self.cfg.num_modes), -math.inf,
                                             dtype=torch.float64)  # (P, K)
        for pid, modes in enumerate(self.prompt_modes):
            w = self.mixture.weights[modes]
            self.prompt_log_weights[pid, modes] = torch.log(w / w.sum())
        self.nets = {role: self._new_net() for role in ("student", "fake")}
        self.runners: dict[str, nn.Module] = dict(self.nets)  # what velocity calls (DDP wrappers)
        for net in self.nets.values():
            net.requires_grad_(False)  # frozen until prepare() installs the fitted weights
        self.init_info: dict[str, Any] = {}
        self._prepared = False

    # ------------------------------------------------------------------ construction
    def _build_mixture(self) -> Mixture:
        c = self.cfg
        k = c.num_modes
        if k < 1 or c.std <= 0:
            raise UserError(f"toy2d needs num_modes >= 1 and std > 0 (got {k}, {c.std})")
        angles = c.angles_deg or tuple(360.0 * (i + 0.5) / k for i in range(k))
        weights = c.weights or (1.0,) * k
        if len(angles) != k or len(weights) != k:
            raise UserError(f"toy2d angles_deg ({len(angles)}) and weights ({len(weights)}) must "
                            f"each be empty or have num_modes={k} entries")
        if min(weights) <= 0:
            raise UserError(f"toy2d weights must be positive, got {weights}")
        rad = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
        means = c.radius * torch.stack([torch.cos(rad), torch.sin(rad)], -1)  # (K, 2)
        covs = (c.std ** 2) * torch.eye(2, dtype=torch.float64).expand(k, 2, 2).clone()
        w = torch.tensor(weights, dtype=torch.float64)
        return Mixture(w / w.sum(), means, covs)

    def _parse_prompts(self) -> tuple[list[str], list[list[int]]]:
        names, modes = [], []
        for spec in self.cfg.prompts:
            name, sep, idx = spec.rpartition(":")
            try:
                ids = [int(t) for t in idx.split()]
            except ValueError:
                ids = []
            if not sep or not name.strip() or not ids or not all(0 <= i < self.cfg.num_modes for i in ids):
                raise UserError(f"toy2d prompt spec {spec!r} must be 'name: i j ...' with component "
                                f"indices in [0, {self.cfg.num_modes})")
            names.append(name.strip())
            modes.append(sorted(set(ids)))
        if len(set(names)) != len(names):
            raise UserError(f"toy2d prompt names must be unique, got {names}")
        return names, modes

    def _new_net(self) -> VelocityMLP:
        c = self.cfg
        return VelocityMLP(len(self.prompt_names), c.num_sampler_steps + 1, c.hidden, c.depth,
                           c.sigma_freqs, c.prompt_dim)

    # ------------------------------------------------------------------ Base interface
    def train_prompts(self) -> list[str]:
        return list(self.prompt_names)

    def reward_prompts(self) -> list[str]:
        """Reward-optimising steps train on the same prompts (one prompt set on this base)."""
        return self.train_prompts()

    def restart_adapter(self, role: str) -> bool:
        """Nothing to restart: the student and fake score are whole networks, not adapters."""
        return False

    def prompt_id(self, prompt: str) -> int:
        pid = self._prompt_ids.get(prompt)
        if pid is None:
            raise UserError(f"unknown toy2d prompt {prompt!r}; valid prompts: "
                            + ", ".join(repr(p) for p in self.prompt_names))
        return pid

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """(B,) long prompt ids (a dict lookup each: encoding runs on every step and every curve
        point, for hundreds of prompts)."""
        try:
            return torch.tensor([self._prompt_ids[p] for p in prompts], dtype=torch.long)
        except (KeyError, TypeError):
            return torch.tensor([self.prompt_id(p) for p in prompts], dtype=torch.long)  # names the unknown one

    def teacher_mixture(self, prompt: str) -> Mixture:
        """The exact data distribution of the teacher for one prompt."""
        return self.conditionals[self.prompt_id(prompt)]

    def teacher_velocity(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        """Exact conditional velocity E[eps - x0 | x_sigma, prompt]: (B, 2) float64.

        One call over all components with per-sample log-weights (-inf outside the prompt's
        subset): equal to each prompt's conditional mixture, at a cost that does not depend on
        which prompts are in the batch."""
        return mixture_velocity(self.mixture, x, sigma, self.prompt_log_weights[cond])

    def velocity(self, role: str, x: Tensor, sigma: Tensor, cond: Tensor,
                 cfg: float | None = None, step: Tensor | None = None) -> Tensor:
        """Velocity of `role` at (x (B, 2), sigma (B,)). The teacher is exact and ignores `step`;
        `cfg` applies to the teacher only (v_u + w (v_c - v_u), uncond = all components)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.dtype)
        if role == "teacher":
            v = self.teacher_velocity(x, sigma, cond)
            if cfg is not None:
                v_uncond = mixture_velocity(self.mixture, x, sigma)
                v = v_uncond + cfg * (v - v_uncond)
            return v.to(x.dtype)
        if role not in self.nets:
            raise ValueError(f"unknown role {role!r}; toy2d roles: teacher, student, fake")
        if cfg is not None:
            raise ValueError("toy2d: cfg applies to the teacher only; the student and fake score "
                             "run without CFG (METHODS.md section 1)")
        if not self._prepared:
            raise RuntimeError("toy2d: call prepare(meter) before using the student or fake score")
        return self.runners[role](x, sigma, cond, self._slots(step, x.shape[0]))

    def parallelize(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Call the student and fake score through `wrap(net)` (data-parallel wrappers)."""
        self.runners = {role: wrap(net) for role, net in self.nets.items()}
        # The parameters as the wrapper holds them now (FSDP2: the shards). FSDP2 leaves a root
        # module unsharded after a forward, so asking the module again later could hand out the
        # temporary unsharded tensors, which never receive gradients.
        self.params = {role: list(net.parameters()) for role, net in self.nets.items()}

    def _slots(self, step: Tensor | None, batch: int) -> Tensor:
        """Step one-hot slots: step index k -> slot k; None -> the last ("no step") slot."""
        none_slot = self.cfg.num_sampler_steps
        if step is None:
            return torch.full((batch,), none_slot, dtype=torch.long)
        step = step.long().expand(batch) if step.ndim == 0 else step.long()
        if bool(((step < 0) | (step >= none_slot)).any()):
            raise ValueError(f"toy2d: step indices must be in [0, {none_slot}), got {step.tolist()}"
                             " (raise base.num_sampler_steps)")
        return step

    def decode(self, x: Tensor) -> Tensor:
        """The toy's "image" is the 2-D point itself."""
        return x

    def sigmas(self, num_steps: int) -> Tensor:
        return few_step_sigmas(num_steps, shift=self.cfg.shift)

    def teacher_sigmas(self, num_steps: int, pipeline: bool = False) -> Tensor:
        """The toy has no diffusers scheduler: its teacher walks the same shifted formula as the
        student (what the committed teacher rows used)."""
        return self.sigmas(num_steps)

    def trainable(self, role: str) -> list[nn.Parameter]:
        params = getattr(self, "params", {})
        return list(params[role]) if role in params else list(self._net(role).parameters())

    def state_dict(self, role: str) -> dict[str, Tensor]:
        """A copy (so callers can swap weights, e.g. for EMA, and restore them)."""
        return {k: v.detach().clone() for k, v in self._net(role).state_dict().items()}

    def load_state_dict(self, role: str, state: dict[str, Tensor]) -> None:
        self._net(role).load_state_dict(state)

    def _net(self, role: str) -> VelocityMLP:
        if role not in self.nets:
            raise ValueError(f"toy2d role {role!r} has no trainable state; roles: student, fake")
        return self.nets[role]

    # ------------------------------------------------------------------ initialisation
    def cache_path(self) -> Path:
        # Fields that do not change the fitted network (sampling schedule, CFG) stay out of the key.
        fit_cfg = {k: v for k, v in asdict(self.cfg).items() if k not in ("shift", "default_cfg")}
        key = config_hash({"config": fit_cfg, "fit_format": FIT_FORMAT})
        return cache_dir("toy2d") / f"{type(self).__name__.lower()}-{key}.safetensors"

    def prepare(self, meter: Any) -> None:
        """Load (or fit and cache) the initial MLP; student and fake both start from it.

        Charges the fit's FLOPs to meter role "init" even on a cache hit (the cost belongs to
        the recipe), and sets `meter.teacher_forward_flops` (see the module docstring)."""
        path = self.cache_path()
        fit_net = self._new_net()
        if os.path.exists(path):
            try:
                fit_net.load_state_dict(load_file(str(path)))
                with safe_open(str(path), "pt") as f:
                    mse = float(f.metadata()["fit_mse"])
            except Exception as exc:  # a truncated or foreign file: say which one to delete
                raise UserError(f"toy2d: cannot load the cached student init {path} ({exc}); delete "
                                "it and run again to refit") from exc
            self.init_info = {"loaded_from_cache": True, "path": str(path), "fit_mse": mse}
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.init_seed)
                fit_net = self._new_net()  # deterministic init from the seed
            mse = fit_to_teacher(fit_net, self, self.cfg)
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in fit_net.state_dict().items()}, str(tmp),
                          metadata={"fit_mse": repr(mse), "config": repr(asdict(self.cfg))})
            self.init_info = {"loaded_from_cache": False, "path": str(path), "fit_mse": mse}
        for net in self.nets.values():
            net.load_state_dict(fit_net.state_dict())
            net.requires_grad_(True)
        self._prepared = True
        fwd, bwd = self.fit_step_flops()
        meter.add("init", "fwd", fwd * self.cfg.fit_steps, calls=self.cfg.fit_steps)
        meter.add("init", "bwd", bwd * self.cfg.fit_steps)
        meter.teacher_forward_flops = self.one_sample_forward_flops()

    def fit_batch(self, gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Regression data: prompt ~ U, x0 ~ teacher(prompt), sigma ~ U(0,1), random step slot;
        target = the exact conditional velocity at x_sigma. Returns x, sigma, prompt, slot, v."""
        prompt = torch.randint(len(self.prompt_names), (batch,), generator=gen)
        x0 = torch.empty(batch, 2, dtype=torch.float64)
        for pid in range(len(self.prompt_names)):
            mask = prompt == pid
            x0[mask] = self.conditionals[pid].sample(int(mask.sum()), gen)
        eps = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
        sigma = torch.rand(batch, generator=gen, dtype=torch.float64)
        x = (1 - sigma[:, None]) * x0 + sigma[:, None] * eps
        # Every step slot (and "no step") sees the same target, so the fake score starts equal to
        # the teacher whether or not the method conditions it on the step.
        slot = torch.randint(self.cfg.num_sampler_steps + 1, (batch,), generator=gen)
        v = self.teacher_velocity(x, sigma, prompt)
        return x.float(), sigma.float(), prompt, slot, v.float()

    def fit_step_flops(self) -> tuple[float, float]:
        """(forward incl. the analytic targets, backward) FLOPs of one fit step."""
        net = self._new_net()
        gen = torch.Generator().manual_seed(0)
        (x, sigma, prompt, slot, v), data_flops = measure_flops(
            lambda: self.fit_batch(gen, self.cfg.fit_batch))
        loss, fwd = measure_flops(lambda: (net(x, sigma, prompt, slot) - v).pow(2).mean())
        _, bwd = measure_flops(loss.backward)
        return data_flops + fwd, bwd

    def one_sample_forward_flops(self) -> float:
        net = self._new_net()
        z = torch.zeros(1, 2)
        one = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            _, flops = measure_flops(lambda: net(z, torch.ones(1), one, one))
        return flops


def fit_to_teacher(net: VelocityMLP, base: Toy2D, cfg: Toy2D.Config) -> float:
    """Adam regression of `net` onto the exact teacher velocity; returns the final-100-step MSE."""
    with single_thread():
        return _fit_loop(net, base, cfg)


def _fit_loop(net: VelocityMLP, base: Toy2D, cfg: Toy2D.Config) -> float:
    gen = torch.Generator().manual_seed(cfg.init_seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.fit_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.fit_steps)
    recent: list[float] = []
    for _ in range(cfg.fit_steps):
        x, sigma, prompt, slot, v = base.fit_batch(gen, cfg.fit_batch)
        loss = (net(x, sigma, prompt, slot) - v).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-100:]
    return sum(recent) / max(len(recent), 1)


class Toy2DHard(Toy2D):
    """The toy with unequal weights and close modes: coverage of small modes is hard."""

    name = "toy2d-hard"

    @dataclass
    class Config(Toy2D.Config):
        angles_deg: tuple[float, ...] = (10.0, 30.0, 60.0, 150.0, 170.0, 200.0, 280.0, 300.0)
        """Component angles in degrees: three close pairs (20 degrees = 1.4 = 4.6 std apart)."""
        weights: tuple[float, ...] = (0.30, 0.04, 0.20, 0.10, 0.02, 0.16, 0.08, 0.10)
        """Unequal weights, two rare modes (4% and 2%) next to heavier neighbours."""
        prompts: tuple[str, ...] = ("all modes: 0 1 2 3 4 5 6 7", "upper half: 0 1 2 3 4",
                                    "left half: 3 4 5", "modes 0 and 4: 0 4")
        """Same prompt names as toy2d, with the subsets of this layout (y > 0: modes 0-4)."""
