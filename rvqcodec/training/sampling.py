"""The order of the training data: which clips every micro-batch of every process holds, as a pure function of
``(train.seed, micro-batch number, rank)``.

Micro-batch ``m`` of process ``r`` holds the sample positions ``((m·world + r)·B … +B)`` of an endless stream of
per-epoch permutations (:class:`StepBatchSampler`); each clip's random crop is fixed by the dataset from its seed,
epoch and index (:class:`EpochIndexedClips`). So a run resumed at step ``s`` sees exactly the batches an
uninterrupted run would, whatever the number of DataLoader workers. :func:`train_batches` is that stream as the
trainer reads it (from a DataLoader, or from clips preloaded on the device).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless index batches that depend only on ``(seed, micro-batch number, rank)``.

    The sample stream is the concatenation of per-epoch permutations of ``range(n_items)`` (epoch ``e``
    permuted by a generator seeded from ``(seed, e)``). Micro-batch ``m`` of process ``rank`` takes stream
    positions ``(m * world_size + rank) * batch_size + [0, batch_size)``. Starting at ``start_batch`` gives the
    same batches an iteration from 0 would give from that point on.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        if n_items < 1:
            raise ValueError("cannot sample batches from an empty dataset")
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
            self._perms[epoch] = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(seed))
        return self._perms[epoch]

    def positions(self, batch: int) -> list[int]:
        first = (batch * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def epoch_and_index(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n_items)
        return epoch, int(self.permutation(epoch)[offset])

    def batch(self, batch: int) -> list[tuple[int, int]]:
        """``(epoch, dataset index)`` of every clip of micro-batch ``batch``."""
        return [self.epoch_and_index(p) for p in self.positions(batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        while True:
            yield self.batch(batch)
            batch += 1


class EpochIndexedClips(torch.utils.data.Dataset):
    """Wraps a cropping dataset so that a clip is addressed by ``(epoch, index)``.

    The wrapped dataset's crop of item ``index`` depends on its seed and current epoch; setting the epoch here,
    per item, keeps that true inside DataLoader worker processes (which hold their own copy of the dataset).
    Returns ``(1, T)`` float tensors.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return as_clip(self.dataset[index])


def as_clip(item: torch.Tensor) -> torch.Tensor:
    """A dataset item -> float32 ``(1, T)`` (the datasets return mono ``(1, T)`` tensors)."""
    if item.dim() != 2 or item.shape[0] != 1:
        raise ValueError(f"expected a mono (1, T) clip from the dataset, got shape {tuple(item.shape)}")
    return item.float()


def collate_clips(items: list[torch.Tensor]) -> torch.Tensor:
    """``(1, T)`` clips -> a ``(B, 1, T)`` batch (the DataLoader's ``collate_fn``)."""
    return torch.stack(items, dim=0)


def train_batches(train_set, batch_size: int, seed: int, start_batch: int, device: torch.device, rank: int = 0,
                  world_size: int = 1, num_workers: int = 0, clips=None, augment=None) -> Iterator[torch.Tensor]:
    """Endless training micro-batches ``(B, 1, T)`` on ``device`` from micro-batch number ``start_batch`` on (step
    × ``train.grad_accum``): drawn from ``clips`` (:class:`rvqcodec.data.clips.PreloadedClips`) when given, else
    loaded by a DataLoader in :class:`StepBatchSampler` order; corrupted by ``augment`` when given (the target
    too). Closing the generator ends the DataLoader's worker processes."""
    batches = _clean_batches(train_set, batch_size, seed, start_batch, device, rank, world_size, num_workers, clips)
    try:
        for batch in batches:
            yield batch if augment is None else augment(batch)
    finally:
        batches.close()  # a DataLoader's worker processes end with the run


def _clean_batches(train_set, batch_size: int, seed: int, start_batch: int, device: torch.device, rank: int,
                   world_size: int, num_workers: int, clips) -> Iterator[torch.Tensor]:
    if clips is not None:
        batch = start_batch
        while True:  # micro-batch numbers as StepBatchSampler counts them: exact resume
            yield clips.batch(batch, batch_size, rank=rank)
            batch += 1
    sampler = StepBatchSampler(len(train_set), batch_size, seed, rank=rank, world_size=world_size,
                               start_batch=start_batch)
    loader = DataLoader(EpochIndexedClips(train_set), batch_sampler=sampler, collate_fn=collate_clips,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    for batch in loader:
        yield batch.to(device, non_blocking=True)
