"""RoIAlign (Caffe2 legacy rules) vs a float64 reference written from Caffe2's RoIAlign op.

Tolerance: 1e-10 absolute in float64 (the same arithmetic, different summation order).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detconvert.ops import distribute_rois_to_levels, map_rois_to_fpn_levels, multilevel_roi_align, roi_align
from detconvert.ops.roi_align import roi_align_level_blobs


def _bilinear(fmap: np.ndarray, y: float, x: float) -> np.ndarray:
    height, width = fmap.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fmap.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fmap[:, y_low, x_low] + hy * lx * fmap[:, y_low, x_high]
            + ly * hx * fmap[:, y_high, x_low] + ly * lx * fmap[:, y_high, x_high])


def caffe2_roi_align_reference(features, rois, pooled, scale, sampling_ratio):
    """Caffe2 RoIAlign (not aligned): no half-pixel shift, RoI size >= 1, adaptive grid when ratio 0."""
    out = np.zeros((len(rois), features.shape[1], pooled, pooled))
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        fmap = features[int(b)]
        start_w, start_h = x1 * scale, y1 * scale
        roi_w = max(x2 * scale - start_w, 1.0)
        roi_h = max(y2 * scale - start_h, 1.0)
        bin_w, bin_h = roi_w / pooled, roi_h / pooled
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled)
        for ph in range(pooled):
            for pw in range(pooled):
                acc = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += _bilinear(fmap, y, x)
                out[r, :, ph, pw] = acc / (grid_h * grid_w)
    return out


def _rois(rng, n, image_size):
    xy = rng.random((n, 2)) * image_size * 1.1 - image_size * 0.05
    wh = rng.random((n, 2)) * image_size * 0.6
    wh[:3] = [[0.2, 0.3], [0.0, 0.0], [1.5, 0.5]]  # sub-pixel RoIs hit the size >= 1 rule
    batch = rng.integers(0, 2, size=(n, 1))
    return np.hstack([batch, xy, xy + wh])


@pytest.mark.parametrize("sampling_ratio, scale", [(2, 1 / 4), (0, 1 / 16), (0, 1 / 4)])
def test_matches_caffe2_rules_float64(sampling_ratio, scale):
    rng = np.random.default_rng(sampling_ratio)
    features = rng.standard_normal((2, 3, 9, 11))
    rois = _rois(rng, 12, 11 / scale)
    out = roi_align(torch.from_numpy(features), torch.from_numpy(rois), 4, scale, sampling_ratio).numpy()
    np.testing.assert_allclose(out, caffe2_roi_align_reference(features, rois, 4, scale, sampling_ratio),
                               rtol=0, atol=1e-10)


def test_multilevel_pooling_restores_roi_order():
    rng = np.random.default_rng(1)
    features = [torch.from_numpy(rng.standard_normal((1, 2, 64 // 2**k, 64 // 2**k))) for k in range(4)]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    xy = rng.random((40, 2)) * 150
    rois = torch.from_numpy(np.hstack([np.zeros((40, 1)), xy, xy + rng.random((40, 2)) * 250 + 4]))
    levels = map_rois_to_fpn_levels(rois[:, 1:], 2, 5)
    assert len(set(levels.tolist())) > 1
    pooled = multilevel_roi_align(features, rois, levels, 2, 7, scales, 2)
    for r in range(40):
        lvl = int(levels[r]) - 2
        expected = roi_align(features[lvl], rois[r:r + 1], 7, scales[lvl], 2)
        torch.testing.assert_close(pooled[r:r + 1], expected, rtol=0, atol=0)
    per_level, restore = distribute_rois_to_levels(rois, levels, 2, 5)
    torch.testing.assert_close(roi_align_level_blobs(features, per_level, restore, 7, scales, 2), pooled,
                               rtol=0, atol=0)
