"""LoRA adapters of the diffusers bases (peft): the settings, which Linear layers get them, and
`AdapterSwitch`: named adapters on ONE frozen transformer, switched per call, so teacher + fake
(+ student) cost one copy of the weights (docs/architecture.md, "The four interfaces"), with RTDMD's stage-2 restart.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.errors import UserError
from rtdmd_bench.ranges import Positive, PositiveInt

ATTN_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)
"""Official RTDMD LoRA targets for SD3/SD3.5/FLUX.1 (configs/cold_start/sd3m.yaml)."""

@dataclass
class LoraSettings:
    """peft LoRA of the student and fake-score adapters."""

    rank: PositiveInt = 32
    """LoRA rank r (official RTDMD: 32)."""
    alpha: Positive = 64.0
    """LoRA alpha; the update is scaled by alpha / r (official: 64)."""
    targets: tuple[str, ...] = ATTN_TARGETS
    """Module-name suffixes that receive LoRA (peft `target_modules`)."""
    init: Literal["gaussian", "default"] = "gaussian"
    """peft `init_lora_weights`: 'gaussian' draws A ~ N(0, 1/r), B = 0 (official); both start
    exactly at the base weights."""


def lora_modules(net: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """The Linear modules whose name ends with a target (peft's suffix rule). Non-Linear matches are
    skipped, so 'attn.to_out' takes FLUX.2's single-block projection but not the double blocks'
    `to_out` ModuleList (whose `.0` is matched by 'attn.to_out.0'), as the official configs intend."""
    return {name: m for name, m in net.named_modules()
            if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)}


def _peft_config(names: list[str], lora: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=names,
                      init_lora_weights=True if lora.init == "default" else "gaussian", lora_dropout=0.0)


def lora_parameter_count(net: nn.Module, lora: LoraSettings) -> int:
    """Parameters one adapter adds: r * (in + out) per targeted Linear (works on meta modules)."""
    return sum(lora.rank * (m.in_features + m.out_features) for m in lora_modules(net, lora.targets).values())


class AdapterSwitch:
    """Named peft LoRA adapters on one transformer, one per role ("student", "fake");
    `using(role)` selects the role's adapters, `using(None)` none (the teacher).

    peft's own `set_adapter` / `enable_adapters(False)` also flip `requires_grad` of the inactive
    adapters. We undo that after every switch: a method may build a graph through the student,
    then call the fake score, then back-propagate, and the student's LoRA must still receive its
    gradient. Inactive adapters simply do not take part in the forward, so they get no gradient.

    Restart (RTDMD's stage switch, `restart`): a role's adapter is frozen (it stays active, so the
    function is unchanged) and a fresh Gaussian-init adapter stacked on it becomes the trainable
    one: the official code merges the stage-1 LoRA into its own copy of the weights and starts a
    new LoRA; the teacher shares these frozen weights here, so the stage-1 delta stays a frozen
    adapter instead (the same function, without the bf16 rounding of a merge). The fresh adapter
    is created on demand, or before a data-parallel wrapper is built (`wrap`), which must see every
    parameter it will ever synchronise.
    """

    def __init__(self, net: nn.Module, names: Sequence[str], lora: LoraSettings, seed: int) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.net = net
        self.runner = net  # what forward calls go through: `net`, or its DDP/FSDP wrapper
        self.names = tuple(names)  # the roles
        self.lora, self.seed = lora, seed
        self.modules = sorted(lora_modules(net, lora.targets))  # before peft wraps them
        if not self.modules:
            raise UserError(f"LoRA targets {lora.targets} match no Linear of {type(net).__name__}: "
                            "fix --set base.lora.targets=...")
        self.adapters: list[str] = []  # every adapter created, in creation order
        for i, name in enumerate(self.names):
            self._add(name, i)
        self.stacks = {n: [n] for n in self.names}  # role -> its active adapters, trainable last
        self.layers = [m for m in net.modules() if isinstance(m, BaseTunerLayer)]
        self.params = self._adapter_params()
        self.active: str | None = "unset"  # type: ignore[assignment]
        self.activate(None)

    def _add(self, name: str, i: int) -> None:
        """A new adapter with a deterministic Gaussian A (seeded by its slot i), fp32 weights."""
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft warns on a second adapter in one model: several adapters is the design here.
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            torch.manual_seed(self.seed + 1009 * i)  # distinct per adapter, independent of the global RNG
            self.net.add_adapter(_peft_config(self.modules, self.lora), adapter_name=name)
        self.adapters.append(name)
        for key, p in self.net.named_parameters():
            if f".{name}." in key and "lora_" in key:
                p.data = p.data.float()  # fp32 master weights for AdamW even over bf16 frozen weights

    @staticmethod
    def spare(role: str) -> str:
        return f"{role}_restart"

    def _add_spare(self, role: str) -> None:
        # Slot after the roles' own adapters, fixed per role: the same init whenever it is created.
        self._add(self.spare(role), len(self.names) + self.names.index(role))

    def add_spares(self) -> None:
        """Create every role's restart adapter now (idempotent)."""
        for role in self.names:
            if self.spare(role) not in self.adapters:
                self._add_spare(role)
        self.params = self._adapter_params()
        self._set_requires_grad()

    def _adapter_params(self) -> dict[str, dict[str, nn.Parameter]]:
        """{adapter: {adapter-neutral key: parameter}} as the module holds them now."""
        params: dict[str, dict[str, nn.Parameter]] = {n: {} for n in self.adapters}
        for key, p in self.net.named_parameters():
            for n in self.adapters:
                if f".{n}." in key and "lora_" in key:
                    params[n][key.replace(f".{n}.", ".")] = p
        return params

    def trainable_adapter(self, role: str) -> str:
        return self.stacks[role][-1]

    def frozen_adapters(self, role: str) -> list[str]:
        return self.stacks[role][:-1]

    def restart(self, role: str) -> None:
        """Freeze the role's adapter (it stays active) and train a fresh one stacked on it."""
        if len(self.stacks[role]) > 1:
            raise RuntimeError(f"the {role} adapter was already restarted once")
        if self.spare(role) not in self.adapters:
            if self.runner is not self.net:
                raise RuntimeError("restart adapters are created before data-parallel wrapping (add_spares)")
            self._add_spare(role)
            self.params = self._adapter_params()
        self.stacks[role] = [role, self.spare(role)]
        previous, self.active = self.active, "unset"  # type: ignore[assignment]
        self.activate(previous)

    def _set_requires_grad(self) -> None:
        frozen = {a for r in self.names for a in self.frozen_adapters(r)}
        for name, group in self.params.items():
            for p in group.values():
                p.requires_grad_(name not in frozen)

    def wrap(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Forward through `wrap(net)`; FSDP2 replaces the parameters by shards, so look them up
        again (every adapter trainable first: DDP ignores parameters frozen when it is built)."""
        self.add_spares()
        self.activate(None)
        self.runner = wrap(self.net)
        self.params = self._adapter_params()
        self._set_requires_grad()

    def activate(self, name: str | None) -> None:
        if name == self.active:
            return
        for layer in self.layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(list(self.stacks[name]))
        self._set_requires_grad()
        self.active = name

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        previous = self.active
        self.activate(name)
        try:
            yield
        finally:
            self.activate(previous)

    def checkpoint_fn(self, module: nn.Module, *args: Any) -> Any:
        """Gradient checkpointing that recomputes with the adapter active at forward time (the
        backward may run while another role's adapter is selected)."""
        state = self.active

        def run(*a: Any) -> Any:
            with self.using(state):
                return module(*a)

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    def plain_state_dict(self) -> dict[str, Tensor]:
        """Plain (peft-free) state dict of the frozen transformer under diffusers' own keys (cloned)."""
        return {k.replace(".base_layer.", "."): v.detach().clone()
                for k, v in self.net.state_dict().items() if "lora_" not in k}

    def plain_copy(self) -> nn.Module:
        """A peft-free copy of the frozen transformer (no adapter), built on the meta device and then
        given the cloned weights, so it costs one copy of the weights and no random init."""
        from accelerate import init_empty_weights

        with init_empty_weights():
            net = type(self.net).from_config(self.net.config)
        net.load_state_dict(self.plain_state_dict(), assign=True)
        return net.requires_grad_(False).eval()

    def lora_layers(self, role: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The role's active adapters as ONE LoRA, as diffusers saves and loads it: the state dict
        under peft's adapter-free keys (`<module>.lora_A.weight`, `get_peft_model_state_dict`) and the
        `LoraConfig` as a dict (diffusers' `*_lora_adapter_metadata`). After RTDMD's restart the
        frozen stage-1 adapter and the fresh one are concatenated (`concat_loras`): rank r1 + r2,
        the same function."""
        from peft.utils import get_peft_model_state_dict

        names = self.stacks[role]
        configs = [self.net.peft_config[n] for n in names]
        for c in configs:  # scaling = alpha / r holds only without these
            if c.use_rslora or c.rank_pattern or c.alpha_pattern:
                raise NotImplementedError("export of rsLoRA or per-module rank/alpha patterns")
        parts = [({k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(self.net, adapter_name=n).items()},
                  c.lora_alpha / c.r) for n, c in zip(names, configs)]
        rank, scale = sum(c.r for c in configs), parts[0][1]
        meta = {**configs[-1].to_dict(), "r": rank, "lora_alpha": scale * rank,
                "target_modules": sorted(configs[-1].target_modules)}
        return concat_loras(parts, scale), meta

    def merged_state_dict(self, role: str) -> dict[str, Tensor]:
        """Plain (peft-free) state dict of the transformer with the role's adapters merged in."""
        from peft.tuners.lora import LoraLayer

        sd = self.plain_state_dict()
        for mod_name, module in self.net.named_modules():
            if isinstance(module, LoraLayer):
                for name in self.stacks[role]:
                    if name in module.lora_A:
                        key = f"{mod_name}.weight"
                        sd[key] = sd[key] + module.get_delta_weight(name).to(sd[key].dtype)
        return sd


def concat_loras(parts: Sequence[tuple[dict[str, Tensor], float]], scale: float) -> dict[str, Tensor]:
    """One LoRA with the summed function of several on the same modules (exact, rank r1 + r2 + ...).

    parts: (state dict {"<m>.lora_A.weight": (r_i, in), "<m>.lora_B.weight": (out, r_i)}, scaling s_i).
    The result, applied with scaling `scale`, has A = [A_1; A_2; ...] (sum r_i, in) and
    B = [B_1 s_1/scale, B_2 s_2/scale, ...] (out, sum r_i), so that
    scale B A = sum_i s_i B_i A_i: each delta kept, none rounded by a merge into frozen weights."""
    keys = list(parts[0][0])
    if any(sorted(sd) != sorted(keys) for sd, _ in parts):
        raise ValueError("the LoRAs to concatenate target different modules")
    out: dict[str, Tensor] = {}
    for key in keys:
        if ".lora_A." in key:
            out[key] = torch.cat([sd[key] for sd, _ in parts], dim=0)  # (sum r_i, in)
        elif ".lora_B." in key:
            out[key] = torch.cat([sd[key] * (s / scale) for sd, s in parts], dim=1)  # (out, sum r_i)
        else:
            raise ValueError(f"unexpected LoRA key {key!r} (only lora_A / lora_B weights are exported)")
    return out
