"""Optimiser construction and one guarded optimiser step, shared by every method."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from rtdmd_bench.errors import NonFiniteLoss


def adamw(params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
          weight_decay: float = 0.0) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(params), lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def check_finite(step: int, **terms: Tensor | float) -> None:
    """Raise NonFiniteLoss naming the step and the first non-finite loss term."""
    for name, value in terms.items():
        v = float(value.detach()) if isinstance(value, Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLoss(f"loss term {name!r} is {v} at step {step}; the run stops here and "
                                "keeps its last good checkpoint (lower the learning rate or the "
                                "term's weight and resume or restart)")


def _finite_on_every_rank(loss: Tensor) -> bool:
    """Whether the loss is finite on every data-parallel rank: a rank must not stop alone while the
    others wait for its gradients."""
    bad = torch.tensor([0.0 if math.isfinite(float(loss.detach())) else 1.0], device=loss.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad)
    return float(bad) == 0.0


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, params: Sequence[nn.Parameter],
                   grad_clip: float | None, step: int, name: str) -> float:
    """zero_grad, backward, clip, step. Checks the loss is finite BEFORE touching the weights.
    Returns the pre-clip gradient norm."""
    return accumulated_step(opt, [loss], 1, params, grad_clip, step, name)[1]


def accumulated_step(opt: torch.optim.Optimizer, losses: Iterable[Tensor], count: int,
                     params: Sequence[nn.Parameter], grad_clip: float | None, step: int, name: str
                     ) -> tuple[float, float]:
    """One optimiser step on the mean of `count` micro-batch losses (gradient accumulation).

    `losses` is consumed lazily: build each micro-batch's loss inside a generator, so that its
    graph is freed by its backward before the next one is built (only one micro-batch's
    activations live at a time). Each loss is checked finite on every rank before its backward;
    the weights are touched only after all of them. With count = 1 this is the plain step.
    Returns (mean loss, pre-clip gradient norm)."""
    total, seen = 0.0, 0
    for loss in losses:
        everywhere = _finite_on_every_rank(loss)  # collective: every rank calls it before raising
        check_finite(step, **{name: loss})
        if not everywhere:
            raise NonFiniteLoss(f"loss term {name!r} is not finite on another process at step {step}; the run "
                                "stops here and keeps its last good checkpoint")
        if seen == 0:
            opt.zero_grad(set_to_none=True)
        (loss if count == 1 else loss / count).backward()
        total += float(loss.detach()) / count
        seen += 1
    if seen != count:
        raise RuntimeError(f"{name}: {seen} micro-batch losses for {count} micro-batches")
    with_grad = [p for p in params if p.grad is not None]
    if params and not with_grad:  # a wiring bug (e.g. an optimiser over stale tensors), never a data case
        raise RuntimeError(f"{name}: no gradient reached any of the {len(params)} parameters it optimises")
    params = with_grad
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: the global norm
    check_finite(step, **{f"{name}.grad_norm": norm})
    _state_like_params(opt)
    opt.step()
    return total, float(norm)


def _state_like_params(opt: torch.optim.Optimizer) -> None:
    """Optimiser state loaded from a gathered (full) checkpoint holds whole tensors; under FSDP the
    parameters are shards (DTensor), so cut the state the same way before stepping."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in opt.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                return  # not sharded (all parameters of a run are, or none)
            state = opt.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                    state[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
