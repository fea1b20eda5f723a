"""Collectives used to keep codebooks identical on every process.

Every helper is a no-op outside ``torch.distributed`` (single CPU/GPU runs), so the quantizer code calls them
unconditionally. Under Accelerate / ``torch.distributed`` all ranks must call them in the same order.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes, in place. Returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` on every process with rank ``src``'s value, in place. Returns it."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_int(value: int, device: torch.device, src: int = 0) -> int:
    """Rank ``src``'s ``value`` on every process (e.g. the number of RVQ stages sampled for a batch)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, src=src)
    return int(t.item())
