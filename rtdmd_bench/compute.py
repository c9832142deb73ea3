"""Compute accounting: FLOPs per role, measured per call shape and cached; budgets.

Every network call a method makes goes through `MeteredBase` / `MeteredReward`, which charge
the meter. The first call of a (role, shapes, grad) key is measured with
`torch.utils.flop_counter.FlopCounterMode`; if the call builds a graph (so the method will
back-propagate through it) its backward cost is measured once on the same inputs with
`torch.autograd.grad` (which leaves `.grad` untouched) and charged on every such call.
The budget counts every role except "init" (student/fake initialisation from the teacher,
identical for all methods and reported apart).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import RewardSet

def _register_cpu_attention_flops() -> None:
    """torch's FLOP counter has no formula for the CPU flash-attention kernel, so attention on CPU
    would count as 0 FLOPs; give it the same formula as the other SDPA kernels."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs):  # noqa: ANN001
        return fc.sdpa_flop_count(query, key, value)

    if bwd is not None and bwd not in fc.flop_registry:
        @fc.register_flop_formula(bwd)
        def _sdpa_cpu_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):  # noqa: ANN001
            return fc.sdpa_backward_flop_count(grad_out, query, key, value)


_register_cpu_attention_flops()

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKMGTP]?)\s*(tf)?\s*$")


@dataclass(frozen=True)
class Budget:
    """A budget as written: FLOPs, or teacher-forward equivalents (suffix `tf`)."""

    amount: float
    unit: str  # "flops" | "teacher_forwards"

    def flops(self, teacher_forward_flops: float) -> float:
        if self.unit == "flops":
            return self.amount
        return self.amount * teacher_forward_flops

    def __str__(self) -> str:
        return f"{self.amount:g} {'FLOPs' if self.unit == 'flops' else 'teacher forwards'}"


def parse_budget(text: str) -> Budget:
    """'2e12', '2T', '500G', '1.5e3tf', '20ktf' (teacher-forward equivalents: one teacher
    velocity call on one sample, no CFG)."""
    m = _BUDGET_RE.match(str(text))
    if not m:
        raise UserError(
            f"cannot parse budget {text!r}: write FLOPs as a number with an optional k/M/G/T/P "
            "suffix (e.g. 2e12, 2T, 500G), or teacher-forward equivalents with a 'tf' suffix "
            "(e.g. 20ktf)")
    value = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"budget {text!r} must be a positive finite number")
    return Budget(value, "teacher_forwards" if m.group(3) else "flops")


