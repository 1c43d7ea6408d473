"""Per-device padding to the coarsest stride and per-device collation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detconvert.data.batching import collate_minibatch, pad_images, padded_size, split_into_chunks
from tests._shared import REFERENCE, requires_shared


def test_padded_size_rounds_up_only_with_a_stride():
    assert padded_size(800, 1200, 32) == (800, 1216)
    assert padded_size(800, 1200, 128) == (896, 1280)
    assert padded_size(800, 1200, 0) == (800, 1200)
    assert padded_size(801, 1, 32) == (832, 32)


def test_pad_images_places_each_image_top_left_with_zero_padding():
    a = torch.rand(3, 50, 70) + 1.0
    b = torch.rand(3, 64, 40) + 1.0
    blob = pad_images([a, b], stride=32)
    assert blob.shape == (2, 3, 64, 96)
    assert torch.equal(blob[0, :, :50, :70], a) and torch.equal(blob[1, :, :64, :40], b)
    assert blob[0, :, 50:].abs().sum() == 0 and blob[0, :, :, 70:].abs().sum() == 0
    assert blob[1, :, :, 40:].abs().sum() == 0
    assert pad_images([a, b]).shape == (2, 3, 64, 70)
    with pytest.raises(ValueError, match="same C"):
        pad_images([a, torch.rand(1, 4, 4)])


@requires_shared
def test_pad_images_reproduces_detectrons_fpn_blob():
    """The unpadded C4 blob padded to stride 32 is Detectron's FPN blob (im_list_to_blob)."""
    fpn = np.load(REFERENCE / "unit" / "image_blob_800_1333_fpn.npz")["data"]
    c4 = np.load(REFERENCE / "unit" / "image_blob_800_1333_nofpn.npz")["data"]
    blob = pad_images([torch.from_numpy(c4[0])], stride=32)
    assert blob.shape == fpn.shape == (1, 3, 800, 1216)
    assert np.array_equal(blob.numpy(), fpn)
    assert pad_images([torch.from_numpy(c4[0])], stride=128).shape == (1, 3, 896, 1280)


def test_split_into_chunks():
    assert split_into_chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert split_into_chunks([], 2) == []
    with pytest.raises(ValueError):
        split_into_chunks([1], 0)


def test_collate_minibatch_pads_each_device_chunk_to_its_own_size():
    sizes = [(40, 60), (50, 70), (90, 30), (60, 40), (20, 20)]
    samples = [
        {"data": torch.ones(3, h, w), "im_info": torch.tensor([h, w, 1.0]), "roidb": {"id": i}}
        for i, (h, w) in enumerate(sizes)
    ]
    batch = collate_minibatch(samples, ims_per_device=2, stride=32)
    assert [tuple(b.shape) for b in batch["data"]] == [(2, 3, 64, 96), (2, 3, 96, 64), (1, 3, 32, 32)]
    assert [tuple(t.shape) for t in batch["im_info"]] == [(2, 3), (2, 3), (1, 3)]
    assert batch["roidb"] == [[{"id": 0}, {"id": 1}], [{"id": 2}, {"id": 3}], [{"id": 4}]]
    # Each image's content survives, in place.
    assert batch["data"][1][0, :, :90, :30].min() == 1 and batch["data"][1][0, :, :, 30:].max() == 0
    with pytest.raises(ValueError, match="different keys"):
        collate_minibatch([samples[0], {"data": torch.ones(3, 4, 4)}], ims_per_device=2)
