"""Training on several processes (``torchrun``): the process group, rank-0-first work, gathering.

Outside ``torchrun`` every helper here is a no-op for one process, so the training code reads the
same either way.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import DlibplusError


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world_size``, on local GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when there is one), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    :raises DlibplusError: CUDA asked for where torch sees none, or a name torch does not know.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise DlibplusError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DlibplusError(f"--device {device}: torch sees no CUDA device (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DlibplusError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA); idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


def training_device(device: str, dist_info: Dist) -> torch.device:
    """The device this process trains on (its own GPU under ``torchrun``)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and dist_info.active:
        return torch.device("cuda", dist_info.local_rank)
    return resolved


@contextlib.contextmanager
def main_process_first(dist_info: Dist) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks.

    Around data preparation under ``torchrun``: rank 0 detects, aligns and caches the chips while the
    others wait; they then read the cache instead of repeating the work.
    """
    import torch.distributed as dist

    if dist_info.active and not dist_info.main:
        dist.barrier()
    try:
        yield
    finally:
        if dist_info.active and dist_info.main:
            dist.barrier()


def barrier(dist_info: Dist) -> None:
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()


def gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' ``x`` concatenated, differentiably (the identity outside DDP).

    Every process then computes the same batch-level loss; all_gather's backward sums the gradients
    over processes, and DDP's averaging turns that back into exactly the one-process gradient.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))
