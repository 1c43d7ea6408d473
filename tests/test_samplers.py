"""Aspect-ratio-grouped batch samplers: property tests over random aspect ratios (seeded loop)."""
from __future__ import annotations

import numpy as np
import pytest

from detconvert.data.samplers import (
    AspectRatioGroupedBatchSampler,
    DistributedAspectRatioGroupedBatchSampler,
    build_device_chunks,
    is_landscape,
)


def _random_ratios(rng: np.random.Generator, n: int) -> list:
    ratios = np.exp(rng.uniform(-1.2, 1.2, size=n))
    ratios[rng.random(n) < 0.1] = 1.0  # squares belong to the landscape group
    return ratios.tolist()


def _device_chunks(batch, ims_per_device):
    return [batch[i : i + ims_per_device] for i in range(0, len(batch), ims_per_device)]


def test_is_landscape_follows_detectrons_width_ge_height():
    assert is_landscape(1.0) and is_landscape(1.5) and not is_landscape(0.99)


def test_batch_sampler_properties_over_random_aspect_ratios():
    rng = np.random.default_rng(2018)
    for trial in range(200):
        n = int(rng.integers(0, 60))
        ratios = _random_ratios(rng, n)
        ims, devices = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        drop_last, shuffle = bool(rng.integers(2)), bool(rng.integers(2))
        sampler = AspectRatioGroupedBatchSampler(
            ratios, ims, devices, shuffle=shuffle, seed=trial, drop_last=drop_last
        )
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)), "an index appears twice in an epoch"
        if drop_last:
            assert all(len(b) == ims * devices for b in batches)
            # At most one short chunk per orientation plus one short batch of chunks are dropped.
            assert n - len(flat) <= 2 * (ims - 1) + (devices - 1) * ims
        else:
            assert sorted(flat) == list(range(n))
        for batch in batches:
            chunks = _device_chunks(batch, ims)
            assert 1 <= len(chunks) <= devices
            assert all(len(c) == ims for c in chunks[:-1]), "only the last chunk of a batch may be short"
            for chunk in chunks:
                orientations = {is_landscape(ratios[i]) for i in chunk}
                assert len(orientations) == 1, f"trial {trial}: chunk {chunk} mixes landscape and portrait"
        # Deterministic for a seed and epoch; set_epoch changes the order (with enough items).
        assert list(sampler) == batches
        if shuffle and n >= 20:
            sampler.set_epoch(1)
            assert list(sampler) != batches


def test_distributed_sampler_properties_over_random_aspect_ratios():
    rng = np.random.default_rng(7)
    for trial in range(150):
        n = int(rng.integers(1, 50))
        ratios = _random_ratios(rng, n)
        ims, world = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        drop_last = bool(rng.integers(2))
        samplers = [
            DistributedAspectRatioGroupedBatchSampler(ratios, ims, world, rank, seed=trial, drop_last=drop_last)
            for rank in range(world)
        ]
        per_rank = [list(s) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1, "ranks must run the same number of steps"
        assert all(len(b) == len(s) for b, s in zip(per_rank, samplers))
        covered = {i for batches in per_rank for b in batches for i in b}
        if not drop_last:
            assert covered == set(range(n))
        for batches in per_rank:
            for batch in batches:
                assert 1 <= len(batch) <= ims
                assert len({is_landscape(ratios[i]) for i in batch}) == 1
        if drop_last:
            flat = [i for batches in per_rank for b in batches for i in b]
            assert len(flat) == len(set(flat))


def test_unshuffled_chunks_keep_index_order_landscape_first():
    ratios = [0.5, 2.0, 1.0, 0.7, 1.3]
    assert build_device_chunks(ratios, 2, shuffle=False) == [[1, 2], [0, 3], [4]]
    assert build_device_chunks(ratios, 2, shuffle=False, drop_last=True) == [[1, 2], [0, 3]]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        build_device_chunks([1.0, -1.0], 1)
    with pytest.raises(ValueError):
        AspectRatioGroupedBatchSampler([1.0], 1, num_devices=0)
    with pytest.raises(ValueError):
        DistributedAspectRatioGroupedBatchSampler([1.0], 1, num_replicas=2, rank=2)
