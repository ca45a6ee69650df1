"""torchrun / DistributedDataParallel plumbing.

``torchrun --nproc_per_node=K -m wsipipe train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`init_distributed` then joins the process group (nccl on CUDA, gloo on CPU). Without
those variables everything runs as a single process (rank 0 of 1) and the helpers below
degrade to no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from wsipipe.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            "RANK/WORLD_SIZE/LOCAL_RANK are set but not integers; launch with torchrun"
        ) from None
    return rank, world, local


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:<local rank> when CUDA is available, else cpu."""
    if device == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
        if device == "cuda":
            return torch.device(f"cuda:{local_rank}")
    return torch.device(device)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (idempotent)."""
    rank, world, local = env_dist()
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (in rank order) on every rank; ``[obj]`` without DDP."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def shard_order(n: int, info: DistInfo, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """This rank's positions into ``n`` slides for ``epoch`` (DistributedSampler semantics:
    a seeded permutation per epoch, padded by repetition so every rank gets the same count,
    then strided across ranks)."""
    sampler: DistributedSampler[int] = DistributedSampler(
        _Sized(n),  # type: ignore[arg-type]
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def gather_unique(items: Sequence[tuple[str, Any]], info: DistInfo) -> list[tuple[str, Any]]:
    """Gather (key, value) pairs from all ranks, dropping keys repeated by padding."""
    seen: set[str] = set()
    out: list[tuple[str, Any]] = []
    for part in all_gather_objects(list(items), info):
        for key, value in part:
            if key not in seen:
                seen.add(key)
                out.append((key, value))
    return out
