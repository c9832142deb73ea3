"""Multi-process training (DESIGN.md "Distributed"): `accelerate launch -m rtdmd_bench train ...`
or `torchrun --nproc_per_node N -m rtdmd_bench train ...` starts one process per device;
accelerate joins the process group (gloo on CPU, nccl on GPUs) and wraps the base's trainable
modules as its config says: DDP by default, FSDP with `accelerate launch --config_file
configs/accelerate/fsdp.yaml` (sharding the frozen weights of the large bases). No process
management here.

What each rank does (see `core/parallel.py` for why it is exact):
- the global batch (prompts from (seed, step)) is the same on every rank; a method keeps its
  rank's rows (`Batch.local`) and draws its randomness with `Batch.random()`;
- gradients are averaged by the wrapper, so every rank takes the same optimiser step;
- the FLOP meter is summed over ranks after every step (`ComputeMeter.sync`), so the budget is
  global and every rank stops at the same step;
- rank 0 alone writes metrics, checkpoints and the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from rtdmd_bench.core.parallel import Shard


@dataclass
class Parallel:
    """This process's place in a data-parallel run, and accelerate's handle on it (None alone)."""

    shard: Shard = Shard()
    accelerator: Any = None

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.shard.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as accelerate prepares it for training (DDP or FSDP, per its config)."""
        return self.accelerator.prepare_model(module) if self.accelerator is not None else module

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def world_size_from_env() -> int:
    """WORLD_SIZE as set by `accelerate launch` / torchrun (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


_current: Parallel | None = None


def setup(cpu: bool = False) -> Parallel:
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

    import torch

    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Without cpu=True accelerate finds no GPU backend on a CPU machine and silently runs every
    # process alone (DistributedType.NO); say cpu whenever there is no GPU.
    acc = Accelerator(cpu=cpu or not torch.cuda.is_available(), device_placement=False, kwargs_handlers=[ddp])
    if acc.num_processes != world_size_from_env():
        raise RuntimeError(f"WORLD_SIZE={world_size_from_env()} but accelerate set up {acc.num_processes} "
                           f"process(es) ({acc.distributed_type}); the processes would train independently")
    device = "cpu" if acc.device.type == "cpu" else str(acc.device)
    _current = Parallel(Shard(acc.process_index, acc.num_processes, device), acc)
    return _current


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. a run id containing the time)."""
    par = _current
    if par is None or par.shard.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
