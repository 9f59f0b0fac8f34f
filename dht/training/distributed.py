"""Data-parallel training under ``torchrun`` (torch.distributed): which rank does what.

``torchrun --nproc-per-node N -m dht train ...`` starts N processes with RANK, WORLD_SIZE and LOCAL_RANK
in their environment. Every rank builds the same model (same seed), reads the same global batches of each
epoch and trains on its shard of each (``World.shard``: contiguous rows, sizes differing by at most one);
after the backward pass the gradients are averaged over the global batch (``World.average_gradients``),
so every rank applies the same update and the weights stay identical, as one process with the whole batch
would (up to the order of floating-point sums). Rank 0 alone writes the run folder.

Why not ``torch.nn.parallel.DistributedDataParallel``: its reducer is armed by a forward through its
wrapper, and our methods compose the encoder's building blocks themselves (DHT runs each sample group to
its own depth and heads), so the parameters a rank uses differ from step to step and from its peers. One
all-reduce of a flat gradient buffer per step does what DDP's reducer does, without its overlap of the
communication with the backward pass; a parameter that no rank's samples reached keeps no gradient, as in
one process (AdamW then leaves it and its moments untouched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from dht.data import Batch


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: ``rank`` of ``size`` (1: no distribution)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this rank writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls) -> World:
        """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), its process group joined (gloo on
        the CPU, NCCL on GPUs); one process when they are unset. Raises ValueError for values that are not
        a rank within the world."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"RANK={rank} and WORLD_SIZE={size} do not name a process of the world")
        if size > 1 and not dist.is_initialized():
            if torch.cuda.is_available():  # GPU tensors reduce through NCCL, CPU ones (counters) through gloo
                torch.cuda.set_device(local)
                dist.init_process_group(backend="cpu:gloo,cuda:nccl")
            else:
                dist.init_process_group(backend="gloo")
        return cls(rank, size, local)

    def rank_seed(self, seed: int) -> int:
        """A seed of this rank's own for the run's ``seed`` (dropout draws differ between ranks, as they
        differ between the rows of one process's batch)."""
        return seed * 1_000_003 + self.rank + 1

    def device(self, requested: str | None) -> str | None:
        """Each rank's device: ``cuda`` (or auto on a GPU machine) becomes ``cuda:LOCAL_RANK``."""
        if not self.distributed:
            return requested
        if requested in (None, "auto") and torch.cuda.is_available() or requested == "cuda":
            return f"cuda:{self.local_rank}"
        return requested

    def rows(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """The rows [start, stop) of a global batch of ``n`` that ``rank`` (default: this one) trains on:
        contiguous, the first ``n % size`` ranks one row more."""
        rank = self.rank if rank is None else rank
        start = rank * (n // self.size) + min(rank, n % self.size)
        return start, start + n // self.size + (rank < n % self.size)

    def rows_to_run(self, n: int) -> tuple[list[int], int]:
        """For a method that shards its own batches: the rows of a global batch of ``n`` this rank runs and
        how many of them are its own. A rank with none (``n`` < size) runs row 0 with weight 0, so that it
        still takes part in every collective of the step."""
        start, stop = self.rows(n)
        return list(range(start, stop)) or [0], stop - start

    def shard(self, batch: Batch) -> Batch:
        """This rank's rows of a global batch (``rows``)."""
        if not self.distributed:
            return batch
        start, stop = self.rows(len(batch))
        return batch.rows(list(range(start, stop)))

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The global batch's rows from every rank's ``local`` rows (``rows(n)`` of each, the other
        dimensions alike), in rank order: the tensor one process would hold. Detached (no gradient
        crosses ranks)."""
        if not self.distributed:
            return local.detach()
        sizes = [stop - start for start, stop in (self.rows(n, r) for r in range(self.size))]
        padded = local.detach().new_zeros((max(sizes), *local.shape[1:]))
        padded[:len(local)] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's values of ``tensor`` on every rank, in place."""
        if self.distributed:
            dist.broadcast(tensor, src=0)

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if not self.distributed:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def average_gradients(self, parameters: Iterable[nn.Parameter], samples: int, total: int) -> None:
        """Replace each gradient by the global batch's: sum over ranks of (local mean gradient × samples /
        total), ``samples`` this rank's rows and ``total`` the global batch's. A parameter keeps no gradient
        (None) only if no rank gave it one. One flat all-reduce (float32 on the parameters' device)."""
        if not self.distributed:
            return
        params = list(parameters)
        if not params:
            return
        device = params[0].device
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params]) * (samples / total)
        dist.all_reduce(used)
        dist.all_reduce(flat)
        offset = 0
        for p, reached in zip(params, used.tolist()):
            size = p.numel()
            p.grad = flat[offset:offset + size].view_as(p).to(p.dtype) if reached else None
            offset += size

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Rank 0's weights on every rank (they are built alike from one seed; this makes sure)."""
        for tensor in list(model.parameters()) + list(model.buffers()):
            self.broadcast(tensor.data)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def share(self, message: Any) -> Any:
        """Rank 0's ``message`` (picklable) on every rank (what the others pass is ignored)."""
        if not self.distributed:
            return message
        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group (after the last collective of this rank)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
