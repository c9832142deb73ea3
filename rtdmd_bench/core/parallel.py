"""Data parallelism inside one training step: which rows a rank owns, the step's randomness, and
the few batch statistics that must be global (docs/architecture.md, "Randomness").

A step's global batch has R sample rows; with W ranks, rank r owns the contiguous rows
[r R/W, (r+1) R/W). Every random tensor with a per-row dimension is drawn for all R rows from
one generator seeded by the batch seed, and each rank keeps its own rows. So:
- a sample sees the same numbers whatever the world size: W ranks compute exactly the
  one-process step on the same global batch (up to float summation order), which is how the
  two-process test checks the whole distributed path;
- draws that must agree across ranks (rollout stop index, anything not per row) are identical
  on every rank, because every rank consumes the generator in the same order.
With W = 1 every draw is the plain `torch.randn(shape, generator=...)` call, so single-process
results are unchanged by this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
from torch import Tensor

from rtdmd_bench.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel ranks (rank 0 of 1 without distribution)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    """Where collective tensors live (the rank's GPU under nccl)."""
    micro: int = 1
    """> 1: a virtual rank, one of `micro` micro-batches of a process (`Batch.chunks`); it owns
    rows and draws like a rank but takes part in no collective (those run on the process's shard)."""

    def unit(self) -> str:
        """What the ranks are, for messages."""
        return "processes" if self.micro == 1 else f"processes x {self.micro} micro-batches (train.micro_batches)"

    def rows(self, total: int) -> slice:
        """The rank's block of `total` global rows."""
        if total % self.world:
            raise UserError(f"a training batch of {total} samples cannot be split evenly over {self.world} "
                            f"{self.unit()}: make train.batch_size (and, for group methods, the step's "
                            f"sample count) a multiple of {self.world}")
        n = total // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    def take(self, items: Sequence[T]) -> list[T]:
        """The rank's rows of a global list (e.g. the step's prompts)."""
        return list(items[self.rows(len(items))])

    def local(self, t: Tensor, dim: int = 0) -> Tensor:
        """The rank's rows of a global tensor along `dim`."""
        s = self.rows(t.shape[dim])
        return t.narrow(dim, s.start, s.stop - s.start)

    def _collective(self) -> None:
        if self.micro > 1:
            raise RuntimeError("a micro-batch shard takes part in no collective: gather or sum the "
                               "concatenated micro-batches on the process's shard (Batch.shard)")

    def gather(self, t: Tensor) -> Tensor:
        """(n, ...) local rows -> (W n, ...) all ranks' rows in rank order (every rank gets them)."""
        self._collective()
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def mean(self, logs: dict[str, float]) -> dict[str, float]:
        """Scalar logs averaged over ranks (a mean over rows of equal-size shards is the global mean)."""
        self._collective()
        if self.world == 1 or not logs:
            return logs
        keys = sorted(logs)
        n, *total = self.sum([len(keys)] + [float(logs[k]) for k in keys])
        if n != len(keys) * self.world:  # every rank runs the same code, so this is a bug, not input
            raise RuntimeError(f"ranks logged different terms (this rank: {keys})")
        return {k: x / self.world for k, x in zip(keys, total)}

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a list of floats over ranks (float64)."""
        self._collective()
        if self.world == 1:
            return list(values)
        v = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(v)
        return v.tolist()


class BatchRandom:
    """All randomness of one training step (see the module docstring).

    `randn` / `rand` / `randint` take the LOCAL shape; `dim` names the per-row dimension, which
    is drawn W times larger and narrowed to this rank's rows. `integer` is a draw shared by
    every rank."""

    def __init__(self, seed: int, shard: Shard = Shard()) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))
        self.shard = shard

    def _global(self, shape: Sequence[int], dim: int) -> tuple[int, ...]:
        full = list(shape)
        full[dim] *= self.shard.world
        return tuple(full)

    def randn(self, shape: Sequence[int], dim: int = 0) -> Tensor:
        """Standard normal, local `shape`."""
        return self.shard.local(torch.randn(self._global(shape, dim), generator=self.generator), dim)

    def rand(self, shape: Sequence[int], dim: int = 0) -> Tensor:
        """Uniform on [0, 1), local `shape`."""
        return self.shard.local(torch.rand(self._global(shape, dim), generator=self.generator), dim)

    def randint(self, low: int, high: int, shape: Sequence[int], dim: int = 0) -> Tensor:
        """Integers in [low, high), local `shape`."""
        full = torch.randint(low, high, self._global(shape, dim), generator=self.generator)
        return self.shard.local(full, dim)

    def integer(self, low: int, high: int) -> int:
        """One integer in [low, high), the same on every rank."""
        return int(torch.randint(low, high, (1,), generator=self.generator))
