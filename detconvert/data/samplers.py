"""Aspect-ratio-grouped batch samplers: landscape and portrait images never share a device chunk.

Detectron groups images by orientation (``roi_data/loader.py::RoIDataLoader._shuffle_roidb_inds``
with ``TRAIN.ASPECT_GROUPING``: ``width >= height`` is the horizontal group, the rest vertical) so
that a padded blob does not pay for the union of a landscape and a portrait image; this saves
10-15 % time and the padding memory (Detectron PR#324).

A batch is a flat list of dataset indices, read as consecutive device chunks of
``ims_per_device`` (as :func:`detconvert.data.batching.collate_minibatch` cuts it): every chunk
has one orientation and only a batch's last chunk may be shorter. Different chunks of one batch
(different devices) may have different orientations.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def is_landscape(aspect_ratio: float) -> bool:
    """``width / height >= 1``: Detectron's horizontal group (``widths >= heights``); squares included."""
    return aspect_ratio >= 1.0


def build_device_chunks(
    aspect_ratios: Sequence[float],
    ims_per_device: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> List[List[int]]:
    """Cut the dataset into single-orientation chunks of ``ims_per_device`` indices.

    Each orientation group is shuffled (``seed``, ``epoch``), cut into chunks, and the full chunks of
    both groups are shuffled together. Each group's short remainder (at most one per group) comes
    last, or is dropped with ``drop_last``. Without ``shuffle`` the order is the index order,
    landscape group first.

    Args:
        aspect_ratios: ``width / height`` of every dataset item, by index.
        ims_per_device: indices per chunk.
        shuffle: shuffle within groups and the order of chunks.
        seed: base seed, identical on all ranks.
        epoch: mixed into the seed so each epoch has its own order.
        drop_last: drop the short remainders.
    """
    if ims_per_device < 1:
        raise ValueError(f"ims_per_device must be >= 1, got {ims_per_device}")
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
        raise ValueError("aspect ratios (width / height) must be finite and positive")
    rng = np.random.default_rng([seed, epoch])
    landscape = ratios >= 1.0  # is_landscape, vectorised
    full: List[List[int]] = []
    partial: List[List[int]] = []
    for group in (np.flatnonzero(landscape), np.flatnonzero(~landscape)):
        if shuffle:
            group = rng.permutation(group)
        for start in range(0, len(group), ims_per_device):
            chunk = [int(i) for i in group[start : start + ims_per_device]]
            (full if len(chunk) == ims_per_device else partial).append(chunk)
    if shuffle:
        full = [full[i] for i in rng.permutation(len(full))]
    return full if drop_last else full + partial


class _AspectGroupedChunks(Sampler[List[int]]):
    """What both aspect-grouped samplers share: their settings, the epoch, and this epoch's device chunks."""

    def __init__(self, aspect_ratios: Sequence[float], ims_per_device: int, shuffle: bool, seed: int, drop_last: bool):
        self.aspect_ratios = list(aspect_ratios)
        self.ims_per_device = ims_per_device
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration (in distributed runs, call it on every rank)."""
        self.epoch = epoch

    def _epoch_chunks(self) -> List[List[int]]:
        return build_device_chunks(
            self.aspect_ratios, self.ims_per_device, self.shuffle, self.seed, self.epoch, self.drop_last
        )


class AspectRatioGroupedBatchSampler(_AspectGroupedChunks):
    """Batches for one process driving ``num_devices`` devices (``DataParallel``, or one device).

    Each batch holds up to ``num_devices`` single-orientation chunks of ``ims_per_device`` indices.
    Without ``drop_last`` every index appears exactly once per epoch; the last batches may hold
    fewer chunks than devices, or one short chunk — ``DataParallel`` handles both. Call
    :meth:`set_epoch` to reshuffle.

    Args:
        aspect_ratios: ``width / height`` per dataset index.
        ims_per_device: images per device chunk (``TRAIN.IMS_PER_BATCH``).
        num_devices: chunks per batch.
        shuffle: shuffle (training) or keep index order (inference).
        seed: shuffling seed.
        drop_last: drop short chunks and batches with fewer than ``num_devices`` chunks.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        ims_per_device: int,
        num_devices: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {num_devices}")
        super().__init__(aspect_ratios, ims_per_device, shuffle, seed, drop_last)
        self.num_devices = num_devices

    def _batches(self) -> List[List[int]]:
        chunks = self._epoch_chunks()
        batches: List[List[int]] = []
        current: List[List[int]] = []
        for chunk in chunks:
            current.append(chunk)
            # A short chunk must end its batch, or the next chunk's boundary would be lost.
            if len(current) == self.num_devices or len(chunk) < self.ims_per_device:
                batches.append([i for c in current for i in c])
                current = []
        if current:
            batches.append([i for c in current for i in c])
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.num_devices * self.ims_per_device]
        return batches

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class DistributedAspectRatioGroupedBatchSampler(_AspectGroupedChunks):
    """One single-orientation chunk per batch for each rank of a distributed job (one device per process).

    All ranks build the same chunk list (same ``seed`` and epoch) and rank ``r`` takes chunks
    ``r, r + R, r + 2R, ...``. Every rank gets the same number of batches, as DDP's collectives
    need: without ``drop_last`` the chunk list is padded by repeating chunks from its start (as
    ``torch.utils.data.DistributedSampler`` repeats indices), with ``drop_last`` it is truncated.

    Args:
        aspect_ratios: ``width / height`` per dataset index.
        ims_per_device: images per chunk (per process).
        num_replicas: world size (default: the initialized process group's).
        rank: this process's rank (default: the process group's).
        shuffle, seed, drop_last: as for :class:`AspectRatioGroupedBatchSampler`.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        ims_per_device: int,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("pass num_replicas and rank, or initialize the process group first")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        super().__init__(aspect_ratios, ims_per_device, shuffle, seed, drop_last)
        self.num_replicas = num_replicas
        self.rank = rank

    def _all_chunks(self) -> List[List[int]]:
        chunks = self._epoch_chunks()
        if self.drop_last:
            return chunks[: len(chunks) - len(chunks) % self.num_replicas]
        if not chunks:
            return chunks
        missing = -len(chunks) % self.num_replicas
        return chunks + [chunks[i % len(chunks)] for i in range(missing)]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self._all_chunks()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(self._all_chunks()) // self.num_replicas