def format_flops(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def measure_flops(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run `fn()` under FlopCounterMode; return (result, FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, float(counter.get_total_flops())


def _shape_key(obj: Any) -> Any:
    """What a call's cost depends on. Built on every metered call (several per step), so it keeps
    torch's own hashable shape and dtype objects rather than converting them."""
    if isinstance(obj, Tensor):
        return ("T", obj.shape, obj.dtype, obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(o, str) for o in obj):
            return ("strings", len(obj))  # prompts: cost depends on the count, not the text
        return tuple([_shape_key(o) for o in obj])
    if isinstance(obj, dict):
        return tuple(sorted((k, _shape_key(v)) for k, v in obj.items()))
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return type(obj).__name__


def _grad_inputs(out: Tensor, args: Sequence[Any], params: Sequence[Tensor]) -> list[Tensor]:
    """What the call's backward differentiates for: its tensor arguments that require grad, plus
    every leaf the call's own graph reaches without passing through those arguments (its
    parameters; under FSDP the gathered full parameters, not the shards in `params`)."""
    inputs = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
    stop = {a.grad_fn for a in inputs if a.grad_fn is not None}
    leaves: dict[int, Tensor] = {id(a): a for a in inputs}
    stack, seen = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen or fn in stop:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # AccumulateGrad: a leaf that requires grad
        if isinstance(var, Tensor):
            leaves.setdefault(id(var), var)
        stack.extend(f for f, _ in fn.next_functions)
    for p in params:  # parameters the graph does not reach are simply unused by this call
        if p.requires_grad and not hasattr(p, "device_mesh"):
            leaves.setdefault(id(p), p)
    return list(leaves.values())


@dataclass
class ComputeMeter:
    """FLOPs used so far, per role and direction; stops training at the budget."""

    budget_flops: float = math.inf
    flops: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0}))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cache: dict[Any, tuple[float, float]] = field(default_factory=dict)
    teacher_forward_flops: float = 0.0  # one teacher call on one sample (the 'tf' unit)
    measured_calls: int = 0  # how many calls were measured (cache misses)

    def add(self, role: str, direction: str, flops: float, calls: int = 0) -> None:
        self.flops[role][direction] += float(flops)
        self.calls[role] += calls

    def call(self, role: str, fn: Callable[..., Any], *args: Any,
             params: Sequence[Tensor] | Callable[[], Sequence[Tensor]] = (), key_extra: Any = None,
             **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) and charge its forward FLOPs (and backward FLOPs if the output
        requires grad) to `role`. `params` are the parameters the call can train, or a function
        giving them (asked only when the call is measured: listing a network's parameters on every
        call is a noticeable share of a small CPU step)."""
        grad_mode = torch.is_grad_enabled()
        key = (role, _shape_key(args), _shape_key(kwargs), key_extra, grad_mode)
        if key not in self.cache:
            out, fwd = measure_flops(lambda: fn(*args, **kwargs))
            bwd = 0.0
            if isinstance(out, Tensor) and out.requires_grad:
                inputs = _grad_inputs(out, list(args) + list(kwargs.values()), params() if callable(params) else params)
                if inputs:
                    # Probe the backward once: grad w.r.t. inputs/params, .grad left untouched.
                    with FlopCounterMode(display=False) as counter:
                        torch.autograd.grad(out.float().sum(), inputs, retain_graph=True, allow_unused=True)
                    bwd = float(counter.get_total_flops())
            self.cache[key] = (fwd, bwd)
            self.measured_calls += 1
        else:
            out = fn(*args, **kwargs)
        fwd, bwd = self.cache[key]
        self.add(role, "fwd", fwd, calls=1)
        if isinstance(out, Tensor) and out.requires_grad:
            self.add(role, "bwd", bwd)
        return out

    @property
    def used(self) -> float:
        """FLOPs charged against the budget (everything but 'init')."""
        return sum(v["fwd"] + v["bwd"] for r, v in self.flops.items() if r != "init")

    @property
    def exhausted(self) -> bool:
        return self.used >= self.budget_flops

    def breakdown(self) -> dict[str, Any]:
        roles = {r: {"fwd": v["fwd"], "bwd": v["bwd"], "calls": self.calls.get(r, 0)}
                 for r, v in sorted(self.flops.items())}
        return {
            "used_flops": self.used,
            "budget_flops": self.budget_flops,
            "teacher_forward_flops": self.teacher_forward_flops,
            "used_teacher_forwards": self.used / self.teacher_forward_flops if self.teacher_forward_flops else None,
            "init_flops": sum(self.flops["init"].values()) if "init" in self.flops else 0.0,
            "roles": roles,
        }

    def sync(self, since: dict[str, Any], shard: Any) -> None:
        """Data parallelism: replace what this rank charged since `since` (an earlier
        `state_dict()`) by the sum over all ranks, so the budget and the breakdown are global
        and every rank stops at the same step."""
        if shard.world == 1:
            return
        roles = sorted(self.flops)
        n = len(roles)
        check = shard.sum([n, n * n])  # equal on every rank iff the counts have zero variance
        if check != [n * shard.world, n * n * shard.world]:
            raise RuntimeError(f"ranks charged different roles to the FLOP meter (this rank: {roles})")
        old_flops, old_calls = since["flops"], since["calls"]
        delta = [self.flops[r][d] - old_flops.get(r, {}).get(d, 0.0) for r in roles for d in ("fwd", "bwd")]
        delta += [self.calls.get(r, 0) - old_calls.get(r, 0) for r in roles]
        total = shard.sum(delta)
        for i, r in enumerate(roles):
            for j, d in enumerate(("fwd", "bwd")):
                self.flops[r][d] = old_flops.get(r, {}).get(d, 0.0) + total[2 * i + j]
            self.calls[r] = old_calls.get(r, 0) + int(round(total[2 * len(roles) + i]))

    def state_dict(self) -> dict[str, Any]:
        return {"flops": {r: dict(v) for r, v in self.flops.items()}, "calls": dict(self.calls),
                "teacher_forward_flops": self.teacher_forward_flops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flops.clear()
        self.calls.clear()
        for r, v in state["flops"].items():
            self.flops[r] = {"fwd": float(v["fwd"]), "bwd": float(v["bwd"])}
        for r, n in state["calls"].items():
            self.calls[r] = int(n)
        self.teacher_forward_flops = float(state.get("teacher_forward_flops", 0.0))


class MeteredBase:
    """Wraps a Base so that every `velocity` / `decode` call is charged to the meter.

    Methods receive this wrapper and never the raw base: they cannot bypass the budget."""

    def __init__(self, base: Any, meter: ComputeMeter) -> None:
        self._base = base
        self.meter = meter

    def velocity(self, role: str, x: Tensor, sigma: Tensor, cond: Any, cfg: float | None = None,
                 step: Tensor | None = None) -> Tensor:
        params = (lambda: self._base.trainable(role)) if role in ("student", "fake") else ()
        return self.meter.call(role, self._base.velocity, role, x, sigma, cond, cfg=cfg, step=step,
                               params=params)

    def decode(self, x: Tensor) -> Tensor:
        return self.meter.call("decode", self._base.decode, x)

    @property
    def raw(self) -> Any:
        return self._base

    def __getattr__(self, name: str) -> Any:  # everything else is the base's own
        return getattr(self._base, name)


class MeteredReward:
    """Wraps a Reward so that its calls are charged to role 'reward'."""

    def __init__(self, reward: Any, meter: ComputeMeter) -> None:
        self._reward = reward
        self.meter = meter
        self.name = reward.name
        self.differentiable = reward.differentiable

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.meter.call("reward", self._reward, images, list(prompts),
                               key_extra=self.name)

    @property
    def raw(self) -> Any:
        """The unmetered reward (evaluation must not spend the training budget)."""
        return self._reward

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reward, name)


def unmetered(rewards: RewardSet) -> RewardSet:
    """The same rewards without `MeteredReward` wrappers: evaluation (also the metric-vs-FLOPs
    curve taken during training) must not spend the training budget."""
    inner = {n: (r.raw if isinstance(r, MeteredReward) else r) for n, r in rewards.rewards.items()}
    return RewardSet(inner, dict(rewards.weights), rewards.beta)
