"""DataParallel on real CUDA devices gives the same detections as the unwrapped model.

The detector is torchvision's Mask R-CNN with seeded random weights (nothing downloaded) and
``box_score_thresh=0`` so every image yields detections; each device gets a chunk of images of its
own sizes.
"""
from __future__ import annotations

import pytest
import torch

from detconvert.parallel import DataParallel

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _detector(device: torch.device) -> torch.nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0, min_size=320, max_size=512
    )
    return model.to(device).eval()


def _chunks():
    generator = torch.Generator().manual_seed(7)
    sizes = [[(200, 300), (240, 180)], [(320, 256)], [(256, 256), (180, 300), (300, 200)]]
    return [[torch.rand(3, h, w, generator=generator) for h, w in chunk] for chunk in sizes]


def _assert_same_detections(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["boxes"].shape[0] > 0
        assert torch.equal(g["labels"].cpu(), w["labels"].cpu())
        torch.testing.assert_close(g["boxes"].cpu(), w["boxes"].cpu(), rtol=0, atol=1e-3)
        torch.testing.assert_close(g["scores"].cpu(), w["scores"].cpu(), rtol=0, atol=1e-5)
        torch.testing.assert_close(g["masks"].cpu(), w["masks"].cpu(), rtol=0, atol=1e-4)


def _reference(model, chunks, device):
    with torch.no_grad():
        return [model([im.to(device) for im in chunk]) for chunk in chunks]


def test_one_gpu_equals_no_wrapper():
    device = torch.device("cuda", 0)
    model = _detector(device)
    chunks = _chunks()[:1] + [[]]  # one chunk of work, one empty chunk
    want = _reference(model, chunks[:1], device)
    with torch.no_grad():
        got = DataParallel(model, device_ids=[0], batch_outputs=False)(chunks)
    assert got[1] is None
    _assert_same_detections(got[0], want[0])


def test_repeated_device_runs_chunks_sequentially_with_their_own_sizes():
    device = torch.device("cuda", 0)
    model = _detector(device)
    chunks = _chunks()
    want = _reference(model, chunks, device)
    with torch.no_grad():
        got = DataParallel(model, device_ids=[0, 0, 0], batch_outputs=False)(chunks)
    for g, w in zip(got, want):
        _assert_same_detections(g, w)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the replicate/parallel_apply path needs 2 GPUs")
def test_replicas_on_distinct_gpus_equal_no_wrapper():
    count = min(3, torch.cuda.device_count())
    model = _detector(torch.device("cuda", 0))
    chunks = _chunks()[:count]
    want = _reference(model, chunks, torch.device("cuda", 0))
    with torch.no_grad():
        got = DataParallel(model, device_ids=list(range(count)), output_device=-1, batch_outputs=False)(chunks)
    for g, w in zip(got, want):
        _assert_same_detections(g, w)
