"""Multi-process training (docs/architecture.md, "Randomness"): `accelerate launch -m rtdmd_bench train ...`
or `torchrun --nproc_per_node N -m rtdmd_bench train ...` starts one process per device;
accelerate joins the process group (gloo on CPU, nccl on GPUs) and wraps the base's trainable
modules in DDP; with `--set train.parallel=fsdp` torch's FSDP2 (`fully_shard`) shards every
transformer block instead (the frozen weights of the large bases too). accelerate's own FSDP
plugin is not used: it refuses to run on CPU, where this suite is tested. No process management
here.

What each rank does (see `core/parallel.py` for why it is exact):
- the global batch (prompts from (seed, step)) is the same on every rank; a method keeps its
  rank's rows (`Batch.local`) and draws its randomness with `Batch.random()`;
- gradients are averaged by the wrapper, so every rank takes the same optimiser step;
- the FLOP meter is summed over ranks after every step (`ComputeMeter.sync`), so the budget is
  global and every rank stops at the same step;
- rank 0 alone writes metrics, checkpoints and the result; under FSDP every rank first takes
  part in gathering the full checkpoint (`Parallel.full`), and a resumed run shards it again
  (`Parallel.localize`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rtdmd_bench.core.parallel import Shard
from rtdmd_bench.errors import UserError


@dataclass
class Parallel:
    """This process's place in a data-parallel run, and accelerate's handle on it (None alone)."""

    shard: Shard = Shard()
    accelerator: Any = None
    mode: str = "ddp"
    """ddp | fsdp (TrainConfig.parallel)."""

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.shard.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module prepared for data-parallel training: accelerate's DDP, or FSDP2 shards."""
        if self.accelerator is None:
            return module
        return fsdp_shard(module) if self.mode == "fsdp" else self.accelerator.prepare_model(module)

    def full(self, obj: Any) -> Any:
        """`obj` (nested dicts/lists of tensors) with every FSDP shard gathered into the full tensor.
        Collective under FSDP: every rank calls it on the same structure."""
        from torch.distributed.tensor import DTensor

        if isinstance(obj, DTensor):
            return obj.full_tensor()
        if isinstance(obj, dict):
            return {k: self.full(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.full(v) for v in obj)
        return obj

    def localize(self, obj: Any, like: Any) -> Any:
        """Full tensors of a loaded checkpoint cut to this rank's shards wherever the live state
        `like` (same structure) holds FSDP shards; everything else unchanged."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(like, DTensor) and isinstance(obj, torch.Tensor) and not isinstance(obj, DTensor):
            return distribute_tensor(obj.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)
        if isinstance(obj, dict) and isinstance(like, dict):
            return {k: self.localize(v, like.get(k)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and isinstance(like, (list, tuple)) and len(obj) == len(like):
            return type(obj)(self.localize(v, w) for v, w in zip(obj, like))
        return obj

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def fsdp_shard(module: nn.Module) -> nn.Module:
    """FSDP2 over `module`: every item of the `nn.ModuleList`s directly under it (the transformer
    blocks of a diffusers model) is a unit, all-gathered for its own forward and resharded after,
    then the root (FSDP2 wants children before parents). Frozen low-precision weights with fp32 LoRA
    weights in one block are all-gathered in the low precision; gradients reduce in fp32.

    The root reshards after its forward too (FSDP2's default keeps it unsharded until a backward):
    outside a forward/backward every parameter is then its shard, so edits of the shards made
    outside the optimiser (the EMA swap for sampling, rtdmd's switch to the stage-1 EMA, a loaded
    checkpoint) reach the next forward. A root left unsharded by a no-grad forward kept computing
    with the old gathered weights."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in module.parameters()}
    low = min(dtypes, key=lambda d: torch.finfo(d).bits) if len(dtypes) > 1 else None
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    blocks = [b for child in module.children() if isinstance(child, nn.ModuleList) for b in child]
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy, reshard_after_forward=True)
    return module


def world_size_from_env() -> int:
    """WORLD_SIZE as set by `accelerate launch` / torchrun (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


_current: Parallel | None = None


def setup(cpu: bool = False, mode: str = "ddp") -> Parallel:
    """Join the process group when launched with several processes; otherwise a single rank.
    Idempotent: later calls return the first call's result.

    `cpu`: the base runs on CPU (toy2d, digits, `base.device=cpu`), so gloo even where GPUs exist.
    Modules stay where the base put them (`device_placement=False`: diffusers bases already use
    this rank's GPU). DDP settings: `find_unused_parameters` because the student and fake score
    can be adapters of one transformer, so every backward leaves the other adapter without a
    gradient."""
    global _current
    if _current is not None:
        return _current
    if world_size_from_env() <= 1:
        _current = Parallel()
        return _current
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Without cpu=True accelerate finds no GPU backend on a CPU machine and silently runs every
    # process alone (DistributedType.NO); say cpu whenever there is no GPU.
    acc = Accelerator(cpu=cpu or not torch.cuda.is_available(), device_placement=False, kwargs_handlers=[ddp])
    if acc.num_processes != world_size_from_env():
        raise RuntimeError(f"WORLD_SIZE={world_size_from_env()} but accelerate set up {acc.num_processes} "
                           f"process(es) ({acc.distributed_type}); the processes would train independently")
    if acc.distributed_type.name == "FSDP":
        raise UserError("accelerate's FSDP plugin is not supported: launch without --use_fsdp / an FSDP "
                        "accelerate config and pass --set train.parallel=fsdp (torch FSDP2, works on CPU too)")
    device = "cpu" if acc.device.type == "cpu" else str(acc.device)
    _current = Parallel(Shard(acc.process_index, acc.num_processes, device), acc, mode)
    return _current


def setup_for(cfg: Any) -> Parallel:
    """`setup` for a resolved run config: CPU processes for CPU bases, its `train.parallel`."""
    return setup(cpu=getattr(cfg.base, "device", "cpu") == "cpu", mode=cfg.train.parallel)


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. a run id containing the time) of the process group
    (training's, or the one an evaluation joined); `value` itself outside a group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
