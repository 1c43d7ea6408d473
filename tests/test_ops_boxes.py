"""Anchors, box coding, clipping, overlaps and FPN level mapping vs Detectron's unit goldens.

Tolerances: anchors, areas, expand_boxes, levels and restore indices are exact (Detectron computes them
with exact or float64 arithmetic we reproduce); float32 box decoding within 1e-6 x max|golden|
(float32 ``exp`` rounding); overlaps and inverse transforms within 1e-6 absolute.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detconvert.ops import (
    BBOX_XFORM_CLIP,
    bbox_overlaps,
    bbox_transform,
    bbox_transform_inv,
    boxes_area,
    clip_tiled_boxes,
    distribute_rois_to_levels,
    expand_boxes,
    fpn_rpn_cell_anchors,
    generate_anchors,
    grid_anchors,
    map_rois_to_fpn_levels,
    retinanet_cell_anchors,
)
from tests._shared import REFERENCE, requires_shared


def _unit(name):
    return np.load(REFERENCE / "unit" / f"{name}.npz")


def test_fpn_anchors_quantized_ratio_major():
    # lessons.md L2: P2 ratio 0.5 is 48x24 (quantized), not 45x23; ratio-major order.
    np.testing.assert_array_equal(
        fpn_rpn_cell_anchors(2), [[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]]
    )
    c4 = generate_anchors(16, (32, 64, 128, 256, 512), (0.5, 1, 2))
    widths = c4[:, 2] - c4[:, 0] + 1
    heights = c4[:, 3] - c4[:, 1] + 1
    assert np.all(heights[:5] < widths[:5]) and np.all(heights[10:] > widths[10:])  # ratio-major


@requires_shared
def test_anchors_match_detectron():
    g = _unit("anchors")
    np.testing.assert_array_equal(generate_anchors(), g["default_generate_anchors"])
    np.testing.assert_array_equal(generate_anchors(16, (32, 64, 128, 256, 512), (0.5, 1, 2)), g["c4_rpn"])
    for lvl in range(2, 7):
        np.testing.assert_array_equal(fpn_rpn_cell_anchors(lvl), g[f"fpn_rpn_P{lvl}"])
    for lvl in range(3, 8):
        np.testing.assert_array_equal(
            retinanet_cell_anchors(lvl, scales_per_octave=3, aspect_ratios=(1.0, 2.0, 0.5), anchor_scale=4.0),
            g[f"retinanet_P{lvl}"],
        )


def test_grid_anchors_layout_is_h_w_a():
    cell = fpn_rpn_cell_anchors(3)
    grid = grid_anchors(cell, 5, 7, 8).numpy()
    assert grid.shape == (5 * 7 * 3, 4) and grid.dtype == np.float32
    h, w, a = 3, 6, 2
    np.testing.assert_array_equal(grid[(h * 7 + w) * 3 + a], cell[a] + [w * 8, h * 8, w * 8, h * 8])


@requires_shared
def test_box_functions_match_detectron():
    g = _unit("boxes")
    boxes, deltas, gt = (torch.from_numpy(g[k]) for k in ("boxes", "deltas", "gt_boxes"))
    assert float(g["bbox_xform_clip"]) == BBOX_XFORM_CLIP
    for weights, key in (((1, 1, 1, 1), "w1111"), ((10, 10, 5, 5), "w10_10_5_5")):
        ref = g[f"bbox_transform_{key}"]
        out = bbox_transform(boxes, deltas, weights).numpy()
        assert out.dtype == np.float32
        assert np.abs(out - ref).max() <= 1e-6 * np.abs(ref).max()
        np.testing.assert_allclose(bbox_transform_inv(boxes, gt, weights).numpy(), g[f"bbox_transform_inv_{key}"],
                                   rtol=0, atol=1e-6 * np.abs(g[f"bbox_transform_inv_{key}"]).max())
    np.testing.assert_array_equal(boxes_area(boxes).numpy(), g["boxes_area"])
    np.testing.assert_array_equal(expand_boxes(g["boxes"], 30 / 28), g["expand_boxes_30_28"])
    np.testing.assert_allclose(bbox_overlaps(boxes, gt).numpy(), g["bbox_overlaps"], rtol=0, atol=1e-6)
    clipped = g["clip_tiled_boxes_400x600"]  # its input is not stored: check the invariants it satisfies
    assert clipped.min() >= 0 and clipped[:, 0::2].max() <= 599 and clipped[:, 1::2].max() <= 399


def test_bbox_transform_clips_dw_dh_above_only():
    boxes = torch.tensor([[0.0, 0.0, 15.0, 15.0]])
    deltas = torch.tensor([[0.0, 0.0, 100.0, -100.0]])
    out = bbox_transform(boxes, deltas)[0]
    width = out[2] - out[0] + 1
    assert torch.isclose(width, torch.tensor(1000.0), rtol=1e-5)  # 16 * exp(log(1000/16))
    assert out[3] - out[1] + 1 < 1e-3  # no lower clip


def test_clip_tiled_boxes_formula():
    rng = np.random.default_rng(0)
    b = (rng.random((50, 8)) * 1600 - 400).astype(np.float32)
    ref = b.copy()
    ref[:, 0::2] = np.maximum(np.minimum(ref[:, 0::2], 599), 0)
    ref[:, 1::2] = np.maximum(np.minimum(ref[:, 1::2], 399), 0)
    np.testing.assert_array_equal(clip_tiled_boxes(torch.from_numpy(b), 400, 600).numpy(), ref)


def test_bbox_overlaps_plus_one_and_disjoint():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[0.0, 0.0, 9.0, 4.0], [10.0, 0.0, 19.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    np.testing.assert_allclose(bbox_overlaps(a, b).numpy(), [[0.5, 0.0, 0.01]], rtol=1e-7)


@requires_shared
def test_fpn_level_mapping_matches_detectron():
    g = _unit("fpn_levels")
    rois = torch.from_numpy(g["rois"])
    levels = map_rois_to_fpn_levels(rois[:, 1:5], 2, 5)
    np.testing.assert_array_equal(levels.numpy(), g["target_lvls"].astype(np.int64))
    per_level, restore = distribute_rois_to_levels(rois, levels, 2, 5)
    for lvl, r in zip(range(2, 6), per_level):
        np.testing.assert_array_equal(r.numpy(), g[f"rois_fpn{lvl}"])
    np.testing.assert_array_equal(restore.numpy(), g["rois_idx_restore_int32"])
    np.testing.assert_array_equal(torch.cat(per_level)[restore].numpy(), g["rois"])


def test_fpn_level_uses_plus_one_area():
    # sqrt((223+1)^2) = 224 -> exactly the canonical level 4; without +1 it would be level 3.
    boxes = torch.tensor([[0.0, 0.0, 223.0, 223.0], [0.0, 0.0, 111.0, 111.0], [0.0, 0.0, 5000.0, 5000.0]])
    assert map_rois_to_fpn_levels(boxes, 2, 5).tolist() == [4, 3, 5]
