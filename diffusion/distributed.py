"""Data-parallel training across processes and GPUs: `torchrun --nproc_per_node N` around `grokloop train`.

    torchrun --nproc_per_node 2 -m flows.cli train family=modular batch_size=512 run_name=ddp

torchrun starts N copies of the trainer and tells each its RANK and WORLD_SIZE; `processes()` joins them
into one process group for the run (NCCL on GPUs, gloo on CPU) and the model is wrapped in DDP, which averages
the gradients across processes in backward. Every process draws the same global batch (`batch_size`
rows) from the same seeded sampler and the same masking noise, and computes the loss on its own
slice (`rows`), so the N processes together take exactly the step one process would (to float
tolerance: the sum is reduced in another order); Grokfast then filters the averaged gradient, the
same on every process. Every process evaluates (the weights are the same, so every process reaches
the same T_mem, T_grok and stopping step); only rank 0 writes checkpoints, metrics and TensorBoard,
and every process resumes from rank 0's checkpoint.

Without torchrun (no WORLD_SIZE) this is one process and nothing here does anything.
FSDP (sharding weights and optimizer state, for a model that does not fit one GPU) is not wired
in: the denoisers here fit one GPU up to `size=large`; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, batch_size: int) -> slice:
        """This process's slice of a global batch of `batch_size` rows."""
        return slice(self.rank * batch_size // self.world_size, (self.rank + 1) * batch_size // self.world_size)

    def share(self, loss: torch.Tensor, rows: slice, batch_size: int) -> torch.Tensor:
        """This process's loss weighted so that DDP's gradient average is the global batch's mean:
        a slice of n_r of the batch's n rows counts n_r * N / n (1 when the slices are equal)."""
        if not self.distributed:
            return loss
        return loss * ((rows.stop - rows.start) * self.world_size / batch_size)

    def mean(self, value: float) -> float:
        """The mean of a number over the processes (the batch loss each one summed for its slice)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model DDP trains (the same parameters: evaluation and saving use `model` itself)."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def any(self, *flags: bool) -> list[bool]:
        """Each flag True on every process if it is True on any (a SIGTERM one process saw, or its clock
        saying a checkpoint is due, acts on all of them at the same step)."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def from_main(self, value):
        """Rank 0's value, on every process (a run id made from the clock and pid)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (writes the run directory), then the others (read it)."""
        if self.distributed and not self.is_main:
            dist.barrier()
        yield
        if self.distributed and self.is_main:
            dist.barrier()


def is_main() -> bool:
    """Whether this process writes and reports: the only one without torchrun, rank 0 with it (before,
    during and after its process group)."""
    return os.environ.get("RANK", "0") == "0"


def uses_cuda(device: str) -> bool:
    """Whether a run's `device` setting (cpu, cuda, or auto: cuda when there is one) trains on a GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but torch sees no GPU here (device=cpu or auto trains without one)")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


@contextlib.contextmanager
def processes(device: str = "cpu") -> Iterator[Processes]:
    """This process's place among torchrun's (rank 0 of 1 without torchrun), for the block.
    A process group it joins, it also leaves: after a barrier when the block ends (no process tears
    its side down while another still uses it), at once when the block raises (a peer may be gone).
    Left to interpreter exit, gloo's threads can outlive their peer and abort the process (SIGABRT)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = uses_cuda(device)
    where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(where)
        # TF32 matmuls (as nanoGPT): ~8x fp32's rate on Ampere and later, float32 weights and optimizer
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    joins = world_size > 1 and not dist.is_initialized()
    if joins:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield Processes(rank, world_size, where)
        if joins:
            dist.barrier()
    finally:
        if joins:
            dist.destroy_process_group()
