"""Detectron NMS (+1 widths, ``>=``, tie-break, ascending keep order) and soft-NMS.

Discrete results (kept indices) are compared exactly; soft-NMS scores within 1e-6 absolute (float32).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detconvert.ops import batched_nms, nms, soft_nms
from tests._shared import REFERENCE, requires_shared


def reference_greedy_nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """Detectron's cython_nms.nms written out in NumPy float32 (stable argsort, reversed)."""
    x1, y1, x2, y2, scores = (dets[:, k].astype(np.float32) for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    suppressed = np.zeros(len(dets), dtype=bool)
    t = np.float32(thresh)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        for j in order[pos + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]) + np.float32(1))
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]) + np.float32(1))
            inter = np.float32(w * h)
            if np.float32(inter / (areas[i] + areas[j] - inter)) >= t:
                suppressed[j] = True
    return np.nonzero(~suppressed)[0]


def _run(dets: np.ndarray, thresh: float) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(dets, dtype=np.float32))
    return nms(t[:, :4], t[:, 4], thresh).numpy()


def test_identical_boxes_equal_scores_highest_index_wins():
    dets = np.tile(np.array([[10, 10, 50, 50, 0.9]], dtype=np.float32), (5, 1))
    np.testing.assert_array_equal(_run(dets, 0.5), [4])  # torchvision alone keeps [0] (lessons L1)


def test_overlap_equal_to_threshold_is_suppressed():
    # IoU with +1 widths: inter 10*5 = 50, union 100 -> exactly 0.5, and Detectron suppresses at >=.
    dets = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8]], dtype=np.float32)
    np.testing.assert_array_equal(_run(dets, 0.5), [0])
    np.testing.assert_array_equal(_run(dets, 0.51), [0, 1])


def test_keep_is_in_ascending_index_order():
    dets = np.array([[0, 0, 9, 9, 0.1], [100, 100, 120, 120, 0.9], [50, 50, 60, 60, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(_run(dets, 0.5), [0, 1, 2])


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_matches_reference_greedy_with_many_ties(thresh):
    rng = np.random.default_rng(int(thresh * 10))
    n = 400
    xy = rng.integers(0, 60, size=(n, 2)) * 0.5  # exactly representable coordinates: no rounding noise
    wh = rng.integers(1, 40, size=(n, 2)) * 0.5
    scores = rng.integers(0, 8, size=n) / 8.0  # 8 distinct values: lots of exact ties
    dets = np.hstack([xy, xy + wh, scores[:, None]]).astype(np.float32)
    np.testing.assert_array_equal(_run(dets, thresh), reference_greedy_nms(dets, thresh))


def test_batched_nms_is_per_group_nms():
    rng = np.random.default_rng(3)
    xy = rng.integers(0, 40, size=(200, 2)).astype(np.float32)
    boxes = torch.from_numpy(np.hstack([xy, xy + 15]).astype(np.float32))
    scores = torch.from_numpy((rng.integers(0, 5, size=200) / 5).astype(np.float32))
    groups = torch.from_numpy(rng.integers(1, 6, size=200))
    keep = batched_nms(boxes, scores, groups, 0.5)
    expected = []
    for g in sorted(set(groups.tolist())):
        idx = torch.nonzero(groups == g).flatten()
        expected.append(idx[nms(boxes[idx], scores[idx], 0.5)])
    np.testing.assert_array_equal(keep.numpy(), torch.cat(expected).numpy())


@requires_shared
@pytest.mark.parametrize("thresh", ["0.3", "0.5", "0.7"])
def test_matches_detectron_golden(thresh):
    g = np.load(REFERENCE / "unit" / "boxes.npz")
    np.testing.assert_array_equal(_run(g["dets"], float(thresh)), g[f"nms_keep_{thresh}"])


@requires_shared
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_detectron_golden(method):
    g = np.load(REFERENCE / "unit" / "boxes.npz")
    dets, keep = soft_nms(g["dets"], sigma=0.5, overlap_thresh=0.3, score_thresh=0.001, method=method)
    np.testing.assert_array_equal(keep, g[f"soft_nms_{method}_keep"])
    np.testing.assert_allclose(dets, g[f"soft_nms_{method}_dets"], rtol=0, atol=1e-6)


def test_soft_nms_hard_equals_greedy_set():
    rng = np.random.default_rng(5)
    xy = rng.integers(0, 50, size=(100, 2)).astype(np.float32)
    dets = np.hstack([xy, xy + 20, rng.random((100, 1)).astype(np.float32)])
    _, keep = soft_nms(dets, overlap_thresh=0.45, method="hard")
    # "hard" suppresses at ov > Nt, greedy NMS at >=; 21x21 boxes on integer offsets never overlap by exactly 0.45.
    assert set(keep.tolist()) == set(_run(dets, 0.45).tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_keeps_the_same_boxes_as_cpu():
    rng = np.random.default_rng(7)
    xy = rng.integers(0, 200, size=(3000, 2)).astype(np.float32)
    dets = np.hstack([xy, xy + rng.integers(5, 60, size=(3000, 2)), rng.integers(0, 16, (3000, 1)) / 16])
    t = torch.from_numpy(dets.astype(np.float32))
    cpu = nms(t[:, :4], t[:, 4], 0.7)
    gpu = nms(t[:, :4].cuda(), t[:, 4].cuda(), 0.7).cpu()
    np.testing.assert_array_equal(cpu.numpy(), gpu.numpy())
