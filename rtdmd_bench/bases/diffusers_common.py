"""Shared pieces of the diffusers-backed text-to-image bases (SD3 family, FLUX.2-klein, FLUX.1).

- `LoraSettings`, `AdapterSwitch`: the student's and fake score's LoRA adapters on ONE frozen
  transformer (`lora_adapters.py`, re-exported here).
- weights and local tokenizers: `diffusers_loading.py` (re-exported here); random weights of the
  published architectures (`base.init=random`): `random_weights.py`; prompt files: `prompt_files.py`.
- `DiffusersBase`: the `Base` interface written once over family hooks (`_build`,
  `_encode_text`, `_forward`, `_decode`, `sigmas`); methods never branch on the family.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench import prompt_files
from rtdmd_bench.bases.diffusers_loading import (  # noqa: F401  (re-exported for the family modules)
    check_local_weights, freeze, load_component, missing_weights_message, pick_device,
    weights_location, word_tokenizer,
)
from rtdmd_bench.bases.lora_adapters import (  # noqa: F401  (re-exported for the family modules)
    ATTN_TARGETS, AdapterSwitch, LoraSettings, _peft_config, lora_modules, lora_parameter_count,
)
from rtdmd_bench.bases.random_weights import RANDOM_INIT, random_init_note, random_networks
from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path
from rtdmd_bench.ranges import PositiveInt
from rtdmd_bench.weights import torch_dtype

# A small prompt pool for the tiny bases (their text encoders are random, so any words do).
TINY_PROMPTS: tuple[str, ...] = (
    "a photo of a red cat", "a blue dog on the grass", "two green apples on a table",
    "a yellow car in the city at night", "an astronaut riding a horse", "a small house by the sea",
    "a black and white photo of a bird", "a bowl of soup with a spoon", "a tree under a purple sky",
    "three orange balls on the floor",
)


@dataclass
class DiffusersConfig:
    """Fields every diffusers base shares; each base's nested `Config` overrides the defaults."""

    hub_id: str = ""
    """Hugging Face repository of the (teacher) weights, diffusers layout."""
    base_path: str | None = None
    """Local diffusers directory of the weights; else $RTDMD_BENCH_<BASE>_PATH, else `hub_id`."""
    resolution: PositiveInt = 1024
    """Square image side in pixels (official RTDMD: 1024 for SD3, 512 for FLUX)."""
    weights_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Storage dtype of the frozen weights (LoRA weights stay fp32, peft's default)."""
    autocast_bf16: bool = True
    """Run transformer and VAE under bf16 autocast (official: bf16)."""
    gradient_checkpointing: bool = True
    """Recompute transformer blocks in backward (adapter-aware: see `AdapterSwitch.checkpoint_fn`)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA of the student and fake-score adapters."""
    default_cfg: float = 7.0
    """Teacher CFG scale used by DM terms (official: SD3-M 7.0, SD3.5-M 4.5, FLUX.2 4.0)."""
    max_sequence_length: PositiveInt = 256
    """Text tokens of the long text encoder (T5 / Qwen3)."""
    prompt_file: str | None = "rtdmd:pickscore/train.txt"
    """Distillation prompts (every step's batch; RTDMD stage 1): a .txt/.json/.jsonl file, or a named
    public set downloaded once and verified (default: RTDMD's dataset/pickscore/train.txt, official
    stage 1)."""
    reward_prompt_file: str | None = "rtdmd:geneval/train_metadata.jsonl"
    """Prompts of reward-optimising steps (RTDMD stage 2, the reward baselines): a file or a named
    set (default: RTDMD's dataset/geneval/train_metadata.jsonl, official stage 2, GenEval-style
    metadata whose clauses the geneval-partial reward reads)."""
    device: str = "auto"
    """'auto' = this rank's GPU if any, else CPU; or an explicit torch device string."""
    seed: int = 0
    """Seed of the Gaussian LoRA init (and of the random weights of tiny bases and of `init=random`)."""
    init: Literal["pretrained", "random"] = "pretrained"
    """Frozen weights: 'pretrained' loads them (base_path, $RTDMD_BENCH_<BASE>_PATH or the hub); 'random'
    builds the published architecture (bases/real_configs.py) with random weights seeded by `seed` and
    word tokenizers, with no download and no hub access (the env var is not read), for step-time and
    memory measurements on a GPU without the weights (benchmarks/step_cost.py). Its samples mean
    nothing: the run config, result.json and every eval result say 'random-init'."""


@dataclass
class Networks:
    """What a family's `_build` returns; adapters are attached by `DiffusersBase.prepare`."""

    transformer: nn.Module
    """Frozen teacher weights; carries the fake adapter (and the student one when shared)."""
    vae: nn.Module
    text: dict[str, Any] = field(default_factory=dict)
    """Tokenizers and text encoders, family-specific."""
    generator: nn.Module | None = None
    """A second frozen transformer the student starts from (FLUX.2-klein: the distilled -4B/-9B
    weights); None when the student shares the teacher's weights."""


class DiffusersBase:
    """`Base` over a diffusers transformer + VAE + text encoders (see module docstring).

    Family subclasses set `name`, `env_name`, `gated` and implement `_build`,
    `_encode_text`, `_forward`, `_decode`, `sigmas` and `latent_shape`.
    """

    name = "diffusers"
    env_name = "DIFFUSERS"  # RTDMD_BENCH_<env_name>_PATH
    gated = True
    uses_negative = True  # CFG by an empty-prompt branch (False: guidance-distilled FLUX.1-dev)
    cfg: Any

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.default_cfg = float(cfg.default_cfg)
        self.device = pick_device(cfg.device)
        if cfg.device == "auto" and self.device.type == "cpu" and not self.name.startswith("tiny-"):
            warnings.warn(f"base {self.name!r} found no GPU and runs on CPU (very slow); "
                          "--set base.device=cpu says that is intended", stacklevel=2)
        self.dtype = torch_dtype(cfg.weights_dtype)
        if self.random_init:
            given = [f"base.{k}={getattr(cfg, k)}" for k in ("base_path", "generator_path") if getattr(cfg, k, None)]
            if given:
                raise UserError(f"base.init=random builds random weights and loads none, but {', '.join(given)} "
                                "is set: drop it (and --base-path), or use base.init=pretrained to load those weights")
        self.nets: Networks | None = None
        self._switch: dict[str, AdapterSwitch] = {}
        self._negative: dict[str, Tensor] | None = None

    # ---- random weights (`base.init=random`) ------------------------------------------------
    @property
    def random_init(self) -> bool:
        """A real base built with random weights (tiny bases are random by nature, not by this switch)."""
        return self.cfg.init == "random" and not self.name.startswith("tiny-")

    @property
    def label(self) -> str:
        """The base's name as results show it: `sd3[random-init]` for a random-init real base."""
        return f"{self.name}[{RANDOM_INIT}]" if self.random_init else self.name

    def weights_note(self) -> str | None:
        """The note a random-init base's results carry (None for real weights and tiny bases)."""
        return random_init_note(self.name, self.cfg.seed) if self.random_init else None

    def _random_networks(self, text_keys: Sequence[str], tokenizers: dict[str, Any],
                         separate_generator: bool = False) -> Networks:
        """The family's networks from the recorded architecture, random weights (random_weights.py)."""
        return random_networks(self.name, self.cfg.seed, self.device, self.dtype, text_keys, tokenizers,
                               separate_generator)

    # ---- family hooks ------------------------------------------------------------------------
    def _build(self) -> Networks:
        raise NotImplementedError

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _forward(self, net: nn.Module, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def _decode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sigmas(self, num_steps: int) -> Tensor:
        raise NotImplementedError

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def env_var(self) -> str:
        return f"RTDMD_BENCH_{self.env_name}_PATH"

    def prepare(self, meter: Any = None) -> None:
        """Build or load the networks, freeze them, attach the student/fake LoRA adapters."""
        if self.nets is not None:
            return
        nets = self._build()
        freeze(nets.transformer, nets.vae, nets.generator, *[m for m in nets.text.values() if isinstance(m, nn.Module)])
        for m in (nets.transformer, nets.vae, nets.generator, *nets.text.values()):
            if isinstance(m, nn.Module):
                m.to(self.device)
                if any(p.dtype != self.dtype for p in m.parameters()):  # tiny bases; loaded weights already are
                    m.to(self.dtype)
        seed = int(getattr(self.cfg, "seed", 0))
        shared = nets.generator is None
        self._switch = {"base": AdapterSwitch(nets.transformer, ("fake", "student") if shared else ("fake",),
                                              self.cfg.lora, seed)}
        if not shared:
            self._switch["generator"] = AdapterSwitch(nets.generator, ("student",), self.cfg.lora, seed + 1)
        for sw in self._switch.values():
            if self.cfg.gradient_checkpointing:
                sw.net.enable_gradient_checkpointing(gradient_checkpointing_func=sw.checkpoint_fn)
        self.nets = nets

    def parallelize(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Call each adapter-carrying transformer through `wrap(net)` (DDP, or FSDP sharding the
        frozen weights too); adapters are still switched on the wrapped module itself."""
        self._ready()
        for sw in self._switch.values():
            sw.wrap(wrap)

    def _ready(self) -> Networks:
        if self.nets is None:
            self.prepare(None)
        assert self.nets is not None
        return self.nets

    def _role(self, role: str) -> tuple[AdapterSwitch, str | None]:
        self._ready()
        if role == "teacher":
            return self._switch["base"], None
        if role == "fake":
            return self._switch["base"], "fake"
        if role == "student":
            return self._switch.get("generator", self._switch["base"]), "student"
        raise ValueError(f"unknown role {role!r}; valid: teacher, student, fake")

    # ---- Base interface ----------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """{key: (B, ...)} conditional embeddings plus `neg_<key>` for the empty prompt (CFG),
        computed once and cached."""
        self._ready()
        with torch.no_grad():
            pos = self._encode_text(list(prompts))
            if not self.uses_negative:
                return pos
            if self._negative is None:
                self._negative = self._encode_text([""])
        b = len(prompts)
        neg = {f"neg_{k}": v.expand(b, *v.shape[1:]) for k, v in self._negative.items()}
        return {**pos, **neg}

    def velocity(self, role: str, x: Tensor, sigma: Tensor, cond: dict[str, Tensor],
                 cfg: float | None = None, step: Tensor | None = None) -> Tensor:
        self.check_step(step)
        switch, adapter = self._role(role)
        pos = {k: v for k, v in cond.items() if not k.startswith("neg_")}
        with switch.using(adapter), self._autocast():
            if cfg is None or cfg == 1.0:
                v = self._forward(switch.runner, x, sigma, pos)
            else:  # one batched call: [cond; uncond], v = v_u + w (v_c - v_u) (METHODS.md sec. 1)
                both = {k: torch.cat([v_, cond[f"neg_{k}"]]) for k, v_ in pos.items()}
                v_c, v_u = self._forward(switch.runner, torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
                v = v_u + cfg * (v_c - v_u)
        return v.float()

    def check_step(self, step: Tensor | None) -> None:
        if step is not None:
            raise UserError(f"base {self.name!r} does not support fake-score step conditioning: "
                            "turn it off with --set method.fake_step_conditioning=false")

    def decode(self, x: Tensor) -> Tensor:
        """Latents -> images in [0, 1], (B, 3, H, W); differentiable w.r.t. x."""
        self._ready()
        with self._autocast():
            img = self._decode(x)
        return (img.float() / 2 + 0.5).clamp(0, 1)

    def _autocast(self) -> Any:
        if not self.cfg.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_prompts(self) -> list[str]:
        return self._prompt_set(self.cfg.prompt_file, "prompt_file")

    def reward_prompts(self) -> list[str]:
        return self._prompt_set(self.cfg.reward_prompt_file, "reward_prompt_file")

    def _prompt_set(self, source: str | None, field_name: str) -> list[str]:
        if not source:
            raise UserError(f"base {self.name!r} needs training prompts: --set base.{field_name}=FILE "
                            f"(one prompt per line, or a named set such as {', '.join(prompt_files.TRAINING)})")
        return prompt_files.load_source(source, f"--set base.{field_name}")

    def trainable(self, role: str) -> list[nn.Parameter]:
        if role == "teacher":
            return []
        switch, key = self._role(role)
        return list(switch.params[switch.trainable_adapter(key)].values())

    def restart_adapter(self, role: str) -> bool:
        """RTDMD's stage switch: freeze the role's LoRA into the model (it stays active) and train a
        fresh Gaussian-init LoRA from here on (`AdapterSwitch.restart`). Returns True."""
        switch, key = self._role(role)
        switch.restart(key)
        return True

    def _role_params(self, role: str) -> dict[str, nn.Parameter]:
        """The role's adapter weights: the trainable adapter's under adapter-neutral keys, frozen
        (restarted) ones under `frozen<i>.` + key."""
        switch, key = self._role(role)
        out = dict(switch.params[switch.trainable_adapter(key)])
        for i, name in enumerate(switch.frozen_adapters(key)):
            out.update({f"frozen{i}.{k}": p for k, p in switch.params[name].items()})
        return out

    def state_dict(self, role: str) -> dict[str, Tensor]:
        """LoRA weights of a role, keys without the adapter name (student/fake interchangeable);
        after a restart also the frozen stage-1 adapter (`frozen0.` keys)."""
        if role == "teacher":
            return {}
        return {k: p.detach().clone() for k, p in self._role_params(role).items()}

    def load_state_dict(self, role: str, state: dict[str, Tensor]) -> None:
        if role == "teacher":
            if state:
                raise ValueError("the teacher has no trainable state")
            return
        params = self._role_params(role)
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        wrong = sorted(k for k in set(params) & set(state) if params[k].shape != state[k].shape)
        if missing or extra or wrong:
            raise UserError(f"{role} adapter state does not match base {self.name!r} (LoRA rank/targets "
                            f"differ?): missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k].to(p.dtype))

    # ---- adapters alone and export -----------------------------------------------------------
    def save_adapter(self, role: str, path: str | Path) -> None:
        """The role's LoRA alone as safetensors (written atomically), LoRA settings as metadata."""
        from safetensors.torch import save_file

        meta = {"base": self.name, "role": role, **{k: str(v) for k, v in asdict(self.cfg.lora).items()}}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict(role).items()}, str(tmp), metadata=meta)

    def load_adapter(self, role: str, path: str | Path) -> None:
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise UserError(f"adapter file {path} does not exist")
        self.load_state_dict(role, load_file(str(path)))

    def merged_student(self) -> nn.Module:
        """A plain transformer (no peft layers) with the student LoRA(s) merged, for export/inference."""
        switch, key = self._role("student")
        net = type(switch.net).from_config(switch.net.config)
        net.load_state_dict(switch.merged_state_dict(key))
        net = net.to(self.device)
        return (net if self.dtype == torch.float32 else net.to(self.dtype)).eval()

    def export_student(self, directory: str | Path) -> None:
        """`save_pretrained` (safetensors) of the merged student transformer."""
        self.merged_student().save_pretrained(str(directory), safe_serialization=True)

    # ---- the student as diffusers users load it (`rtdmd-bench export`, rtdmd_bench/export.py) -----
    pipeline_class_name = ""  # the family's stock diffusers pipeline, e.g. "StableDiffusion3Pipeline"

    def pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def student_lora(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The student's LoRA as it is now (under `method.generator()`: the EMA), every active adapter
        concatenated into one: (peft state dict, LoraConfig dict) for the pipeline class's
        `save_lora_weights(dir, transformer_lora_layers=..., transformer_lora_adapter_metadata=...)`."""
        switch, key = self._role("student")
        return switch.lora_layers(key)

    def student_weights(self) -> str:
        """Where the frozen weights under the student's LoRA come from (the LoRA applies to them)."""
        if self.name.startswith("tiny-") or self.random_init:
            return f"{self.label}: random weights of seed {self.cfg.seed}, built by rtdmd_bench (no repository)"
        return weights_location(self.cfg.base_path, self.env_var, self.cfg.hub_id)[0]

    def diffusers_pipeline(self) -> Any:
        """The family's stock pipeline over this base's components, the student's frozen transformer
        copied without any adapter (`load_lora_weights` adds the student) and the scheduler config the
        base records (`scheduler_config`)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        switch, _ = self._role("student")
        scheduler = FlowMatchEulerDiscreteScheduler(**asdict(self.scheduler_config))
        return self._pipeline(switch.plain_copy(), scheduler)

    def _pipeline(self, transformer: nn.Module, scheduler: Any) -> Any:
        raise NotImplementedError

    def pipeline_call(self, num_steps: int) -> dict[str, Any]:
        """Keyword arguments of the stock pipeline's `__call__` that make it walk the student's
        deterministic few-step sampler: the scheduler's `set_timesteps(sigmas=...)` shifts the sigmas
        it is given (SD3: constant shift 3; FLUX: the pipeline's own mu, the one `sigmas(N)` uses), so
        the unshifted few-step grid 1, 1 - 1/N, ..., 1/N becomes exactly `sigmas(N)`; and no CFG (the
        student runs unguided; diffusers guides only when guidance_scale > 1)."""
        grid = [float(v) for v in torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps]
        return {"num_inference_steps": num_steps, "sigmas": grid, "guidance_scale": 1.0,
                "height": self.cfg.resolution, "width": self.cfg.resolution,
                "max_sequence_length": self.cfg.max_sequence_length}

    def weights_error(self, location: str, reason: str, subfolders: Sequence[str]) -> str:
        return missing_weights_message(self.name, self.cfg.hub_id, self.env_var, subfolders,
                                       location, reason, gated=self.gated)

    def resolve_weights(self, cfg_path: str | None, hub_id: str, subfolders: Sequence[str],
                        env_var: str | None = None) -> tuple[str, bool]:
        """Where to load from; a local directory missing a subfolder fails here, before loading."""
        location, local = weights_location(cfg_path, env_var or self.env_var, hub_id)
        if local:
            missing = check_local_weights(location, subfolders)
            if missing:
                reason = (f"{', '.join(missing)} missing in the local directory" if Path(location).expanduser().is_dir()
                          else "the local directory does not exist")
                raise UserError(missing_weights_message(
                    self.name, hub_id, env_var or self.env_var, subfolders, location, reason, gated=self.gated))
        return location, local
